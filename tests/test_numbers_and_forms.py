"""Programs that once gave wrong numbers in one backend: numbers printed as C integers,
long decimals, overlapping and gapped affine outputs, constant subscripts, ReLU of NaN,
constants folded into float32 code, user text in generated files, deep chains.

Each is compared between numpy, C and an independent oracle (central differences in
float64, and PyTorch where it is installed).
"""
import json
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from nncc.api import compile_source, load_module
from nncc.backends.c.codegen import render_c_files, render_c_module
from nncc.literals import real_literal

CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler")

DENSE_3_2 = "input x: [3]\ntarget y: [2]\na = x |> dense(2)\n"

PROGRAMS = {
    "whole-number factor": DENSE_3_2 + "loss = 2 * quadratic(a, y)\n",
    "negated loss": DENSE_3_2 + "loss = -quadratic(a, y)\n",
    "combined losses": DENSE_3_2 + "loss = quadratic(a, y) - 3*mse(a, y)\n",
    "l1 by where": "fn l1(a[i], y[i]) = sum(i: where(a[i] > y[i], a[i] - y[i], y[i] - a[i]))\n"
                   + DENSE_3_2 + "loss = l1(a, y)\n",
    "label by where": "fn ce(z[i], y[j]) = logsumexp(i: z[i]) - sum(i: where(i == y[0], z[i], 0))\n"
                      "input x: [3]\ntarget y: [1]\na = x |> dense(4)\nloss = ce(a, y)\n",
    "gelu, long decimals": "fn gelu(z) = 0.5 * z * (1 + tanh(0.7978845608028654 * (z + 0.044715 * z^3)))\n"
                           "input x: [3]\ntarget y: [2]\na = x |> dense(2) |> gelu\nloss = quadratic(a, y)\n",
    "tiny constant": "fn f(z) = 1e-20 * z + 1e20 * z * 1e-21\n"
                     "input x: [3]\ntarget y: [2]\na = x |> dense(2) |> f\nloss = quadratic(a, y)\n",
    "overlapping affine output": "layer spread(x: [n]) {\n    param w: [3]\n    y[2*i + p] = w[p] * x[i]\n}\n"
                                 "input x: [4]\ntarget y: [9]\na = x |> dense(4) |> spread |> sigmoid\n"
                                 "loss = quadratic(a, y)\n",
    "gapped affine output": "layer gap(x: [n]) {\n    y[3*i] = x[i]\n}\n"
                            "input x: [4]\ntarget t: [10]\na = x |> dense(4) |> gap |> tanh\nloss = quadratic(a, t)\n",
    "tiled affine output": "layer up2(x: [h]) { y[2*i + a] = x[i] for a < 2 }\n"
                           "input x: [4]\ntarget y: [8]\na = x |> dense(4) |> up2 |> tanh\nloss = quadratic(a, y)\n",
    "constant subscripts": "layer sc(x: [n]) {\n    param a: [3]\n    y[i] = a[1] * x[i] + a[2] + x[i] * a[0]\n}\n"
                           "input x: [5]\ntarget y: [5]\nloss = quadratic(x |> sc, y)\n",
    "max over sums of a learned input": "layer maxmix(x: [n], m) {\n    param w: [m, n]\n"
                                        "    y[k] = max(j: sum(l: w[j, l] * x[l]) + x[k]) for k < n\n}\n"
                                        "input x: [3]\ntarget y: [3]\nloss = quadratic(x |> dense(3) |> maxmix(3), y)\n",
    "output constant along an axis": "layer lse(x: [n]) {\n    y[i] = logsumexp(j: x[j]) for i < 2\n}\n"
                                     "input x: [3]\ntarget y: [2]\nloss = quadratic(x |> dense(3) |> lse, y)\n",
    "constant output subscript": "layer as_rows(x: [n]) {\n    y[2, i] = x[i] for i < n\n}\n"
                                 "layer sq(x: [r, n]) {\n    y[i] = sum(j: x[j, i] * x[j, i]) + x[2, i]\n}\n"
                                 "input x: [3]\ntarget t: [3]\na = x |> dense(3) |> as_rows |> tanh |> sq\n"
                                 "loss = quadratic(a, t)\n",
    "long decimal in an invertible chain": "fn f(z) = exp(tanh(0.1 * z + 0.7978845608028654))\n"
                                           + DENSE_3_2 + "loss = quadratic(a |> f, y)\n",
    "two pools of one tensor": "input x: [2, 6, 5]\ntarget y0: [3]\ntarget y1: [6]\nh1 = x |> conv2d(3, 4)\n"
                               "h6 = h1 |> avgpool2d(2, stride=2) |> flatten\nh7 = h1 |> avgpool2d(1, stride=2) |> flatten\n"
                               "loss = binary_cross_entropy(sigmoid(h6), y0) + binary_cross_entropy(sigmoid(h7), y1)\n",
    "steep constant beside a small term": "fn l(a[i], y[i]) = sum(i: (a[i] - y[i])^2) / 2 + mean(i: tanh(1E+15 * (a[i] - y[i])))\n"
                                          "input x: [8]\ntarget y: [8]\nloss = l(x |> dense(8), y)\n",
    "constant that cancels once expanded": "fn l(a[i], y[i]) = sum(i: 1e24 * log(1 + 1e-24) / (1 + exp(tanh(a[i] - y[i]))))\n"
                                           "input x: [3]\ntarget y: [3]\nloss = l(x |> dense(3), y)\n",
    "option's coefficient beside a small term": "fn l(a[i], y[i], d = 1.4142135623730951) = "
                                                "d * sum(i: exp(-(a[i])^2) * tanh(1e30 * a[i]))\n"
                                                "input x: [3]\ntarget y: [3]\nloss = l(x |> dense(3), y)\n",
    "softmax weight of a large logit": "fn l(a[i], y[i]) = logsumexp(i: exp(tanh(sigmoid(y[i]))) + a[i])\n"
                                       "input x: [2]\ntarget y: [3]\nh = x |> dense(3)\n"
                                       "loss = l(h / 0.000001, y)\n",
    "constant folded into a coefficient": "fn l(a[i], y[i]) = sum(i: (a[i] - y[i])^2) / 2 "
                                          "+ sum(i: tanh(1e30 * ((a[i] - y[i]) * (a[i] - y[i]))))\n"
                                          "input x: [3]\ntarget y: [3]\nloss = l(x |> dense(3), y)\n",
    "logsumexp of a scaled difference": "fn l(a[i], y[i]) = logsumexp(i: (a[i] - y[i]) * 1e20 * 0.25)\n"
                                        "input x: [2]\ntarget y: [4]\nloss = l(x |> dense(4), y)\n",
    "a logsumexp times a number": "fn l(a[i], y[i], d = 1.5) = d * logsumexp(i: 0.1 * (a[i] - y[i]))\n"
                                  "input x: [3]\ntarget y: [3]\nloss = l(x |> dense(3), y)\n",
    "option's default times a steep difference": "fn l(a[i], y[i], d = 0.1) = d * max(i: tanh(1e12 * a[i]) - (a[i] + y[i]))\n"
                                                 "input x: [3]\ntarget y: [3]\nloss = l(x |> dense(3), y)\n",
    "a max's gradient computed inside its reader": "fn l(a[i], y[i]) = max(i: tanh(a[i]) - y[i])\n"
                                                   "input x: [3]\ntarget y: [1]\nh = exp(abs(x |> dense(1)))\n"
                                                   "loss = l(h, y)\n",
    "a large difference of two copies of one value": "input x: [2, 5, 5]\ntarget y0: [8]\ntarget y1: [9]\n"
                                                     "h1 = x |> conv2d(1, 5, padding=1)\nh3 = h1 |> conv2d(2, 1, stride=2) |> flatten\n"
                                                     "h4 = h1 |> flatten\nh5 = h1 |> flatten\n"
                                                     "loss = sum 0.044715 * quadratic(h3, y0) - 1e30 * quadratic(h4, y1) "
                                                     "+ 1e30 * quadratic(h5, y1)\n",
    "a sigmoid inside a max, fused into its gradient": "fn l(a[i], y[i]) = max(i: 2 * (a[i] - y[i]) * sigmoid(a[i] - y[i]))\n"
                                                        "input x: [3]\ntarget y: [3]\nh = x |> dense(2)\n"
                                                        "loss = l(concat(h |> dense(1), h), y) / 3\n",
    "a backward read past the ends": "layer reverse(x: [k]) {\n    y[i] = x[k - 1 - i + 2] for i < k\n}\n"
                                     "input x: [3]\ntarget y: [4]\nloss = quadratic(x |> dense(4) |> reverse, y)\n",
    "a constant subscript outside its array": "layer far(x: [n]) {\n    param w: [3]\n"
                                              "    y[i] = w[5] * x[i] + w[1] * x[i]\n}\n"
                                              "input x: [3]\ntarget y: [3]\nloss = quadratic(x |> dense(3) |> far, y)\n",
    "sums fused under thirty tanh": 'fn deepfn(z) = tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(tanh(z))))))))))))))))))))))))))))))\nnetwork g89063192\nlayer scaled_sum(x: [n], m) {\n    param w: [m]\n    param v: [m]\n    y[i] = x[i] * sum(j: w[j]) + sum(j: v[j] * v[j])\n}\nlayer flat2(x: [c, n]) {\n    y[ch*n + i] = x[ch, i]\n}\ninput u0: [2, 3]\ninput v1: [5]\ntarget y0: [2]\ntarget y1: [6]\nh1 = dense(v1, 2)\nh2 = log(1 + h1 * h1)\nh3 = h1 |> scaled_sum(1)\nh4 = u0 |> flat2\nloss = sum -(quadratic(log_softmax(deepfn(h3)), y0) - quadratic(log_softmax(h4), y1))\n',
    "constant call in a max": "fn l(a[i], y[i]) = max(i: a[i] - y[i] - sigmoid(1e-30))\n"
                              "input x: [3]\ntarget y: [3]\nloss = l(x |> dense(3), y)\n",
}


def _c_module(source, file="<test>.nn"):
    module = types.ModuleType("nncc_c_numbers")
    exec(compile(render_c_module(compile_source(source, file)), f"<c module {file}>", "exec"), module.__dict__)
    return module


def _data(module, dtype, batch=5, seed=0):
    rng = np.random.default_rng(seed)
    shapes = list(module.INPUT_SHAPES.values()) + list(module.TARGET_SHAPES.values())
    return [rng.uniform(-1, 1, (batch,) + s).astype(dtype) for s in shapes]


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_numpy_gradients_match_finite_differences(name):
    n = load_module(PROGRAMS[name], f"<{name}>")
    params = n.init_params(1, np.float64)
    arrays = _data(n, np.float64)
    _, grads = n.loss_and_grad(params, *arrays)
    rng = np.random.default_rng(3)
    v = {k: rng.standard_normal(p.shape) for k, p in params.items()}
    h = 1e-6
    fd = (n.loss({k: params[k] + h * v[k] for k in params}, *arrays)
          - n.loss({k: params[k] - h * v[k] for k in params}, *arrays)) / (2 * h)
    analytic = sum(float((grads[k] * v[k]).sum()) for k in params)
    assert abs(fd - analytic) <= 1e-7 * max(1.0, abs(fd)), (fd, analytic)


@needs_cc
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_c_gives_numpy_numbers(name, dtype, tol):
    n = load_module(PROGRAMS[name], f"<{name}>")
    c = _c_module(PROGRAMS[name], f"<{name}>")
    params = n.init_params(1, dtype)
    arrays = _data(n, dtype)
    inputs = arrays[:len(n.INPUT_SHAPES)]
    vn, gn = n.loss_and_grad(params, *arrays)
    vc, gc = c.loss_and_grad(params, *arrays)
    assert abs(vc - vn) <= tol * max(abs(vn), 1e-3)
    for k in gn:
        assert gn[k].dtype == gc[k].dtype == dtype, k
        assert _rel(gc[k], gn[k]) <= tol, k
    assert _rel(c.forward(params, *inputs), n.forward(params, *inputs)) <= tol


def test_overlapping_affine_output_is_pytorchs_transposed_convolution():
    torch = pytest.importorskip("torch")
    n = load_module(PROGRAMS["overlapping affine output"].replace("dense(4) |> ", ""), "<spread>")
    params = n.init_params(0, np.float64)
    x = np.random.default_rng(1).normal(size=(3, 4))
    want = torch.nn.functional.conv_transpose1d(torch.tensor(x)[:, None, :],
                                                torch.tensor(params["spread_1.w"])[None, None, :], stride=2)
    assert _rel(n.forward(params, x), torch.sigmoid(want[:, 0, :]).numpy()) <= 1e-15


def test_gapped_affine_output_is_zero_where_nothing_is_written():
    n = load_module("layer gap(x: [n]) {\n    y[3*i] = x[i]\n}\ninput x: [3]\ntarget t: [7]\n"
                    "a = x |> gap\nloss = quadratic(a, t)\n", "<gap>")
    x = np.arange(1.0, 7.0).reshape(2, 3)
    assert np.array_equal(n.forward({}, x), [[1, 0, 0, 2, 0, 0, 3], [4, 0, 0, 5, 0, 0, 6]])


@pytest.mark.parametrize("backend", ["numpy", pytest.param("c", marks=needs_cc)])
def test_relu_keeps_nan_as_pytorch_does(backend):
    src = "input x: [2]\ntarget y: [2]\na = x |> relu\nloss = quadratic(a, y)\n"
    m = load_module(src, "<relu>") if backend == "numpy" else _c_module(src, "<relu>")
    x = np.array([[np.nan, 1.0], [-2.0, 0.0]])
    out = m.forward({}, x)
    assert np.isnan(out[0, 0]) and out[0, 1] == 1 and out[1, 0] == 0 and out[1, 1] == 0
    assert np.isnan(m.loss({}, x, np.zeros((2, 2))))


def test_constant_calls_keep_float32():
    n = load_module(PROGRAMS["constant call in a max"], "<const>")
    params = n.init_params(0, np.float32)
    _, grads = n.loss_and_grad(params, *_data(n, np.float32))
    assert all(g.dtype == np.float32 for g in grads.values())


def test_real_literals_round_trip_and_refuse_what_float64_cannot_hold():
    import sympy as sp
    for value in ["0.7978845608028654", "1e-20", "1e30", "3.0000000000000004", "123456789012345678901234567890"]:
        assert float(real_literal(sp.Rational(value))) == float(value)
    assert real_literal(sp.Rational(1, 3)) == repr(1 / 3)
    with pytest.raises(NotImplementedError, match="beyond the range of float64"):
        real_literal(sp.Integer(10) ** 400)


@needs_cc
def test_c_prints_real_literals_never_integer_division(tmp_path):
    text = render_c_files(compile_source(PROGRAMS["whole-number factor"] + "\n", "<scaled>"), "float64")
    source = next(v for k, v in text.items() if k.endswith(".c"))
    assert "/batch" not in source.replace(" ", "") and "(real)batch" in source


HOSTILE = ['a"""; __import__("os").system("touch PWNED"); """b.nn',
           "x*/ int injected_global = 42; /*.nn",
           "back\\slash\n\"newline.nn",
           "my-model.nn",
           "9lives.nn"]


@pytest.mark.parametrize("file", HOSTILE)
def test_a_file_name_reaches_generated_python_only_as_an_escaped_literal(file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = compile_source(DENSE_3_2 + "loss = quadratic(a, y)\n", file).numpy_module()
    assert json.dumps(file) in text
    module = types.ModuleType("hostile")
    exec(compile(text, "<hostile>", "exec"), module.__dict__)
    assert not (tmp_path / "PWNED").exists()
    assert module.__doc__.count(file) == 1


@needs_cc
@pytest.mark.parametrize("file", HOSTILE)
def test_a_file_name_reaches_generated_c_only_inside_a_comment(file, tmp_path):
    files = render_c_files(compile_source(DENSE_3_2 + "loss = quadratic(a, y)\n", file), "float32")
    for name, text in files.items():
        assert name.replace(".", "").replace("_", "").isalnum(), name  # a C identifier, and the file name
        (tmp_path / name).write_text(text)
    # C's own rule: a comment ends at the first */, so what is left after removing them is code
    code = [re.sub(r"/\*.*?\*/", " ", t, flags=re.S) for t in files.values()]
    assert not any("= 42" in t for t in code)
    c = next(n for n in files if n.endswith(".c"))
    subprocess.run([CC, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c", c, "-o", "model.o"],
                   cwd=tmp_path, check=True, capture_output=True)
    probe = tmp_path / "probe.c"
    probe.write_text(f'#include "{c[:-2]}.h"\nvoid injected_global(void) {{}}\nint main(void) {{ return 0; }}\n')
    subprocess.run([CC, "-std=c99", "-Wall", "-Werror", "-c", str(probe), "-o", str(tmp_path / "probe.o")],
                   cwd=tmp_path, check=True, capture_output=True)


def test_deep_chains_compile_to_modules_that_import_and_differentiate():
    layers = "".join(f"h{k + 1} = h{k} |> dense(3) |> tanh\n" for k in range(1, 60))
    src = "input x: [3]\ntarget y: [2]\nh1 = x |> dense(3) |> tanh\n" + layers + "loss = quadratic(h60 |> dense(2), y)\n"
    n = load_module(src, "<deep>")
    params = n.init_params(0, np.float64)
    arrays = _data(n, np.float64, batch=2)
    _, grads = n.loss_and_grad(params, *arrays)
    name = "dense_1.weight"  # the far end of the chain: 60 layers of chain rule
    v = np.random.default_rng(0).standard_normal(params[name].shape)
    h = 1e-6
    fd = (n.loss({**params, name: params[name] + h * v}, *arrays)
          - n.loss({**params, name: params[name] - h * v}, *arrays)) / (2 * h)
    assert abs(fd - float((grads[name] * v).sum())) <= 1e-6 * max(abs(fd), 1e-8)


def test_a_long_pipe_of_elementwise_steps_stays_within_pythons_nesting_limit():
    n = load_module("input x: [2]\ntarget y: [2]\nh = x" + " |> tanh" * 300 + "\nloss = quadratic(h, y)\n", "<pipe>")
    x = np.full((1, 2), 0.5)
    want = x.copy()
    for _ in range(300):
        want = np.tanh(want)
    assert _rel(n.forward({}, x), want) <= 1e-15


def test_a_long_sum_is_explained_in_linear_work():
    """The matrix form of a generated line renders each operand once (it was twice per
    level of the expression tree: 2^22 visits here)."""
    from nncc.explanation.document import build
    src = "input x: [3]\ntarget y: [3]\nh = x |> dense(3)\na = " + " + ".join(["h"] * 22) + \
          "\nloss = quadratic(a, y)\n"
    text = build(compile_source(src, "<sum>")).render("md")
    assert "d_dense_1" in text or "dense_1" in text


def test_a_long_pipe_is_explained_with_formulas_of_bounded_size():
    """A generated line fuses up to 32 steps of a pipe; the formula it evaluates for a step,
    composed of the steps before it, was a where() nested that deep for each of 300 steps
    (megabytes of LaTeX, half a minute of latex2mathml): beyond a size it is left out."""
    import sympy as sp
    from nncc.explanation.document import COMPOSED_LIMIT, build
    doc = build(compile_source("input x: [2]\ntarget y: [2]\nh = x |> dense(2)" + " |> relu" * 300 + "\nloss = quadratic(h, y)\n",
                               "<pipe>"))
    composed = [f.rhs for sec in doc.sections for st in getattr(sec, "steps", []) for f in st.formulas
                if f.kind == "composed"]
    assert composed and all(sum(1 for _ in sp.preorder_traversal(e)) <= COMPOSED_LIMIT for e in composed)


def _run_cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "nncc", *args], cwd=cwd, capture_output=True, text=True)


def test_an_unsupported_form_is_refused_at_the_layer_that_uses_it(tmp_path):
    (tmp_path / "three.nn").write_text(
        "layer three(x: [n], k) {\n    param w: [k]\n    y[i] = sum(p, q: w[p] * w[q] * x[i + p + q]) for i < n - 2*k + 2\n}\n"
        "input x: [8]\ntarget y: [6]\nloss = quadratic(x |> three(2), y)\n")
    r = _run_cli(["three.nn", "-o", "three.py"], tmp_path)
    assert r.returncode == 1 and r.stderr.startswith("three.nn:7:23: error: nncc cannot generate code for three_1")
    assert "hint:" in r.stderr and not (tmp_path / "three.py").exists()


def test_carriage_returns_before_the_end_of_a_line_end_it(tmp_path):
    (tmp_path / "cr.nn").write_bytes(b"input x: [3]\r  \ntarget y: [2]\r\r\na = x |> dense(2)\t\r\nloss = quadratic(a, y)\r")
    assert _run_cli(["cr.nn", "-o", "cr.py"], tmp_path).returncode == 0


def test_paths_in_messages_are_escaped(tmp_path):
    r = _run_cli(["missing\x1b[31m\nname.nn"], tmp_path)
    assert r.returncode == 1 and "\x1b" not in r.stderr and r.stderr.count("\n") == 1


def test_a_folder_is_no_module_file(tmp_path):
    (tmp_path / "m.nn").write_text(DENSE_3_2 + "loss = quadratic(a, y)\n")
    r = _run_cli(["m.nn", "-o", "newdir/"], tmp_path)
    assert r.returncode == 1 and "directory" in r.stderr and not (tmp_path / "newdir").exists()


def test_explain_is_the_subcommand_even_beside_a_file_called_explain(tmp_path):
    (tmp_path / "explain").write_text("")
    (tmp_path / "m.nn").write_text(DENSE_3_2 + "loss = quadratic(a, y)\n")
    r = _run_cli(["explain", "m.nn", "-o", "m.md"], tmp_path)
    assert r.returncode == 0 and (tmp_path / "m.md").exists()
