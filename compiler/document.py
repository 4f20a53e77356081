"""Derivations -> a document: LaTeX, Markdown or HTML (MathML), and Jupyter display.

Every formula shown is printed from the same sympy expressions the code is
lowered from (derive.Derivation), and each step carries the anchor that the
matching comment in the generated module names, with that module's line.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import sympy as sp
from sympy.printing.latex import LatexPrinter

from . import __version__
from .api import Compiled, compile_source
from .derive import B
from .naming import backward_anchor, forward_anchor, grad_name, var
from .symbolic import Where
from .templating import environment


# ---- formulas ------------------------------------------------------------------------

def _name_tex(name: str) -> str:
    return r"\mathrm{%s}" % name.replace("_", r"\_")


class FormulaLatex(LatexPrinter):
    """LaTeX of index formulas: tensors by their names, gradients as bar{X} = dL/dX."""

    def __init__(self, grads: dict):
        super().__init__({"mul_symbol": "dot", "fold_short_frac": False})
        self.grads = grads  # gradient base label -> tensor or parameter name

    def _print_Indexed(self, e):
        label = e.base.label.name
        subs = ",".join(self._print(i) for i in e.indices)
        if label in self.grads:
            return r"\overline{%s}_{%s}" % (_name_tex(self.grads[label]), subs)
        return r"%s_{%s}" % (_name_tex(label), subs)

    def _print_Symbol(self, s, style="plain"):
        return "B" if s == B else super()._print_Symbol(s)

    def _print_Dummy(self, s):
        return s.name

    def _print_FirstArgmax(self, e):
        idx = ",".join(self._print(lim[0]) for lim in e.limits)
        return r"\mathbb{1}\left[(%s) = \operatorname{first\,argmax}_{%s} %s\right]" % (
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

    def visit_BinOp(self, n):
        a, b = self._wrap(n.left), self._wrap(n.right)
        if isinstance(n.op, ast.Add):
            return f"{self.visit(n.left)} + {self.visit(n.right)}"
        if isinstance(n.op, ast.Sub):
            return f"{self.visit(n.left)} - {b}"
        if isinstance(n.op, ast.MatMult):
            return rf"{a} \, {b}"
        if isinstance(n.op, ast.Mult):
            scalar = isinstance(n.left, ast.Constant) or isinstance(n.right, ast.Constant)
            return f"{a} {b}" if scalar else rf"{a} \odot {b}"
        if isinstance(n.op, ast.Div):
            return r"\frac{%s}{%s}" % (self.visit(n.left), self.visit(n.right))
        if isinstance(n.op, ast.Pow):
            return "%s^{%s}" % (a if not isinstance(n.left, ast.Name) else self.visit(n.left), self.visit(n.right))
        raise _NoForm

    def visit_Attribute(self, n):
        if n.attr == "T":
            return r"%s^{\top}" % self._wrap(n.value)
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
class Step:
    anchor: str
    title: str
    formulas: list  # (caption, LaTeX)
    code: str = ""  # the generated line that computes it
    tag: str = ""  # BP1..BP4 where the step is one of Nielsen's equations
    fused_into: str = ""  # the anchor of the step whose line also computes this one


@dataclass
class Section:
    title: str
    anchor: str
    text: list  # ("text" | "math", content) pieces of the introduction
    steps: list = field(default_factory=list)


@dataclass
class Explanation:
    """The derivation of one network; renders as LaTeX, Markdown or HTML (and in Jupyter)."""

    name: str
    source: str
    intro: str
    sections: list

    def latex(self) -> str:
        return _render("explain.tex.j2", self, tex_escape=_tex_escape)

    def markdown(self) -> str:
        return _render("explain.md.j2", self)

    def html(self) -> str:
        from latex2mathml.converter import convert
        return _render("explain.html.j2", self, mathml=lambda tex: convert(tex, display="block"),
                       inline_mathml=lambda tex: convert(tex))

    def render(self, fmt: str) -> str:
        return {"tex": self.latex, "md": self.markdown, "html": self.html}[fmt]()

    def _repr_latex_(self):
        return "\n".join(f"$${tex}$$" for s in self.sections for st in s.steps for _, tex in st.formulas)

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
                    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}.get(ch, ch))
    return "".join(out)


# ---- building it -----------------------------------------------------------------------

def explain(path_or_source, file: str | None = None) -> Explanation:
    """The derivation of a network, from a .nn path or its source text."""
    text = str(path_or_source)
    if file is None and "\n" not in text and Path(text).suffix == ".nn" and Path(text).exists():
        file = text
        text = Path(text).read_text(encoding="utf-8")
    return build(compile_source(text, file or "<string>"))


def build(c: Compiled) -> Explanation:
    g, plan = c.graph, c.plan
    names = [t for t in g.tensors] + [p.name for p in g.params]
    tex = FormulaLatex({grad_name(n): n for n in names})
    display = {var(n): _name_tex(n) for n in names}
    display.update({grad_name(n): r"\overline{%s}" % _name_tex(n) for n in names})
    lines = {}
    for line in plan.loss_forward + plan.backward:
        for a in line.anchors:
            lines[a] = line
    matrix = _MatrixForm(display)

    forward = Section("Forward pass", "forward",
                      [("text", "Each operator as used in this network: its element formula, with this "
                                "network's tensor names and sizes (the batch index "),
                       ("math", "b"), ("text", " runs over the "), ("math", "B"), ("text", " samples).")])
    for d in plan.derivations:
        f = d.formula
        a = forward_anchor(d.node.label)
        args = ", ".join(d.node.args + tuple(f"{k}={v}" for k, v in d.node.options))
        shape = list(g.tensors[d.node.output].shape)
        step = Step(a, f"{d.node.label} = {d.node.op.name}({args}) : {shape}",
                    [("element formula", f"{tex.doprint(f.out[f.indices])} = {tex.doprint(f.body)}")])
        _attach_code(step, lines.get(a), matrix, display)
        forward.steps.append(step)

    backward = Section(
        "Backward pass", "backward",
        [("text", "From the loss back to the first layer. For every operator "),
         ("math", r"y = f(x, \theta)"),
         ("text", " one rule gives the gradient reaching each input: the upstream gradient "
                  "contracted with the Jacobian, "),
         ("math", r"\overline{x}_{J} = \sum_{I} \overline{y}_{I} \frac{\partial y_{I}}{\partial x_{J}}"),
         ("text", ", where "), ("math", r"\overline{X} = \partial L / \partial X"),
         ("text", ". The Kronecker deltas of the Jacobian are then eliminated by solving each for a "
                  "summed index. The loss is "),
         ("math", (r"L = \frac{1}{B} \sum_{b} " if g.reduce == "mean" else r"L = \sum_{b} ")
          + r"%s_{b}" % _name_tex(g.loss)),
         ("text", ", so its seed is "),
         ("math", r"\overline{%s}_{b} = %s" % (_name_tex(g.loss), r"\frac{1}{B}" if g.reduce == "mean" else "1")),
         ("text", " for every sample.")])
    last_activation = _last_activation(g)
    fused = _fused(plan.derivations, g)
    for d in reversed(plan.derivations):
        for gr in d.grads:
            a = backward_anchor(d.node.label, gr.wrt)
            target = r"\overline{%s}_{%s}" % (_name_tex(gr.wrt), ",".join(tex.doprint(i) for i in gr.indices))
            wrt = _name_tex(gr.wrt)
            formulas = [
                ("Jacobian entry", r"\frac{\partial %s_{%s}}{\partial %s_{%s}} = %s" % (
                    _name_tex(d.node.output), ",".join(tex.doprint(i) for i in d.formula.indices), wrt,
                    ",".join(tex.doprint(i) for i in gr.jacobian_indices), tex.doprint(gr.jacobian))),
            ]
            if gr.in_output_terms:
                formulas.append(("vector–Jacobian product, deltas eliminated",
                                 f"{target} = {tex.doprint(gr.input_form)}"))
                formulas.append(("in terms of the forward output", f"{target} = {tex.doprint(gr.backward)}"))
            else:
                formulas.append(("vector–Jacobian product, deltas eliminated",
                                 f"{target} = {tex.doprint(gr.backward)}"))
            if a in fused:
                formulas.append(("composed with the step before and simplified", fused[a]))
            step = Step(a, f"{d.node.label}: gradient for {gr.wrt}", formulas, "",
                        _bp_tag(d, gr, g, last_activation))
            _attach_code(step, lines.get(a), matrix, display)
            backward.steps.append(step)
    intro = (f"The derivation nncc {__version__} used to generate the code for the network '{g.name}' "
             f"({g.source}). Each step's anchor is named in the comment of the generated line that "
             f"computes it; a line that fuses several steps appears under the last of them.")
    return Explanation(g.name, g.source, intro, [forward, backward])


def _attach_code(step: Step, line, matrix, display):
    """The generated line computing this step (and its matrix form), under the line's last step."""
    if line is None:
        return
    if line.anchors[-1] != step.anchor:
        step.fused_into = line.anchors[-1]
        return
    step.code = f"{line.target} = {line.code}"
    form = matrix.render(line.code)
    if form and line.target in display:
        step.formulas.append(("matrix form", f"{display[line.target]} = {form}"))


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


def _fused(derivations, g) -> dict:
    """anchor -> LaTeX of an elementwise backward step composed with the one before it and simplified
    (sigmoid then binary cross-entropy gives a - y), where that is simpler than the two apart."""
    producer_grad = {}
    for d in derivations:
        for gr in d.grads:
            producer_grad.setdefault(gr.wrt, []).append((d, gr))
    tex = FormulaLatex({grad_name(n): n for n in list(g.tensors) + [p.name for p in g.params]})
    out = {}
    for d in derivations:
        if d.node.op.kind != "elementwise" or len(d.grads) != 1:
            continue
        uses = producer_grad.get(d.node.output, [])
        if len(uses) != 1:
            continue
        (up, upgr), = uses
        if upgr.backward.has(sp.Sum, sp.KroneckerDelta):
            continue
        gr = d.grads[0]
        dy = sp.IndexedBase(grad_name(d.node.output), real=True)
        inner = upgr.input_form if upgr.input_form is not None else upgr.backward
        inner = inner.replace(lambda e: isinstance(e, Where), lambda e: e.args[1])  # clamps inactive
        subs = dict(zip(upgr.indices, gr.indices))
        expr = gr.backward
        expr = expr.replace(lambda e: isinstance(e, sp.Indexed) and e.base == dy, lambda e: inner.xreplace(subs))
        simpler = sp.factor(sp.simplify(expr))
        if sp.count_ops(simpler) < sp.count_ops(gr.backward) + sp.count_ops(inner):
            target = r"\overline{%s}_{%s}" % (_name_tex(gr.wrt), ",".join(tex.doprint(i) for i in gr.indices))
            out[backward_anchor(d.node.label, gr.wrt)] = f"{target} = {tex.doprint(simpler)}"
    return out
