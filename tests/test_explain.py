"""nncc explain: the document shows the formulas the code computes, in three formats."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sympy as sp

import nncc
from nncc.api import compile_source
from nncc.autodiff.derive import B
from nncc.explanation.document import FormulaLatex, build
from nncc.naming import backward_anchor, forward_anchor, grad_name, var
from nncc.ops.symbolic import FirstArgmax, LogSumExp, MaxOver, Where, real_base
from sympy.concrete.expr_with_limits import ExprWithLimits

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.nn"))
ACTIVATIONS = """
input x: [3]
target y: [3]
z = x |> dense(3)
a = z |> sigmoid
b = z |> tanh
c = z |> softplus
d = z |> exp
f = z |> silu
loss = quadratic(a + b + c + d + f, y)
"""


def _doc(path_or_source, file=None):
    return nncc.explain(path_or_source, file)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_step_is_anchored_in_the_generated_code(path):
    compiled = compile_source(path.read_text(), f"examples/{path.name}")
    module = compiled.numpy_module()
    doc = build(compiled)
    steps = [st for s in doc.sections for st in s.steps]
    for d in compiled.plan.derivations:
        assert forward_anchor(d.node.label) in {st.anchor for st in steps}
        for g in d.grads:
            anchor = backward_anchor(d.node.label, g.wrt)
            assert anchor in {st.anchor for st in steps}
            assert f"[#{anchor}]" in module, f"the code does not name {anchor}"
    # the code shown under a step is lines of the generated module (or of the comments
    # above a line that computes several steps at once)
    for st in steps:
        for line in st.code.splitlines():
            assert line in module


def test_nielsen_shows_the_chapter_two_equations():
    doc = _doc(str(ROOT / "examples" / "nielsen.nn"))
    md = doc.markdown()
    tags = {st.tag for s in doc.sections for st in s.steps}
    assert {"BP1", "BP2", "BP3", "BP4"} <= tags
    assert (r"\frac{\partial L}{\partial \mathrm{dense\_2.weight}} = "
            r"\left(\frac{\partial L}{\partial \mathrm{dense\_2}}\right)^{\top} \, \mathrm{sigmoid\_1}") in md
    assert r"\sum_{\text{batch}} \frac{\partial L}{\partial \mathrm{dense\_1}}" in md
    assert "In terms of the forward output" in md
    assert r"\delta_{i i'}" in md  # Jacobian entries keep their Kronecker deltas


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_the_chain_at_a_glance_sums_up_every_backward_step_in_order(path):
    doc = _doc(str(path))
    backward, chain = doc.sections[1], doc.sections[2]
    assert [r.anchor for r in chain.rows] == [st.anchor for st in backward.steps]
    for row, st in zip(chain.rows, backward.steps):
        assert row.tag == st.tag and row.formula in st.formulas
    md = doc.markdown()
    assert all(f"(#{r.anchor})" in md for r in chain.rows)


def test_the_chain_of_nielsens_network_runs_bp1_to_bp4_from_the_output_back():
    chain = _doc(str(ROOT / "examples" / "nielsen.nn")).sections[2]
    tags = [r.tag for r in chain.rows if r.tag]
    assert tags == ["BP1", "BP4", "BP3", "BP2", "BP4", "BP3"]
    assert all(r.formula.caption == "matrix form" for r in chain.rows if r.tag)


def test_sigmoid_then_cross_entropy_fuses_to_a_minus_y_as_an_identity_apart_from_the_code():
    doc = _doc(str(ROOT / "examples" / "xor.nn"))
    step = _step(doc, backward_anchor("sigmoid_1", "dense_2"))
    kinds = [f.kind for f in step.formulas]
    assert kinds.index("composed") < kinds.index("identity")
    composed, identity = (next(f for f in step.formulas if f.kind == k) for k in ("composed", "identity"))
    p, y = (real_base(n)[identity.lhs.indices] for n in "py")
    assert sp.simplify(identity.rhs - (p - y) / B) == 0
    assert composed.rhs.has(Where) and not identity.rhs.has(Where)  # the code keeps the clamps
    assert "not this one" in identity.caption and r"\text{where }" in identity.tex
    plain = composed.rhs.replace(lambda e: isinstance(e, Where), lambda e: e.args[1])
    assert sp.simplify(plain - identity.rhs) == 0
    assert r"\frac{\mathrm{p}_{b,i} - \mathrm{y}_{b,i}}{B}" in doc.markdown()


def _step(doc, anchor):
    return next(st for s in doc.sections for st in s.steps if st.anchor == anchor)


def _fresh_bounds(e):
    """e with every summed index a new Dummy, so substituting e cannot capture a name."""
    def rebind(r):
        m = {lim[0]: sp.Dummy(lim[0].name, integer=True) for lim in r.limits}
        return r.func(r.function.xreplace(m), *[(m[lim[0]], *lim[1:]) for lim in r.limits])
    return e.replace(lambda x: isinstance(x, ExprWithLimits), rebind)


def _canonical(e, depth=0):
    """e with its summed indices named by nesting depth and position, to compare two formulas
    that differ only in the names of bound indices."""
    if isinstance(e, ExprWithLimits):
        m = {lim[0]: sp.Symbol(f"_bound{depth}_{k}", integer=True) for k, lim in enumerate(e.limits)}
        return e.func(_canonical(e.function.xreplace(m), depth + 1), *[(m[lim[0]], *lim[1:]) for lim in e.limits])
    if not e.args or isinstance(e, sp.IndexedBase):
        return e
    return e.func(*[_canonical(a, depth) for a in e.args])


def _line_evaluates(compiled, anchor):
    """What the generated line holding `anchor` computes for that step, from the derivations and
    the plan alone: the line's steps in order, each gradient read that earlier steps of the line
    compute (all of its contributions) replaced by their formulas, the loss's seed by its value."""
    g, plan = compiled.graph, compiled.plan
    line = next(x for x in plan.loss_forward + plan.backward if anchor in x.anchors)
    steps = {backward_anchor(d.node.label, gr.wrt): gr for d in plan.derivations for gr in d.grads}
    count = {}
    for gr in steps.values():
        count[gr.wrt] = count.get(gr.wrt, 0) + 1
    seed = sp.Integer(1) / B if g.reduce == "mean" else sp.Integer(1)
    dloss = real_base(grad_name(g.loss))
    done = {}
    expr = None
    for a in line.anchors[:line.anchors.index(anchor) + 1]:
        if a not in steps:
            continue
        gr = steps[a]
        expr = gr.backward.replace(lambda e: isinstance(e, sp.Indexed) and e.base == dloss, lambda e: seed)
        for tensor, parts in done.items():
            if len(parts) == count[tensor]:
                base = real_base(grad_name(tensor))
                expr = expr.replace(
                    lambda e, base=base: isinstance(e, sp.Indexed) and e.base == base,
                    lambda e, parts=parts: sp.Add(*[_fresh_bounds(p).xreplace(dict(zip(ix, e.indices)))
                                                    for p, ix in parts]))
        done.setdefault(gr.wrt, []).append((expr, gr.indices))
    return expr


def _arrays(compiled, batch, rng):
    """Random values for every tensor, parameter and gradient, by the name formulas read them with
    and by the variable the code reads them from; the first element of each computed tensor tiny,
    where clamps and guards switch branches."""
    import numpy as np
    g = compiled.graph
    given = {t.name for t in g.inputs} | {t.name for t in g.targets}
    values, variables = {}, {}
    for name, shape in [(t.name, (batch,) + tuple(t.shape)) for t in g.tensors.values()] + \
                       [(prm.name, tuple(prm.shape)) for prm in g.params]:
        a = rng.uniform(0.05, 0.95, shape)
        if name not in given and name in g.tensors:
            a.flat[0] = 1e-60
        values[name] = variables[var(name)] = a
        values[grad_name(name)] = variables[grad_name(name)] = rng.uniform(-1, 1, shape)
    # a buffer holding sigmoid(u) is read beside u where its complement matters (1 - s as
    # sigmoid(-u)): the two must agree
    for name, (indices, u) in compiled.program.sigmoids.items():
        assert isinstance(u, sp.Indexed) and u.indices == indices, (name, u)  # as the examples have it
        values[name][...] = variables[var(name)][...] = 1 / (1 + np.exp(-values[u.base.label.name]))
    return values, variables


def _at(expr, values, element, indices, batch):
    """The value of an index formula at one element, reads outside a tensor being zero."""
    e = expr.xreplace(dict(zip(indices, [sp.Integer(k) for k in element]))).subs(B, batch).doit()

    def read(x):
        k = tuple(int(i) for i in x.indices)
        a = values[x.base.label.name]
        inside = all(0 <= i < n for i, n in zip(k, a.shape))
        return sp.Float(a[k]) if inside else sp.Integer(0)

    return float(e.replace(lambda x: isinstance(x, sp.Indexed), read).doit())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_composed_formulas_are_what_the_generated_line_evaluates(path):
    """A formula shown as what a fused line computes is that line's composition of the derived
    step formulas, symbolically, and gives the line's values where the code runs it."""
    import numpy as np
    from nncc.api import load_module
    source = path.read_text()
    compiled = compile_source(source, f"examples/{path.name}")
    doc = build(compiled)
    module = load_module(source, path.name)
    lines = {a: x for x in compiled.plan.loss_forward + compiled.plan.backward for a in x.anchors}
    printer = FormulaLatex({grad_name(n): n for n in list(compiled.graph.tensors)
                            + [p.name for p in compiled.graph.params]})
    batch, rng = 3, np.random.default_rng(0)
    shown = 0
    for st in (st for s in doc.sections for st in s.steps):
        for f in st.formulas:
            if f.kind != "composed":
                continue
            shown += 1
            assert f.tex.endswith(" = " + printer.doprint(f.rhs))  # the text printed is this expression
            expected = _line_evaluates(compiled, st.anchor)
            a, b = _canonical(f.rhs), _canonical(expected)
            assert a == b or sp.simplify(a - b) == 0, (st.anchor, f.rhs, expected)
            if not st.code or f.rhs.has(FirstArgmax, MaxOver, LogSumExp):
                continue
            line = lines[st.anchor]
            values, variables = _arrays(compiled, batch, rng)
            space = dict(vars(module), batch=batch, dtype=np.float64,
                         seed=float(compiled.program.seed.subs(B, batch)), **variables)
            with np.errstate(all="ignore"):
                got = np.asarray(eval(line.code, space), dtype=float)
            for element in [(0,) * got.ndim, tuple(n - 1 for n in got.shape)]:
                want = _at(f.rhs, values, element, f.lhs.indices, batch)
                assert np.isclose(got[element], want, rtol=1e-9, atol=1e-12), \
                    (st.anchor, element, got[element], want)
    if any(len(st.notes) > 1 for st in compiled.program.backward):
        assert shown, "a fused line and no composed formula"
    if path.stem in ("xor", "zhou", "nielsen", "lenet"):  # sigmoid or softmax into their losses
        assert shown, "no fused line"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_headings_name_tensors_as_the_formulas_do(path):
    compiled = compile_source(path.read_text(), f"examples/{path.name}")
    doc = build(compiled)
    for d in compiled.plan.derivations:
        head = f"{d.node.output} = {d.node.op.name}("
        assert _step(doc, forward_anchor(d.node.label)).title.startswith(head)
        for gr in d.grads:
            assert _step(doc, backward_anchor(d.node.label, gr.wrt)).title.startswith(head)
    xor = _doc(str(ROOT / "examples" / "xor.nn")).markdown()
    assert "### p = sigmoid(dense_2) : [1]" in xor and "sigmoid_1 = " not in xor


def test_code_excerpts_define_the_temporaries_they_read():
    compiled = compile_source((ROOT / "examples" / "digits.nn").read_text(), "examples/digits.nn")
    module = compiled.numpy_module()
    doc = build(compiled)
    temps = {x.target for x in compiled.plan.loss_forward + compiled.plan.backward
             if not x.anchors and re.fullmatch(r"t\d+", x.target)}
    assert temps
    seen = 0
    for st in (st for s in doc.sections for st in s.steps if st.code):
        defined = {t.split(" = ")[0] for t in st.temporaries}
        for t in st.temporaries:
            assert t in module
        read = set(re.findall(r"\bt\d+\b", st.code)) & temps
        assert read <= defined, (st.anchor, read - defined)
        seen += bool(read)
    assert seen
    assert "The line reads temporaries" in doc.markdown()


def _plain(tex: str) -> str:
    """Tensor reads as plain symbols (\\mathrm{dense\\_1}_{b,i} -> dense1, the gradient of a -> g_{a})
    for sympy's parser."""
    tex = re.sub(r"\\frac\{\\partial L\}\{\\partial \\mathrm\{([^}]*)\}_\{[^}]*\}\}",
                 lambda m: "g_{%s}" % m.group(1).replace(r"\_", ""), tex)
    tex = re.sub(r"\\mathrm\{([^}]*)\}_\{[^}]*\}", lambda m: m.group(1).replace(r"\_", ""), tex)
    return tex.replace(r"\cdot", "*")


def test_elementwise_formulas_parse_back_to_the_derived_expressions():
    parse_latex = pytest.importorskip("sympy.parsing.latex").parse_latex
    compiled = compile_source(ACTIVATIONS, "act.nn")
    grads = {grad_name(n): n for n in compiled.graph.tensors}

    def symbol(r):  # as _plain writes it
        label = r.base.label.name
        if label in grads:
            return sp.Symbol("g_{%s}" % grads[label].replace("_", ""))
        return sp.Symbol(label.replace("_", ""))

    checked = gradients = 0
    for d in compiled.plan.derivations:
        if d.node.op.kind != "elementwise" or len(d.node.args) != 1:
            continue
        reads = {r: symbol(r) for r in d.formula.body.atoms(sp.Indexed)}
        candidates = [d.formula.body]
        for g in d.grads:
            candidates.append(g.backward)
        for expr in candidates:
            plain = expr.xreplace({r: symbol(r) for r in expr.atoms(sp.Indexed)})
            tex = _plain(FormulaLatex(grads).doprint(expr))
            try:
                back = parse_latex(tex, backend="lark")
            except Exception:  # constructs the parser does not know (tanh^2, cases)
                continue
            if isinstance(back, sp.Basic) is False:
                continue
            back = back.subs(sp.Symbol("e"), sp.E)
            assert sp.simplify(back - plain) == 0, (tex, back, plain)
            checked += 1
            gradients += expr is not d.formula.body
        assert reads
    assert checked >= 4 and gradients >= 2


def test_html_is_self_contained_mathml(tmp_path):
    html = _doc(str(ROOT / "examples" / "lenet.nn")).html()
    assert "<math" in html and "http://www.w3.org/1998/Math/MathML" in html
    assert "<script" not in html and "http" not in html.replace("http://www.w3.org/1998/Math/MathML", "")
    text_outside_math = re.sub(r"<math.*?</math>", "", html, flags=re.S)
    assert "\\frac" not in text_outside_math and "\\sum" not in text_outside_math
    assert "$" not in re.sub(r"<pre>.*?</pre>", "", text_outside_math, flags=re.S)


def test_html_names_are_whole_tokens_and_gradients_fractions():
    """dense_2 is one token, not one <mi> a letter; a gradient is dL/d(name), no accent."""
    html = _doc(str(ROOT / "examples" / "xor.nn")).html()
    assert "<mtext>dense_2</mtext>" in html and "<mtext>dense_2.weight</mtext>" in html
    assert "&#x0005F;" not in html and "<mover" not in html
    assert re.search(r"<mfrac><mrow><mo>&#x02202;</mo><mi>L</mi></mrow><mrow><mo>&#x02202;</mo>"
                     r"<msub><mtext>dense_2</mtext>", html)


def test_jupyter_reprs():
    doc = _doc(ACTIVATIONS, "act.nn")
    assert doc._repr_html_().lstrip().startswith("<!DOCTYPE html>")
    assert doc._repr_markdown_().startswith("# Derivation")
    assert doc._repr_latex_().startswith("$$")


def test_cli_formats_and_stdout(tmp_path):
    model = ROOT / "examples" / "xor.nn"
    for suffix, marker in ((".tex", r"\documentclass"), (".md", "$$"), (".html", "<math")):
        out = tmp_path / f"xor{suffix}"
        subprocess.run([sys.executable, "-m", "nncc", "explain", str(model), "-o", str(out)], check=True)
        assert marker in out.read_text()
    forced = tmp_path / "doc.txt"
    subprocess.run([sys.executable, "-m", "nncc", "explain", str(model), "-o", str(forced), "--format", "md"],
                   check=True)
    assert forced.read_text().startswith("# Derivation")
    run = subprocess.run([sys.executable, "-m", "nncc", "explain", str(model)], capture_output=True, text=True,
                         check=True)
    assert run.stdout.startswith("# Derivation")
    bad = subprocess.run([sys.executable, "-m", "nncc", "explain", str(model), "-o", str(tmp_path / "x.doc")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
@pytest.mark.parametrize("example", ["nielsen", "lenet", "xor", "residual"])
def test_latex_compiles_with_pdflatex_within_the_margins(tmp_path, example):
    tex = tmp_path / f"{example}.tex"
    # from a long path, as in a clone somewhere deep: the path is in the text
    deep = tmp_path / "a_clone_of_the_project_somewhere" / "deep_in_a_home_folder" / "examples"
    deep.mkdir(parents=True)
    model = deep / f"{example}.nn"
    model.write_text((ROOT / "examples" / f"{example}.nn").read_text())
    tex.write_text(_doc(str(model)).latex())
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", tex.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:]
    assert (tmp_path / f"{example}.pdf").stat().st_size > 10_000
    log = (tmp_path / f"{example}.log").read_text(errors="replace")
    assert "Overfull \\hbox" not in log, re.findall(r"Overfull \\hbox.*\n.*", log)[:5]


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed")
def test_chromium_renders_the_math(tmp_path):
    """Laid out as mathematics: a fraction stands taller than a line of text."""
    page = tmp_path / "nielsen.html"
    probe = ("<script>const f = [...document.querySelectorAll('math')].find(m => m.querySelector('mfrac'));"
             "const p = document.querySelector('p');"
             "document.body.dataset.frac = f.getBoundingClientRect().height;"
             "document.body.dataset.line = parseFloat(getComputedStyle(p).lineHeight);"
             "document.body.dataset.mathml = f.querySelector('mfrac').getBoundingClientRect().height;</script>")
    page.write_text(_doc(str(ROOT / "examples" / "nielsen.nn")).html().replace("</body>", probe + "</body>"))
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,1400"]
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    subprocess.run([_chromium(), *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 5_000
    frac = float(re.search(r'data-frac="([0-9.]+)"', dom).group(1))
    line = float(re.search(r'data-line="([0-9.]+)"', dom).group(1))
    assert frac > 1.5 * line, f"a displayed fraction is {frac}px tall, a line {line}px: math not laid out"


def test_explain_of_a_missing_file_says_so():
    with pytest.raises(FileNotFoundError, match="missing.nn"):
        nncc.explain("missing.nn")


def test_formulas_with_negative_fractions_are_explained():
    # the width of -3/2 for breaking a formula into rows (a sympy comparison is no bool)
    doc = build(compile_source("fn f(z) = -1.5 * z + 0.25\ninput x: [3]\ntarget y: [2]\n"
                               "loss = quadratic(x |> dense(2) |> f, y)\n", "<fractions>"))
    assert r"\frac{3}{2}" in doc.markdown() or "1.5" in doc.markdown()
