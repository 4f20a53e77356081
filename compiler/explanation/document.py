"""Derivations -> a document: LaTeX, Markdown or HTML (MathML), and Jupyter display.

Every formula shown is printed from the same sympy expressions the code is
lowered from (derive.Derivation), and each step carries the anchor that the
matching comment in the generated module names, with that module's line.
"""
from __future__ import annotations

import dataclasses
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import sympy as sp
from sympy.concrete.expr_with_limits import ExprWithLimits
from sympy.printing.latex import LatexPrinter

from ..version import __version__
from ..api import Compiled, compile_source
from ..autodiff.derive import B, batch_index
from ..naming import backward_anchor, forward_anchor, grad_name
from ..ops.primitives import lookup
from ..ops.symbolic import Where, real_base
from ..schedule.program import SEED
from ..templating import environment


# ---- formulas ------------------------------------------------------------------------

# how a tensor's name is set: \mathrm{dense\_2} for LaTeX and Markdown; for MathML,
# \text{dense_2}, which latex2mathml keeps as one token (it splits \mathrm{...} into one
# <mi> per letter, and an accent or a subscript then sits on the last letter)
_TEXT_NAMES: ContextVar[bool] = ContextVar("text_names", default=False)


def _name_tex(name: str) -> str:
    if _TEXT_NAMES.get():
        return r"\text{%s}" % name
    return r"\mathrm{%s}" % name.replace("_", r"\_")


def _grad_tex(name: str, subs: str = "") -> str:
    """dL/dX as a fraction: a gradient never looks like the forward value it belongs to."""
    x = _name_tex(name) + ("_{%s}" % subs if subs else "")
    return r"\frac{\partial L}{\partial %s}" % x


class FormulaLatex(LatexPrinter):
    """LaTeX of index formulas: tensors by their names, gradients as dL/dX."""

    def __init__(self, grads: dict):
        super().__init__({"mul_symbol": "dot", "fold_short_frac": False})
        self.grads = grads  # gradient base label -> tensor or parameter name
        # each subformula printed once: a formula is printed whole and then again piece by
        # piece when it is broken into rows, which on nested where()s went as the square
        self._printed: dict = {}

    def _print(self, e, **kwargs):
        if kwargs:
            return super()._print(e, **kwargs)
        if e not in self._printed:
            primitive = lookup(e)
            self._printed[e] = primitive.latex.format(*[self._print(a) for a in e.args]) \
                if primitive is not None and primitive.latex else super()._print(e)
        return self._printed[e]

    def _print_Indexed(self, e):
        label = e.base.label.name
        subs = ",".join(self._print(i) for i in e.indices)
        if label in self.grads:
            return _grad_tex(self.grads[label], subs)
        return r"%s_{%s}" % (_name_tex(label), subs)

    def _print_Mul(self, expr):
        # the gradient read first, then the local factor: dL/dy * (...), never a fraction
        # inside a fraction's numerator
        grads = [a for a in expr.args if isinstance(a, sp.Indexed) and a.base.label.name in self.grads]
        if len(grads) != 1 or len(expr.args) < 2:
            return super()._print_Mul(expr)
        rest = sp.Mul(*[a for a in expr.args if a is not grads[0]])
        sign = ""
        if rest.could_extract_minus_sign():
            sign, rest = "- ", -rest
        if rest == 1:
            return sign + self._print(grads[0])
        body = self._print(rest)
        if isinstance(rest, sp.Add):
            body = r"\left(%s\right)" % body
        return r"%s%s \cdot %s" % (sign, self._print(grads[0]), body)

    def _print_Symbol(self, s, style="plain"):
        if s == B:
            return "B"
        bare = s.name.rstrip("'")
        if bare != s.name:  # an index primed to keep it apart from another: i' , p_{1}'
            return self._print_Symbol(sp.Symbol(bare)) + s.name[len(bare):]
        return super()._print_Symbol(s)

    def _print_Dummy(self, s):
        return s.name

    def _print_FirstArgmax(self, e):
        idx = ",".join(self._print(lim[0]) for lim in e.limits)
        return r"\mathbf{1}\left[(%s) = \operatorname{first\,argmax}_{%s} %s\right]" % (
            idx, idx, self._print(e.function))

    def _print_MaxOver(self, e):
        idx = ",".join(self._print(lim[0]) for lim in e.limits)
        return r"\max_{%s} %s" % (idx, self._print(e.function))


# ---- matrix forms of the Program's statements ------------------------------------------

class _MatrixForm:
    """An index formula as vector/matrix algebra over its statement's layout (the target's
    indices), or None: reads in the layout's order are the arrays themselves (a missing
    axis broadcasts), a 2-D read in the reverse order is a transpose, a sum over one index
    of two groups of factors is a matrix product, a sum over the batch index is a sum over
    the batch, and everything else elementwise (⊙)."""

    FUNCTIONS = {"exp": r"\exp", "log": r"\log", "tanh": r"\tanh", "Sigmoid": r"\sigma"}

    def __init__(self, tex: FormulaLatex):
        self.tex = tex

    def render(self, e, layout) -> str | None:
        try:
            return self._form(e, tuple(layout))
        except _NoForm:
            return None

    def _form(self, e, layout):
        if isinstance(e, sp.Indexed):
            return self._read(e, layout)
        if e == B:
            return "B"
        if e.is_Number:
            return sp.latex(e)
        if isinstance(e, sp.Add):
            out = []
            for k, t in enumerate(self.tex._as_ordered_terms(e)):
                if k and t.could_extract_minus_sign():
                    out.append(f"- {self._wrap(-t, layout)}")
                else:
                    out.append(("+ " if k else "") + self._form(t, layout))
            return " ".join(out)
        if isinstance(e, sp.Mul):
            coeff, rest = e.as_coeff_Mul()
            num, den = sp.fraction(rest)
            factors = [f for f in sp.Mul.make_args(num) if f != 1]
            body = r" \odot ".join(self._wrap(f, layout) for f in factors) if factors else "1"
            if den != 1:
                body = r"\frac{%s}{%s}" % (body, self._form(den, layout))
            if coeff == -1:
                return "-" + body
            return body if coeff == 1 else f"{sp.latex(coeff)} {body}"
        if isinstance(e, sp.Pow) and e.exp.is_Integer and e.exp > 0:
            return "%s^{%s}" % (self._wrap(e.base, layout, atoms_only=True), e.exp)
        if isinstance(e, sp.Function) and type(e).__name__ in self.FUNCTIONS and len(e.args) == 1:
            return r"%s\left(%s\right)" % (self.FUNCTIONS[type(e).__name__], self._form(e.args[0], layout))
        if isinstance(e, sp.Sum) and len(e.limits) == 1:
            return self._sum(e, layout)
        raise _NoForm

    def _wrap(self, e, layout, atoms_only=False):
        s = self._form(e, layout)
        if isinstance(e, sp.Add) or (atoms_only and not isinstance(e, sp.Indexed)):
            return r"\left(%s\right)" % s
        return s

    def _read(self, r, layout):
        labels = tuple(r.indices)
        if not all(isinstance(x, sp.Symbol) for x in labels) or len(set(labels)) != len(labels):
            raise _NoForm
        name = self.name(r.base.label.name)
        where = [layout.index(x) if x in layout else -1 for x in labels]
        if -1 in where:
            raise _NoForm
        if where == sorted(where):
            return name
        if len(labels) == 2 and where == [1, 0] and len(layout) == 2:
            return r"%s^{\top}" % (name if "\\frac" not in name else r"\left(%s\right)" % name)
        raise _NoForm

    def name(self, label: str) -> str:
        """A whole array: a tensor by its name, a gradient as dL/dX."""
        return _grad_tex(self.tex.grads[label]) if label in self.tex.grads else _name_tex(label)

    def _sum(self, e, layout):
        (k, lo, hi), body = e.limits[0], e.function
        if lo != 0:
            raise _NoForm
        if len(layout) == 2:
            try:
                return self._product(k, body, layout)
            except _NoForm:
                pass
        if hi + 1 == B and not isinstance(body, sp.Add):  # over the batch
            return r"\sum_{\text{batch}} %s" % self._wrap(body, (k,) + layout)
        raise _NoForm

    def _product(self, k, body, layout):
        """Σ_k A[p, k] C[k, q] (each a group of factors) as the matrix product A C."""
        p, q = layout
        coeff, rest = body.as_coeff_Mul()
        groups = {}
        for f in sp.Mul.make_args(rest):
            labels = frozenset(x for x in f.free_symbols if x in (p, q, k))
            groups.setdefault(labels, []).append(f)
        left, right = groups.pop(frozenset({p, k}), None), groups.pop(frozenset({k, q}), None)
        if groups or left is None or right is None:
            raise _NoForm
        product = r"%s \, %s" % (self._group(left, (p, k)), self._group(right, (k, q)))
        return product if coeff == 1 else f"{sp.latex(coeff)} {product}"

    def _group(self, factors, layout):
        s = self._form(sp.Mul(*factors), layout)
        return s if len(factors) == 1 and isinstance(factors[0], sp.Indexed) else r"\left(%s\right)" % s


class _NoForm(Exception):
    pass


# ---- the document model ----------------------------------------------------------------

@dataclass
class Formula:
    caption: str
    tex: str  # one line of LaTeX
    broken: str = ""  # the same formula over several rows, for a printed page too narrow for `tex`
    kind: str = ""  # "composed": what a generated line evaluates; "identity": equal to it, not evaluated
    lhs: sp.Expr = None  # the sympy expressions printed, where kept (composed and identity formulas)
    rhs: sp.Expr = None


@dataclass
class Step:
    anchor: str
    title: str
    formulas: list  # Formula
    code: str = ""  # the generated line that computes it
    tag: str = ""  # BP1..BP4 where the step is one of Nielsen's equations
    fused_into: str = ""  # the anchor of the step whose line also computes this one
    fused_title: str = ""  # ... and that step's title
    temporaries: list = field(default_factory=list)  # the earlier lines defining the t0, t1, ... code reads


@dataclass
class Section:
    title: str
    anchor: str
    text: list  # ("text" | "math", content) pieces of the introduction
    steps: list = field(default_factory=list)
    rows: list = field(default_factory=list)  # Row: a summary line pointing at a step


@dataclass
class Row:
    tag: str
    title: str
    anchor: str  # of the step it sums up
    formula: Formula


@dataclass
class Explanation:
    """The derivation of one network; renders as LaTeX, Markdown or HTML (and in Jupyter)."""

    name: str
    source: str
    intro: str
    sections: list
    compiled: Compiled = field(default=None, repr=False, compare=False)  # to print again for HTML

    def latex(self) -> str:
        return _render("explain.tex.j2", self, tex_escape=_tex_escape, wrap_code=_wrap_code)

    def markdown(self) -> str:
        return _render("explain.md.j2", self)

    def html(self) -> str:
        from latex2mathml.converter import convert
        token = _TEXT_NAMES.set(True)
        try:  # the formulas printed again, with names set for MathML
            doc = build(self.compiled) if self.compiled is not None else self
        finally:
            _TEXT_NAMES.reset(token)
        return _render("explain.html.j2", doc, mathml=lambda tex: convert(tex, display="block"),
                       inline_mathml=convert)

    def render(self, fmt: str) -> str:
        return {"tex": self.latex, "md": self.markdown, "html": self.html}[fmt]()

    def _repr_latex_(self):
        return "\n".join(f"$${f.tex}$$" for s in self.sections for st in s.steps for f in st.formulas)

    def _repr_markdown_(self):
        return self.markdown()

    def _repr_html_(self):
        return self.html()


def _render(template: str, doc: Explanation, **filters) -> str:
    env = environment()
    import html
    return env.get_template(template).render(doc=doc, version=__version__, escape=html.escape, **filters)


def _tex_escape(text: str) -> str:
    out = []
    for ch in text:
        out.append({"_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
                    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                    "/": r"/\allowbreak{}"}.get(ch, ch))  # a long path may break after a slash
    return "".join(out)


def _wrap_code(code: str, width: int = 88, indent: int = 8) -> str:
    """A generated line broken inside its brackets to fit `width` columns (still valid Python),
    for the printed page; a piece with no break point stays long."""
    cuts, depth, quote = [], 0, ""
    for k, ch in enumerate(code):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth > 0 and ch == ",":
            cuts.append(k + 1)
        elif depth > 0 and code.startswith((" + ", " - "), k):
            cuts.append(k)
    rows, start, room = [], 0, width
    while len(code) - start > room:
        fits = [c for c in cuts if start < c <= start + room]
        later = [c for c in cuts if c > start]
        if not fits and not later:
            break
        cut = fits[-1] if fits else later[0]
        rows.append(code[start:cut].rstrip())
        start, room = cut, width - indent
        while start < len(code) and code[start] == " ":
            start += 1
    rows.append(code[start:])
    return ("\n" + " " * indent).join(rows)


def _equation(caption: str, lhs_tex: str, rhs, printer, kind: str = "", lhs=None, tail: str = "") -> Formula:
    """lhs = rhs on one line, and over several rows for a page too narrow for that line."""
    one = printer.doprint(rhs)
    tex = f"{lhs_tex} = {one}{tail}"
    rows = _Rows(printer).rows(rhs)
    broken = ""
    if len(rows) > 1:
        broken = (r"\begin{aligned} %s ={}& %s \\ & \quad " % (lhs_tex, rows[0])
                  + r" \\ & \quad ".join(rows[1:]) + tail + r" \end{aligned}")
    elif rows[0] != one:  # one row with line breaks inside it (a where's branches)
        broken = f"{lhs_tex} = {rows[0]}{tail}"
    return Formula(caption, tex, broken, kind, lhs, rhs)


@dataclass(frozen=True)
class _Row:
    tex: str
    width: float  # about how many glyphs wide it prints
    aligned: bool = False  # holds an aligned block (a where's broken branch): merged with nothing


class _Rows:
    """A formula as rows of at most about `width` glyphs, split between its terms, its factors,
    inside a sum's body and inside a where's branches; a piece with no such split stays whole.
    Widths are estimated from the expressions (subscripts count half), not from the LaTeX."""

    def __init__(self, printer, width: int = 56):
        self.p, self.width = printer, width
        self._widths: dict = {}

    def rows(self, e) -> list:
        return [r.tex for r in self._rows(e)]

    def _rows(self, e) -> list:
        whole = _Row(self.p._print(e), self._width(e))
        if whole.width <= self.width:
            return [whole]
        rows = self._split(e)
        return self._merge(rows) if rows else [whole]

    def _width(self, e) -> float:
        if e not in self._widths:
            self._widths[e] = self._measure(e)
        return self._widths[e]

    def _measure(self, e) -> float:
        """Glyphs as printed: a subscript or an exponent counts half, δ_{ij} and e^{x} as their
        letter and half their script, a fraction as its wider part."""
        w = self._width
        if isinstance(e, sp.Indexed):
            label = e.base.label.name
            name = len(self.p.grads[label]) + 4 if label in self.p.grads else len(label)  # dL/dX
            return name + (sum(w(i) for i in e.indices) + len(e.indices) - 1) / 2
        if isinstance(e, sp.Rational) and not e.is_Integer:
            return max(len(str(abs(e.p))), len(str(e.q))) + 1 + int(bool(e.is_negative))
        if e.is_Atom:
            return len(str(e))
        if isinstance(e, sp.Add):
            return sum(w(a) for a in e.args) + len(e.args) - 1
        if isinstance(e, sp.Mul):
            num, den = sp.fraction(e)
            if den != 1:
                return max(w(num), w(den)) + 1
            return sum(w(a) for a in e.args)
        if isinstance(e, sp.Pow):
            return w(e.base) + w(e.exp) / 2 + (2 if isinstance(e.base, (sp.Add, sp.Mul, sp.Pow)) else 0)
        if isinstance(e, sp.KroneckerDelta):
            return 1 + sum(w(a) for a in e.args) / 2
        if isinstance(e, sp.exp):
            return 1 + w(e.args[0]) / 2
        if isinstance(e, ExprWithLimits):  # the limits stacked below the sign
            return 2 + w(e.function) + max(len(str(lim[0])) for lim in e.limits) / 2
        if isinstance(e, Where):
            c, a, b = e.args
            return 10 + max(w(a) + w(c), w(b))
        if isinstance(e, sp.core.relational.Relational):
            return w(e.lhs) + w(e.rhs) + 1
        name = {"Sigmoid": 1, "Abs": 0, "sign": 3}.get(type(e).__name__, len(type(e).__name__))
        return name + 2 + sum(w(a) for a in e.args) + len(e.args) - 1

    def _merge(self, rows):
        out = [rows[0]]
        for r in rows[1:]:
            last = out[-1]
            if not (last.aligned or r.aligned) and last.width + r.width <= self.width:
                out[-1] = _Row(f"{last.tex} {r.tex}", last.width + r.width)
            else:
                out.append(r)
        return out

    def _bracketed(self, e, brackets: bool):
        rows = self._rows(e)
        if not brackets:
            return rows
        if len(rows) == 1:
            return [_Row(r"\left(%s\right)" % rows[0].tex, rows[0].width + 2, rows[0].aligned)]
        return [_prefixed(r"\Bigl(", 1, rows[0])] + rows[1:-1] + [_suffixed(rows[-1], r"\Bigr)", 1)]

    def _split(self, e):
        p = self.p
        if isinstance(e, sp.Add):
            out = []
            for k, term in enumerate(p._as_ordered_terms(e)):
                sign = ""
                if k > 0:
                    sign = "- " if term.could_extract_minus_sign() else "+ "
                    term = -term if sign == "- " else term
                rows = self._bracketed(term, p._needs_add_brackets(term))
                out += [_prefixed(sign, len(sign) / 2, rows[0])] + rows[1:]
            return out
        if isinstance(e, sp.Mul):
            sign = ""
            if e.could_extract_minus_sign():
                sign, e = "- ", -e
            num, den = sp.fraction(e)
            factors = sorted(sp.Mul.make_args(num), key=lambda f: not (
                isinstance(f, sp.Indexed) and f.base.label.name in p.grads))  # the gradient first
            pieces = ([[_Row(r"\frac{1}{%s}" % p._print(den), self._width(den))]] if den != 1 else []) + [
                self._bracketed(f, isinstance(f, sp.Add)) for f in factors if f != 1]
            if len(pieces) < 2:
                rows = self._split(factors[0]) if sign and len(factors) == 1 and den == 1 else None
                return [_prefixed(sign, 1, rows[0])] + rows[1:] if rows else None
            out = []
            for k, rows in enumerate(pieces):
                out += [_prefixed("" if k == 0 else r"\cdot ", 0 if k == 0 else 1, rows[0])] + rows[1:]
            out[0] = _prefixed(sign, len(sign) / 2, out[0])
            return out
        if isinstance(e, sp.Sum):
            body = self._rows(e.function)
            if len(body) < 2:
                return None
            head = "".join(r"\sum_{%s=%s}^{%s} " % (p._print(v), p._print(lo), p._print(hi)) for v, lo, hi in e.limits)
            return [_prefixed(head + r"\Bigl(", 3 * len(e.limits), body[0])] + body[1:-1] + [
                _suffixed(body[-1], r"\Bigr)", 1)]
        if isinstance(e, Where):
            c, a, b = e.args

            branches = [self._rows(x) for x in (a, b)]

            def branch(rows):
                if len(rows) == 1:
                    return rows[0].tex
                return r"\begin{aligned}[t] & " + r" \\ & \quad ".join(r.tex for r in rows) + r" \end{aligned}"

            return [_Row(r"\begin{cases} %s & \text{if } %s \\ %s & \text{otherwise} \end{cases}" % (
                branch(branches[0]), p._print(c), branch(branches[1])), self._width(e),
                any(len(rows) > 1 for rows in branches))]
        return None


def _prefixed(text: str, width: float, row: _Row) -> _Row:
    return _Row(text + row.tex, row.width + width, row.aligned)


def _suffixed(row: _Row, text: str, width: float) -> _Row:
    return _Row(row.tex + text, row.width + width, row.aligned)


# ---- building it -----------------------------------------------------------------------

def explain(path_or_source, file: str | None = None) -> Explanation:
    """The derivation of a network, from a .nn path or its source text."""
    text = str(path_or_source)
    if file is None and "\n" not in text and Path(text).suffix == ".nn":
        if not Path(text).exists():  # a path, not a one-line program
            raise FileNotFoundError(f"no such .nn file: {text}")
        file = text
        text = Path(text).read_text(encoding="utf-8")
    return build(compile_source(text, file or "<string>"))


def build(c: Compiled) -> Explanation:
    g, plan, program = c.graph, c.plan, c.program
    names = [t for t in g.tensors] + [p.name for p in g.params]
    tex = FormulaLatex({grad_name(n): n for n in names})
    code_lines = list(plan.loss_forward + plan.backward)
    lines = {}
    for line in code_lines:
        for a in line.anchors:
            lines[a] = line
    # the seed shown as its value (1/B or 1), as the derivations have it
    statements = {st.anchors[-1]: dataclasses.replace(st, expr=st.expr.xreplace({SEED: program.seed}))
                  for st in program.loss + program.backward}
    matrix = _MatrixForm(tex)

    forward = Section("Forward pass", "forward",
                      [("text", "Each operator as used in this network: its element formula, with this "
                                "network's tensor names and sizes (the batch index "),
                       ("math", batch_index((), g.tensors).name), ("text", " runs over the "), ("math", "B"), ("text", " samples).")])
    for d in program.derivations:
        f = d.formula
        a = forward_anchor(d.node.label)
        args = ", ".join(d.node.args + tuple(f"{k}={v}" for k, v in d.node.options))
        shape = list(g.tensors[d.node.output].shape)
        step = Step(a, f"{d.node.output} = {d.node.op.name}({args}) : {shape}",
                    [_equation("element formula", tex.doprint(f.out[f.indices]), f.body, tex)])
        _attach_code(step, lines.get(a), statements.get(a), matrix, code_lines)
        forward.steps.append(step)

    seed = tex.doprint(program.seed)
    backward = Section(
        "Backward pass", "backward",
        [("text", "From the loss back to the first layer. For every operator "),
         ("math", r"y = f(x, \theta)"),
         ("text", " one rule gives the gradient reaching each input: the upstream gradient "
                  "contracted with the Jacobian, "),
         ("math", r"\frac{\partial L}{\partial x_{J}} = \sum_{I} \frac{\partial L}{\partial y_{I}} "
                  r"\frac{\partial y_{I}}{\partial x_{J}}"),
         ("text", ". The Kronecker deltas of the Jacobian are then eliminated by solving each for a "
                  "summed index. The loss is "),
         ("math", (r"L = \frac{1}{B} \sum_{b} " if g.reduce == "mean" else r"L = \sum_{b} ")
          + r"%s_{b}" % _name_tex(g.loss)),
         ("text", ", so its seed is "),
         ("math", r"%s = %s" % (_grad_tex(g.loss, "b"), seed)),
         ("text", " for every sample.")])
    last_activation = _last_activation(g)
    composed = _composed(program)
    derived = {backward_anchor(d.node.label, gr.wrt): (d, gr) for d in program.derivations for gr in d.grads}
    # in the order the Program computes them
    for a, (d, gr) in ((n.anchor, derived[n.anchor]) for st in program.backward for n in st.notes):
        subs = ",".join(tex.doprint(i) for i in gr.indices)
        target = _grad_tex(gr.wrt, subs)
        wrt = _name_tex(gr.wrt)
        formulas = [_equation("Jacobian entry", r"\frac{\partial %s_{%s}}{\partial %s_{%s}}" % (
            _name_tex(d.node.output), ",".join(tex.doprint(i) for i in d.formula.indices), wrt,
            ",".join(tex.doprint(i) for i in gr.jacobian_indices)), gr.jacobian, tex)]
        vjp = "vector–Jacobian product, deltas eliminated"
        if gr.in_output_terms:
            formulas.append(_equation(vjp, target, gr.input_form, tex))
            formulas.append(_equation("in terms of the forward output", target, gr.backward, tex))
        else:
            formulas.append(_equation(vjp, target, gr.backward, tex))
        lhs = real_base(grad_name(gr.wrt))[gr.indices]
        if a in composed:
            expr = composed[a]
            formulas.append(_equation(
                "composed with the steps before it that the same generated line computes: what that "
                "line evaluates", target, expr, tex, "composed", lhs))
            same = _identity(expr)
            if same is not None:
                simpler, conditions = same
                tail = (r" \qquad \text{where } " + r" \text{ and } ".join(tex.doprint(c) for c in conditions)
                        if conditions else "")
                formulas.append(_equation(
                    "equal to it" + (" where the conditions hold" if conditions else "")
                    + " (an identity: the code evaluates the form above, not this one)",
                    target, simpler, tex, "identity", lhs, tail))
        out_args = ", ".join(d.node.args)
        step = Step(a, f"{d.node.output} = {d.node.op.name}({out_args}): gradient for {gr.wrt}", formulas, "",
                    _bp_tag(d, gr, g, last_activation))
        _attach_code(step, lines.get(a), statements.get(a), matrix, code_lines)
        backward.steps.append(step)
    titles = {st.anchor: st.title for sec in (forward, backward) for st in sec.steps}
    for sec in (forward, backward):
        for st in sec.steps:
            st.fused_title = titles.get(st.fused_into, st.fused_into)
    chain = Section(
        "The chain at a glance", "chain",
        [("text", "The backward pass again, one formula a step, from the loss back to the first layer: "
                  "the matrix form where there is one. Where a step is one of the four equations of "
                  "back-propagation it is tagged: BP1 the error at the output layer, BP2 the error one "
                  "layer back, BP3 and BP4 the gradients of a layer's biases and weights.")])
    for st in backward.steps:
        forms = [f for f in st.formulas if f.caption == "matrix form"] or \
                [f for f in st.formulas if f.kind == "composed"] or st.formulas[-1:]
        chain.rows.append(Row(st.tag, st.title, st.anchor, forms[0]))
    intro = (f"The derivation nncc {__version__} used to generate the code for the network '{g.name}' "
             f"({g.source}). Each step's anchor is named in the comment of the generated line that "
             f"computes it; a line that fuses several steps appears under the last of them.")
    return Explanation(g.name, g.source, intro, [forward, backward, chain], c)


def _attach_code(step: Step, line, statement, matrix, code_lines):
    """The generated line computing this step (and its statement's matrix form), under the
    line's last step."""
    if line is None:
        return
    if line.anchors[-1] != step.anchor:
        step.fused_into = line.anchors[-1]
        return
    step.code = line.written or f"{line.target} = {line.code}"  # as derived, where a pass rewrote it
    step.temporaries = _temporaries(line, code_lines)
    if statement is not None and statement.variables is None:
        form = matrix.render(statement.expr, statement.indices)  # what the code computes
        if form:
            target = matrix.name(statement.target)
            step.formulas.append(Formula("matrix form", f"{target} = {target + ' + ' if statement.accumulate else ''}"
                                                        f"{form}"))


def _temporaries(line, code_lines) -> list:
    """The lines defining the temporaries (t0, t1, ...) a line reads, and those they read, in
    the module's order."""
    defs = {x.target: x for x in code_lines if not x.anchors}
    need, todo = set(), list(line.reads)
    while todo:
        name = todo.pop()
        if name in defs and name not in need:
            need.add(name)
            todo.extend(defs[name].reads)
    return [f"{x.target} = {x.code}" for x in code_lines if x.target in need and x in defs.values()]


def _last_activation(g):
    """The node whose output feeds the loss node, if it is an elementwise activation."""
    loss_node = g.producer(g.loss)
    if loss_node is None or not loss_node.args:
        return None
    n = g.producer(loss_node.args[0])
    return n.label if n is not None and n.op.kind == "elementwise" else None


def _bp_tag(d, gr, g, last_activation) -> str:
    node = d.node
    if gr.wrt in dict((p, p) for _, p in node.params):
        local = next(loc for loc, p in node.params if p == gr.wrt)
        return "BP3" if local == "bias" else "BP4" if local == "weight" else ""
    if node.op.kind == "elementwise" and len(node.args) == 1:
        return "BP1" if node.label == last_activation else "BP2"
    return ""


def _composed(program) -> dict:
    """anchor -> what the generated line computing that step evaluates, where the Program
    computes earlier backward steps inside it: its statement as composed from the derived
    steps, the loss's seed in place (before the numeric rewrites of stabilize, which keep
    the value)."""
    return {st.anchors[-1]: st.derived.xreplace({SEED: program.seed}) for st in program.backward
            if len(st.notes) > 1 and not _longer_than(st.derived, COMPOSED_LIMIT)}


# a composed formula longer than this (in sympy nodes; lenet's longest is 115) is not
# shown: no one reads it as one equation, and a line fusing 32 steps of a pipe of 300
# made each of its steps a where() nested up to 32 deep (megabytes of LaTeX)
COMPOSED_LIMIT = 150


def _longer_than(e, n: int) -> bool:
    for k, _ in enumerate(sp.preorder_traversal(e)):
        if k >= n:
            return True
    return False


def _identity(expr):
    """(simpler, conditions): expr simplified with every where() on its first branch, equal to it
    where all the conditions hold; None when that is not simpler."""
    conditions = []

    def first(w):
        conditions.append(w.args[0])
        return w.args[1]

    if expr.has(ExprWithLimits, sp.KroneckerDelta):  # elementwise formulas only: simplify is slow on sums
        return None
    plain = expr.replace(lambda e: isinstance(e, Where), first)
    # simplify's time has no bound: long formulas, or numbers with many digits (1e18 as a
    # rational inside exp) can keep it for minutes; such a formula is shown as it is
    if sp.count_ops(plain) > 40 or any(max(abs(r.p), r.q) > 10 ** 6 for r in plain.atoms(sp.Rational)):
        return None
    simpler = sp.factor(sp.simplify(plain))

    def size(e):  # a sign moved in or out is no simplification
        return min(sp.count_ops(e), sp.count_ops(-e))

    if size(simpler) >= size(plain):
        return None
    return simpler, list(dict.fromkeys(conditions))
