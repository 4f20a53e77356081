"""Derivations -> a document: LaTeX, Markdown or HTML (MathML), and Jupyter display.

Every formula shown is printed from the same sympy expressions the code is
lowered from (derive.Derivation), and each step carries the anchor that the
matching comment in the generated module names, with that module's line.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import sympy as sp
from sympy.concrete.expr_with_limits import ExprWithLimits
from sympy.printing.latex import LatexPrinter

from . import __version__
from .api import Compiled, compile_source
from .derive import B, batch_index
from .naming import backward_anchor, forward_anchor, grad_name, var
from .primitives import lookup
from .symbolic import Where, real_base
from .templating import environment


# ---- formulas ------------------------------------------------------------------------

def _name_tex(name: str) -> str:
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


# ---- matrix forms, read off the generated numpy statements -----------------------------

class _MatrixForm(ast.NodeVisitor):
    """A numpy statement of the generated module as vector/matrix algebra, or None."""

    def __init__(self, display: dict):
        self.display = display  # python variable -> LaTeX

    def render(self, code: str):
        try:
            return self.visit(ast.parse(code, mode="eval").body)
        except _NoForm:
            return None

    def visit_Name(self, n):
        if n.id == "batch":
            return "B"
        if n.id not in self.display:
            raise _NoForm
        return self.display[n.id]

    def visit_Constant(self, n):
        return sp.latex(sp.nsimplify(n.value))

    def visit_UnaryOp(self, n):
        if isinstance(n.op, ast.USub):
            return "-" + self._wrap(n.operand)
        raise _NoForm

    def _wrap(self, n):
        s = self.visit(n)
        return r"\left(%s\right)" % s if isinstance(n, ast.BinOp) and \
            isinstance(n.op, (ast.Add, ast.Sub)) else s

    def _base(self, n):
        """n as the base of a superscript: parenthesized unless a plain name."""
        s = self.visit(n)
        while isinstance(n, ast.Subscript):
            n = n.value
        return s if isinstance(n, ast.Name) and not s.startswith(r"\frac") else r"\left(%s\right)" % s

    def visit_BinOp(self, n):
        # each operand rendered once: a long sum is a deep tree, and twice per level is 2^depth
        if isinstance(n.op, ast.Add):
            return f"{self.visit(n.left)} + {self.visit(n.right)}"
        if isinstance(n.op, ast.Sub):
            return f"{self.visit(n.left)} - {self._wrap(n.right)}"
        if isinstance(n.op, ast.Div):
            return r"\frac{%s}{%s}" % (self.visit(n.left), self.visit(n.right))
        if isinstance(n.op, ast.Pow):
            return "%s^{%s}" % (self._base(n.left), self.visit(n.right))
        a, b = self._wrap(n.left), self._wrap(n.right)
        if isinstance(n.op, ast.MatMult):
            return rf"{a} \, {b}"
        if isinstance(n.op, ast.Mult):
            scalar = isinstance(n.left, ast.Constant) or isinstance(n.right, ast.Constant)
            return f"{a} {b}" if scalar else rf"{a} \odot {b}"
        raise _NoForm

    def visit_Attribute(self, n):
        if n.attr == "T":
            return r"%s^{\top}" % self._base(n.value)
        raise _NoForm

    def visit_Subscript(self, n):  # broadcasting views such as t[:, None]
        return self.visit(n.value)

    def visit_Call(self, n):
        f = n.func
        if isinstance(f, ast.Attribute) and f.attr == "sum" and not n.args:
            axis = next((k.value for k in n.keywords if k.arg == "axis"), None)
            if isinstance(axis, ast.Constant) and axis.value == 0:
                return r"\sum_{\text{batch}} %s" % self._wrap(f.value)
            raise _NoForm
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        simple = {"_sigmoid": r"\sigma", "tanh": r"\tanh", "exp": r"\exp", "log": r"\log", "sqrt": r"\sqrt"}
        if name in simple and len(n.args) == 1:
            return r"%s\left(%s\right)" % (simple[name], self.visit(n.args[0]))
        raise _NoForm


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

    def latex(self) -> str:
        return _render("explain.tex.j2", self, tex_escape=_tex_escape, wrap_code=_wrap_code)

    def markdown(self) -> str:
        return _render("explain.md.j2", self)

    def html(self) -> str:
        from latex2mathml.converter import convert
        return _render("explain.html.j2", self, mathml=lambda tex: convert(_names_as_text(tex), display="block"),
                       inline_mathml=lambda tex: convert(_names_as_text(tex)))

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


def _names_as_text(tex: str) -> str:
    """Tensor names as one text token each for latex2mathml, which splits \\mathrm{dense\\_2}
    into one <mi> per letter (an accent or a subscript then sits on a single letter)."""
    return re.sub(r"\\mathrm\{((?:[A-Za-z0-9.]|\\_)+)\}",
                  lambda m: r"\text{%s}" % m.group(1).replace(r"\_", "_"), tex)


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


def _glyphs(tex: str) -> int:
    """About how many glyphs wide a piece of LaTeX prints (subscripts count half)."""
    t = re.sub(r"\\(?:mathrm|text|operatorname)\{([^{}]*)\}", r"\1", tex)
    t = t.replace(r"\frac{\partial L}{\partial ", "dL/d")
    t = re.sub(r"\\(?:left|right|Bigl|Bigr|begin|end|cdot|quad)\b|\\[,;! ]", " ", t)
    t = re.sub(r"\\[A-Za-z]+", "x", t)
    t = re.sub(r"_\{([^{}]*)\}", lambda m: "x" * (len(m.group(1)) // 2), t)
    return len(re.sub(r"[{}\s]", "", t))


class _Rows:
    """A formula as rows of at most about `width` glyphs, split between its terms, its factors,
    inside a sum's body and inside a where's branches; a piece with no such split stays whole."""

    def __init__(self, printer, width: int = 72):
        self.p, self.width = printer, width

    def rows(self, e) -> list:
        tex = self.p._print(e)
        if _glyphs(tex) <= self.width:
            return [tex]
        rows = self._split(e)
        return self._merge(rows) if rows else [tex]

    def _merge(self, rows):
        out = [rows[0]]
        for r in rows[1:]:
            if "aligned" not in out[-1] + r and _glyphs(out[-1]) + _glyphs(r) <= self.width:
                out[-1] = f"{out[-1]} {r}"
            else:
                out.append(r)
        return out

    def _bracketed(self, e, brackets: bool):
        rows = self.rows(e)
        if not brackets:
            return rows
        if len(rows) == 1:
            return [r"\left(%s\right)" % rows[0]]
        return [r"\Bigl(" + rows[0]] + rows[1:-1] + [rows[-1] + r"\Bigr)"]

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
                out += [sign + rows[0]] + rows[1:]
            return out
        if isinstance(e, sp.Mul):
            sign = ""
            if e.could_extract_minus_sign():
                sign, e = "- ", -e
            num, den = sp.fraction(e)
            factors = sorted(sp.Mul.make_args(num), key=lambda f: not (
                isinstance(f, sp.Indexed) and f.base.label.name in p.grads))  # the gradient first
            pieces = ([[r"\frac{1}{%s}" % p._print(den)]] if den != 1 else []) + [
                self._bracketed(f, isinstance(f, sp.Add)) for f in factors if f != 1]
            if len(pieces) < 2:
                rows = self._split(factors[0]) if sign and len(factors) == 1 and den == 1 else None
                return [sign + rows[0]] + rows[1:] if rows else None
            out = []
            for k, rows in enumerate(pieces):
                out += [("" if k == 0 else r"\cdot ") + rows[0]] + rows[1:]
            out[0] = sign + out[0]
            return out
        if isinstance(e, sp.Sum):
            body = self.rows(e.function)
            if len(body) < 2:
                return None
            mark = sp.Symbol("NNBODY")
            head = p._print(sp.Sum(mark, *e.limits)).replace(p._print(mark), "")
            return [head + r"\Bigl(" + body[0]] + body[1:-1] + [body[-1] + r"\Bigr)"]
        if isinstance(e, Where):
            c, a, b = e.args

            def branch(x):
                rows = self.rows(x)
                if len(rows) == 1:
                    return rows[0]
                return r"\begin{aligned}[t] & " + r" \\ & \quad ".join(rows) + r" \end{aligned}"

            return [r"\begin{cases} %s & \text{if } %s \\ %s & \text{otherwise} \end{cases}" % (
                branch(a), p._print(c), branch(b))]
        return None


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
    g, plan = c.graph, c.plan
    names = [t for t in g.tensors] + [p.name for p in g.params]
    tex = FormulaLatex({grad_name(n): n for n in names})
    display = {var(n): _name_tex(n) for n in names}
    display.update({grad_name(n): _grad_tex(n) for n in names})
    code_lines = list(plan.loss_forward + plan.backward)
    lines = {}
    for line in code_lines:
        for a in line.anchors:
            lines[a] = line
    matrix = _MatrixForm(display)

    forward = Section("Forward pass", "forward",
                      [("text", "Each operator as used in this network: its element formula, with this "
                                "network's tensor names and sizes (the batch index "),
                       ("math", batch_index((), g.tensors).name), ("text", " runs over the "), ("math", "B"), ("text", " samples).")])
    for d in plan.derivations:
        f = d.formula
        a = forward_anchor(d.node.label)
        args = ", ".join(d.node.args + tuple(f"{k}={v}" for k, v in d.node.options))
        shape = list(g.tensors[d.node.output].shape)
        step = Step(a, f"{d.node.output} = {d.node.op.name}({args}) : {shape}",
                    [_equation("element formula", tex.doprint(f.out[f.indices]), f.body, tex)])
        _attach_code(step, lines.get(a), matrix, display, code_lines)
        forward.steps.append(step)

    seed = r"\frac{1}{B}" if g.reduce == "mean" else "1"
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
    composed = _composed(plan.derivations, g, lines)
    for d in reversed(plan.derivations):
        for gr in d.grads:
            a = backward_anchor(d.node.label, gr.wrt)
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
            _attach_code(step, lines.get(a), matrix, display, code_lines)
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
    return Explanation(g.name, g.source, intro, [forward, backward, chain])


def _attach_code(step: Step, line, matrix, display, code_lines):
    """The generated line computing this step (and its matrix form), under the line's last step."""
    if line is None:
        return
    if line.anchors[-1] != step.anchor:
        step.fused_into = line.anchors[-1]
        return
    step.code = f"{line.target} = {line.code}"
    step.temporaries = _temporaries(line, code_lines)
    form = matrix.render(line.code)
    if form and line.target in display:
        step.formulas.append(Formula("matrix form", f"{display[line.target]} = {form}"))


def _temporaries(line, code_lines) -> list:
    """The lines defining the temporaries (t0, t1, ...) a line reads, and those they read, in
    the module's order."""
    defs = {x.target: x for x in code_lines if not x.anchors and re.fullmatch(r"t\d+", x.target)}
    need, todo = set(), [line.code]
    while todo:
        for name in re.findall(r"\bt\d+\b", todo.pop()):
            if name in defs and name not in need:
                need.add(name)
                todo.append(defs[name].code)
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


def _composed(derivations, g, lines) -> dict:
    """anchor -> what the generated line computing that step evaluates for it, where the line
    fuses earlier steps: the step's backward formula with each gradient it reads replaced by the
    formulas of the steps that compute that gradient in the same line, and the loss's seed by its
    value, as the code is lowered (before the numeric rewrites of stabilize, which keep the value).
    Only steps with such a substitution are listed."""
    seed = sp.Integer(1) / B if g.reduce == "mean" else sp.Integer(1)
    dloss = real_base(grad_name(g.loss))
    contributions, steps = {}, {}
    for d in derivations:
        for gr in d.grads:
            a = backward_anchor(d.node.label, gr.wrt)
            steps[a] = gr
            contributions.setdefault(gr.wrt, []).append(a)
    bases = {real_base(grad_name(t)): t for t in contributions}
    full, out = {}, {}
    for d in reversed(derivations):
        for gr in d.grads:
            a = backward_anchor(d.node.label, gr.wrt)
            line = lines.get(a)
            before = set(line.anchors[:line.anchors.index(a)]) if line is not None else set()
            expr, fused = gr.backward, False
            read = sorted({r.base for r in expr.atoms(sp.Indexed) if r.base in bases}, key=sp.default_sort_key)
            for base in read:
                anchors = contributions[bases[base]]
                if bases[base] == gr.wrt or not set(anchors) <= before:
                    continue
                parts = [full[x] for x in anchors]
                if any(p is None for p in parts):  # a part too long to show: so is this
                    expr = None
                    break
                expr = _substitute_reads(expr, base, [(p, steps[x].indices) for p, x in zip(parts, anchors)])
                fused = True
            if expr is not None:
                expr = expr.replace(lambda e: isinstance(e, sp.Indexed) and e.base == dloss, lambda e: seed)
                if _longer_than(expr, COMPOSED_LIMIT):
                    expr = None
            full[a] = expr
            if fused and expr is not None:
                out[a] = expr
    return out


# a composed formula longer than this (in sympy nodes; lenet's longest is 115) is not
# shown: no one reads it as one equation, and a line fusing 32 steps of a pipe of 300
# made each of its steps a where() nested up to 32 deep (megabytes of LaTeX)
COMPOSED_LIMIT = 150


def _longer_than(e, n: int) -> bool:
    for k, _ in enumerate(sp.preorder_traversal(e)):
        if k >= n:
            return True
    return False


def _substitute_reads(expr, base, parts):
    """expr with each read base[J] replaced by the sum of the parts (formula, its indices) at J,
    a part's summed indices primed where they would capture a symbol of expr."""
    def value(read):
        taken = {s.name for s in expr.atoms(sp.Symbol)}
        out = []
        for p, ix in parts:
            names = taken | {s.name for i in ix for s in sp.sympify(i).free_symbols}
            out.append(_rename_bound(p, names).xreplace(dict(zip(ix, read.indices))))
        return sp.Add(*out)

    return expr.replace(lambda e: isinstance(e, sp.Indexed) and e.base == base, value)


def _rename_bound(e, taken: set):
    """e with each summed index whose name is in `taken` primed until it is not (names are added
    to `taken` as they are used)."""
    def rebind(r):
        m = {}
        for lim in r.limits:
            v = lim[0]
            name = v.name
            while name in taken:
                name += "'"
            taken.add(name)
            if name != v.name:
                m[v] = sp.Symbol(name, integer=True)
        if not m:
            return r
        return r.func(r.function.xreplace(m), *[(m.get(lim[0], lim[0]), *lim[1:]) for lim in r.limits])

    return e.replace(lambda x: isinstance(x, ExprWithLimits), rebind)


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
