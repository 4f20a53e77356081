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
from nncc.document import FormulaLatex, build
from nncc.naming import backward_anchor, forward_anchor

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.nn"))
ACTIVATIONS = """
input x: [3]
target y: [3]
a = x |> sigmoid
b = x |> tanh
c = x |> softplus
d = x |> exp
e = x |> silu
loss = quadratic(a + b + c + d + e, y)
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
    # the code shown under a step is a line of the generated module
    for st in steps:
        if st.code:
            assert st.code in module


def test_nielsen_shows_the_chapter_two_equations():
    doc = _doc(str(ROOT / "examples" / "nielsen.nn"))
    md = doc.markdown()
    tags = {st.tag for s in doc.sections for st in s.steps}
    assert {"BP1", "BP2", "BP3", "BP4"} <= tags
    assert r"\overline{\mathrm{dense\_2.weight}} = \overline{\mathrm{dense\_2}}^{\top} \, \mathrm{sigmoid\_1}" in md
    assert r"\sum_{\text{batch}} \overline{\mathrm{dense\_1}}" in md
    assert "In terms of the forward output" in md
    assert r"\delta_{i i'}" in md  # Jacobian entries keep their Kronecker deltas


def test_sigmoid_then_cross_entropy_fuses_to_a_minus_y():
    md = _doc(str(ROOT / "examples" / "xor.nn")).markdown()
    assert r"\left(\mathrm{p}_{b,i} - \mathrm{y}_{b,i}\right)" in md


def _plain(tex: str) -> str:
    """Tensor reads as plain symbols (\\mathrm{dense\\_1}_{b,i} -> dense1) for sympy's parser."""
    tex = re.sub(r"\\overline\{\\mathrm\{([^}]*)\}\}_\{[^}]*\}", lambda m: "g" + m.group(1).replace(r"\_", ""), tex)
    tex = re.sub(r"\\mathrm\{([^}]*)\}_\{[^}]*\}", lambda m: m.group(1).replace(r"\_", ""), tex)
    return tex.replace(r"\cdot", "*")


def test_elementwise_formulas_parse_back_to_the_derived_expressions():
    parse_latex = pytest.importorskip("sympy.parsing.latex").parse_latex
    compiled = compile_source(ACTIVATIONS, "act.nn")
    checked = 0
    for d in compiled.plan.derivations:
        if d.node.op.kind != "elementwise" or len(d.node.args) != 1:
            continue
        reads = {r: sp.Symbol(r.base.label.name.replace("_", "")) for r in d.formula.body.atoms(sp.Indexed)}
        candidates = [d.formula.body]
        for g in d.grads:
            candidates.append(g.backward)
        for expr in candidates:
            plain = expr.xreplace({r: sp.Symbol(r.base.label.name.replace("_", "")) for r in expr.atoms(sp.Indexed)})
            tex = _plain(FormulaLatex({}).doprint(expr))
            try:
                back = parse_latex(tex, backend="lark")
            except Exception:  # constructs the parser does not know (tanh^2, cases)
                continue
            if isinstance(back, sp.Basic) is False:
                continue
            back = back.subs(sp.Symbol("e"), sp.E)
            assert sp.simplify(back - plain) == 0, (tex, back, plain)
            checked += 1
        assert reads
    assert checked >= 4


def test_html_is_self_contained_mathml(tmp_path):
    html = _doc(str(ROOT / "examples" / "lenet.nn")).html()
    assert "<math" in html and "http://www.w3.org/1998/Math/MathML" in html
    assert "<script" not in html and "http" not in html.replace("http://www.w3.org/1998/Math/MathML", "")
    text_outside_math = re.sub(r"<math.*?</math>", "", html, flags=re.S)
    assert "\\frac" not in text_outside_math and "\\sum" not in text_outside_math
    assert "$" not in re.sub(r"<pre>.*?</pre>", "", text_outside_math, flags=re.S)


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
@pytest.mark.parametrize("example", ["nielsen", "lenet", "xor"])
def test_latex_compiles_with_pdflatex(tmp_path, example):
    tex = tmp_path / f"{example}.tex"
    tex.write_text(_doc(str(ROOT / "examples" / f"{example}.nn")).latex())
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", tex.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:]
    assert (tmp_path / f"{example}.pdf").stat().st_size > 10_000


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
