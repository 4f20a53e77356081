"""The C backend: same API and numbers as the numpy module, strict C99, clean under sanitizers."""
import gc
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from nncc.api import compile_source, load_module
from nncc.backends.c.codegen import render_c_files, render_c_module

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.nn"))
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler")

# networks beyond the examples: every prelude operator family and user definitions
EXTRA = {
    "activations": """
input x: [5]
target y: [3]
h = x |> dense(6) |> softplus |> dense(6) |> silu |> dense(6) |> elu(alpha=0.5)
g = h |> leaky_relu(slope=0.1) |> dense(6) |> abs
k = sqrt(g + 1) + log(g + 2) - exp(-g) + identity(g) / 3
loss = mse(k |> dense(3), y) + quadratic(softmax(k |> dense(3)), y)
""",
    "losses": """
input x: [4]
target y: [3]
z = x |> dense(3)
loss = binary_cross_entropy(sigmoid(z), y) + softmax_cross_entropy(z, y) + quadratic(log_softmax(z), y)
""",
    "windows": """
input x: [2, 7, 6]
target y: [3]
h = x |> conv2d(3, 3, stride=2, padding=1) |> relu |> maxpool2d(2, stride=1)
g = h |> conv2d(2, 2, padding=2) |> tanh |> avgpool2d(2)
z = g |> flatten |> dense(3)
loss = softmax_cross_entropy(z, y)
""",
    "user": """
fn swish(z) = z * sigmoid(z)
fn cubic(a[i], y[i]) = sum(i: abs(a[i] - y[i])^3) / 3
layer bilinear(u: [m], v: [p], n) {
    param weight: [n, m, p]
    param bias:   [n]
    y[i] = sum(j, k: u[j] * weight[i, j, k] * v[k]) + bias[i]
}
layer conv1d(x: [c, n], out, kernel, stride = 1) {
    param weight: [out, c, kernel]
    y[o, i] = sum(ci, p: weight[o, ci, p] * x[ci, i*stride + p]) for i < (n - kernel) / stride + 1
}
layer flat2(x: [c, n]) {
    y[ch*n + i] = x[ch, i]
}
input u: [3]
input v: [2, 9]
target y: [2]
w = v |> conv1d(2, 3, stride=2)
z = bilinear(u, flat2(concat(w, w)), 4) |> swish |> dense(2)
loss = cubic(z, y)
""",
    # a max over a sum: the gradient's index must not reach the inner sum's own
    "max-of-sums": """
layer mn(x: [n], m) {
    param w: [m, n]
    y[k] = max(j: sum(l: w[j, l] * x[l]) + x[k]) for k < n
}
input x: [5]
target y: [5]
loss = quadratic(x |> mn(3), y)
""",
    # a where() whose branches are sums: its condition depends on the batch index, so
    # in the weight gradient it stays inside the sum over the batch
    "where-of-sums": """
layer ws(x: [n]) {
    param w: [n, n]
    y[i] = where(x[i] > 0, sum(j: w[i, j] * x[j]), sum(j: w[i, j] * x[j] * x[j]))
}
input x: [4]
target y: [4]
loss = quadratic(x |> ws |> tanh |> ws, y)
""",
    # a reduction with no free index, and a sum whose terms read different axes
    "scalar-sums": """
layer sc(x: [n], m) {
    param w: [m]
    param v: [m]
    y[i] = x[i] * sum(j: w[j]) + sum(j: v[j] * v[j])
}
layer mixed(x: [a, c]) {
    param w: [a, c, 6]
    y[i, k] = sum(j: w[j, k, i] * x[j, k] + w[j, k, i]) for i < 6, k < 2
}
fn squares(a[i, k], t[i, k]) = sum(i, k: (a[i, k] - t[i, k])^2)
input x: [5]
input u: [7, 2]
target y: [5]
target t: [6, 2]
loss = quadratic(sc(x, 20), y) + squares(mixed(u), t)
""",
    # shifted, cropped and strided reads (zeros past the end) and a pool with its
    # offsets' range left to the layer's kernel
    "shifts": """
layer diff(x: [n]) {
    y[i] = x[i + 1] - x[i] for i < n - 1
}
layer pairs(x: [n]) {
    y[i] = x[2*i] * x[2*i + 1] - x[i + 3] for i < n / 2 + 1
}
layer pool(x: [c, h, w], kernel, stride = kernel) {
    y[ch, i, j] = max(p, q: x[ch, i*stride + p, j*stride + q])
        for i < (h - kernel) / stride + 1, j < (w - kernel) / stride + 1
}
input x: [4]
input u: [2, 7, 7]
target y: [13]
target t: [18]
h = x |> dense(9)
a = concat(h |> diff, pairs(h))
loss = quadratic(a, y) + mse(u |> pool(3, stride=2) |> flatten, t)
""",
    # a constant subscript, a fn option inside a sum, one tensor for two arguments
    "constants": """
layer prelu(x: [k]) {
    param a: [1]
    y[i] = where(x[i] > 0, x[i], a[0] * x[i])
}
fn huber(a[i], y[i], d = 1) = sum(i: where(abs(a[i] - y[i]) < d, 0.5 * (a[i] - y[i])^2, d * (abs(a[i] - y[i]) - 0.5 * d)))
fn smaller(a[i], b[i]) = sum(i: min(a[i], b[i]))
input x: [4]
target y: [3]
h = x |> dense(3) |> prelu
loss = sum 0.5 * huber(h, y, d=0.5) + smaller(h, h) + quadratic(2 ^ h, y)
""",
    "causal": """
layer causal(x: [c, w], kernel) {
    param weight: [c, kernel]
    y[i] = sum(ci, p: weight[ci, p] * x[ci, i - p]) for i < w
}
input u: [2, 6]
target y: [6]
loss = quadratic(u |> causal(3) |> tanh, y)
""",
    "reversal": """
layer reverse(x: [k]) {
    y[i] = x[k - 1 - i] for i < k
}
input x: [3]
target y: [4]
h = x |> dense(4)
loss = quadratic(reverse(h) * h, y)
""",
}


def _programs():
    out = [(p.stem, p.read_text(), f"examples/{p.name}") for p in EXAMPLES]
    out += [(name, src, f"<{name}>") for name, src in EXTRA.items()]
    return out


PROGRAMS = _programs()


def _c_module(source, file, extra_flags=()):
    text = render_c_module(compile_source(source, file))
    if extra_flags:
        default = '_COMPILE_ARGS = ["-O3", "-fno-wrapv"]'
        assert default in text
        text = text.replace(default, f"_COMPILE_ARGS = {['-O3', '-fno-wrapv', *extra_flags]!r}")
    module = types.ModuleType("nncc_c_test")
    exec(compile(text, f"<c module {file}>", "exec"), module.__dict__)
    return module


def _data(module, dtype, batch=5, seed=0):
    rng = np.random.default_rng(seed)
    shapes = list(module.INPUT_SHAPES.values()) + list(module.TARGET_SHAPES.values())
    return [rng.uniform(0.05, 0.95, (batch,) + s).astype(dtype) for s in shapes]


def _worst(a, b):
    scale = max(np.max(np.abs(b)), 1e-30)
    return float(np.max(np.abs(a - b)) / scale)


def _has_avx2():
    try:
        return CC is not None and " avx2 " in Path("/proc/cpuinfo").read_text() + " "
    except OSError:
        return False


@pytest.mark.skipif(not _has_avx2(), reason="no C compiler, or a CPU without AVX2")
@pytest.mark.parametrize("name,source,file", PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_c_agrees_with_numpy_when_vectorised_with_avx2(name, source, file):
    """-O3 -mavx2 vectorises with masked loads; gcc 12.2 then miscompiled `c ? g[k] : 0`
    over a loop: where() is emitted as a select of two evaluated values, and this keeps
    the whole C honest under those flags."""
    c = _c_module(source, file, ["-mavx2", "-mfma"])
    n = load_module(source, file)
    params = n.init_params(0, np.float64)
    arrays = _data(n, np.float64, batch=7)
    vc, gc = c.loss_and_grad(params, *arrays)
    vn, gn = n.loss_and_grad(params, *arrays)
    assert abs(vc - vn) <= 1e-12 * abs(vn)
    for k in gn:
        assert _worst(gc[k], gn[k]) <= 1e-12, k


@needs_cc
@pytest.mark.parametrize("name,source,file", PROGRAMS, ids=[p[0] for p in PROGRAMS])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)], ids=["float64", "float32"])
def test_c_agrees_with_numpy(name, source, file, dtype, tol):
    c = _c_module(source, file)
    n = load_module(source, file)
    params = n.init_params(0, dtype)
    assert all(np.array_equal(params[k], v) for k, v in c.init_params(0, dtype).items())
    arrays = _data(n, dtype)
    inputs = arrays[:len(n.INPUT_SHAPES)]
    vc, gc = c.loss_and_grad(params, *arrays)
    vn, gn = n.loss_and_grad(params, *arrays)
    assert abs(vc - vn) <= tol * abs(vn)
    assert set(gc) == set(gn)
    for k in gn:
        assert gc[k].dtype == dtype and gc[k].shape == gn[k].shape
        assert _worst(gc[k], gn[k]) <= tol, k
    out_c, out_n = c.forward(params, *inputs), n.forward(params, *inputs)
    assert out_c.dtype == dtype and _worst(out_c, out_n) <= tol
    assert abs(c.loss(params, *arrays) - vn) <= tol * abs(vn)
    before = {k: v.copy() for k, v in params.items()}
    assert abs(c.sgd_step(params, *arrays, lr=0.1) - vn) <= tol * abs(vn)
    for k in params:
        assert _worst(params[k], before[k] - np.asarray(0.1, dtype) * gn[k]) <= 10 * tol


@needs_cc
@pytest.mark.parametrize("name,source,file", PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_c_gradients_match_finite_differences(name, source, file):
    c = _c_module(source, file)
    params = c.init_params(1, np.float64)
    arrays = _data(c, np.float64, batch=3, seed=1)
    _, grads = c.loss_and_grad(params, *arrays)
    rng = np.random.default_rng(2)
    direction = {k: rng.normal(size=v.shape) for k, v in params.items()}
    h = 1e-6

    def at(t):
        return c.loss({k: params[k] + t * direction[k] for k in params}, *arrays)

    fd = (at(h) - at(-h)) / (2 * h)
    analytic = sum(float((grads[k] * direction[k]).sum()) for k in params)
    assert abs(fd - analytic) <= 1e-5 * max(1.0, abs(fd))


@needs_cc
@pytest.mark.parametrize("how", ["own-views", "plain-dict", "swapped-views", "replaced-entry", "dropped-view",
                                 "fortran-inputs"])
def test_sgd_step_updates_whatever_params_it_is_given(how):
    # init_params of the C module hands out views of one flat array that the C code
    # updates in place (the calls' fast path knows them by identity); any other dict of
    # arrays, and inputs the C code cannot read as they lie, must work exactly the same
    source = "input x: [3]\ntarget y: [3]\nz = x |> dense(3) |> tanh |> dense(3)\nloss = quadratic(z, y)\n"
    c, n = _c_module(source, "<swap>"), load_module(source, "<swap>")
    params = c.init_params(1, np.float64)
    if how == "plain-dict":
        params = {k: v.copy() for k, v in params.items()}
    elif how == "swapped-views":
        params["dense_1.weight"], params["dense_2.weight"] = params["dense_2.weight"], params["dense_1.weight"]
    elif how == "replaced-entry":
        params["dense_2.bias"] = np.full(3, 0.25)
    elif how == "dropped-view":  # its successor may even get its id
        del params["dense_2.bias"]
        gc.collect()
        params["dense_2.bias"] = np.full(3, 0.25)
    expected = {k: v.copy() for k, v in params.items()}
    arrays = _data(n, np.float64)
    if how == "fortran-inputs":
        arrays = [np.asfortranarray(a) for a in arrays]
        assert not arrays[0].flags.c_contiguous
    value = n.sgd_step(expected, *arrays, lr=0.5)
    assert c.sgd_step(params, *arrays, lr=0.5) == pytest.approx(value, rel=1e-13)
    for k in expected:
        assert _worst(params[k], expected[k]) <= 1e-13, k
    _, grads = c.loss_and_grad(params, *arrays)
    _, reference = n.loss_and_grad(expected, *arrays)
    for k in reference:
        assert _worst(grads[k], reference[k]) <= 1e-13, k


@needs_cc
def test_c_max_pool_treats_nan_as_numpy_and_torch_do():
    source = "input x: [1, 4, 4]\ntarget y: [4]\nz = x |> maxpool2d(2) |> flatten\nloss = sum mse(z, y)\n"
    c, n = _c_module(source, "<nan>"), load_module(source, "<nan>")
    x = np.arange(32, dtype=float).reshape(2, 1, 4, 4) % 3
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = x[1, 0, 3, 3] = np.nan
    np.testing.assert_array_equal(c.forward({}, x), n.forward({}, x))
    lifted = "layer lift(x: [c, h, w]) {\n    param shift: [c, h, w] init zeros\n" \
             "    y[ch, i, j] = x[ch, i, j] + shift[ch, i, j]\n}\n" + \
        source.replace("z = x |>", "z = x |> lift |>")
    c, n = _c_module(lifted, "<nan>"), load_module(lifted, "<nan>")
    params, y = n.init_params(0, np.float64), np.zeros((2, 4))
    np.testing.assert_array_equal(c.loss_and_grad(params, x, y)[1]["lift_1.shift"],
                                  n.loss_and_grad(params, x, y)[1]["lift_1.shift"])


def test_c_module_says_what_is_missing_without_a_c_compiler(tmp_path):
    module = tmp_path / "xor_c.py"
    module.write_text(render_c_module(compile_source((ROOT / "examples" / "xor.nn").read_text(), "xor.nn")))
    env = dict(os.environ, CC=str(tmp_path / "no-such-cc"), NNCC_CACHE=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, "-c", "import xor_c"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode != 0
    assert "ImportError: could not build the C code of xor" in run.stderr
    assert "it needs a C compiler" in run.stderr


@needs_cc
def test_sgd_step_respects_read_only_parameters():
    source = "input x: [3]\ntarget y: [3]\nz = x |> dense(3)\nloss = quadratic(z, y)\n"
    c, n = _c_module(source, "<ro>"), load_module(source, "<ro>")
    arrays = _data(n, np.float64)
    for module in (n, c):
        params = c.init_params(1, np.float64)
        params["dense_1.weight"].flags.writeable = False
        before = params["dense_1.weight"].copy()
        with pytest.raises(ValueError, match="read-only"):
            module.sgd_step(params, *arrays, lr=0.5)
        np.testing.assert_array_equal(params["dense_1.weight"], before)


@needs_cc
def test_c_module_rejects_bad_arguments():
    c = _c_module((ROOT / "examples" / "xor.nn").read_text(), "examples/xor.nn")
    p = c.init_params(0)
    with pytest.raises(ValueError, match="'x' must have shape"):
        c.loss(p, np.ones((3, 3), np.float32), np.ones((3, 1), np.float32))
    with pytest.raises(ValueError, match="float32 or float64"):
        c.loss(p, np.ones((3, 2)), np.ones((3, 1), np.float32))


def _compilers():
    return [cc for cc in ("gcc", "clang") if shutil.which(cc)]


@pytest.mark.parametrize("cc", _compilers() or [pytest.param("none", marks=pytest.mark.skip("no gcc or clang"))])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_generated_c_is_strict_c99(tmp_path, cc, dtype):
    for name, source, file in PROGRAMS:
        for fname, text in render_c_files(compile_source(source, file), dtype).items():
            (tmp_path / fname).write_text(text)
        c_file = tmp_path / f"{compile_source(source, file).graph.name}.c"
        subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-c", str(c_file),
                        "-o", str(tmp_path / "out.o")], check=True)


SANITIZED_MAIN = r"""
#include <stdio.h>
#include <stdlib.h>
#include "NAME.h"
int main(void) {
    int batch = BATCH;
    NAME_real *params = malloc(UPPER_PARAM_BYTES + 1), *grad = malloc(UPPER_PARAM_BYTES + 1);
    NAME_real *work = malloc(UPPER_WORKSPACE_BYTES(batch));
    NAME_real *x = malloc(sizeof(NAME_real) * batch * SIZE_IN);
    NAME_real *y = malloc(sizeof(NAME_real) * batch * SIZE_TARGET + 1);
    NAME_real *out = malloc(sizeof(NAME_real) * batch * UPPER_OUTPUT_SIZE);
    for (int k = 0; k < batch * SIZE_IN; k++) x[k] = (NAME_real)((k % 7) / 7.0);
    for (int k = 0; k < batch * SIZE_TARGET; k++) y[k] = (NAME_real)((k % 3) == 0);
    NAME_init_params(params, 3);
    NAME_real first = NAME_sgd_step(params, ARGS, batch, (NAME_real)0.1, work);
    NAME_real second = NAME_loss_and_grad(params, ARGS, batch, grad, work);
    NAME_forward(params, x, out, batch, work);
    printf("%g %g %g\n", (double)first, (double)second, (double)out[0]);
    free(params); free(grad); free(work); free(x); free(y); free(out);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("clang") is None, reason="no gcc or clang")
@pytest.mark.parametrize("example,inp,target,batch", [("lenet", "X", "Y", 3), ("residual", "X", "Y", 3),
                                                     ("xor", "X", "Y", 3), ("nielsen", "X", "Y", 3),
                                                     ("nielsen", "X", "Y", 9)])  # 9: the product's blocked path
def test_c_runs_clean_under_address_and_undefined_behaviour_sanitizers(tmp_path, example, inp, target, batch):
    cc = shutil.which("gcc") or shutil.which("clang")
    compiled = compile_source((ROOT / "examples" / f"{example}.nn").read_text(), f"examples/{example}.nn")
    for fname, text in render_c_files(compiled, "float32").items():
        (tmp_path / fname).write_text(text)
    upper = example.upper()
    main = (SANITIZED_MAIN.replace("SIZE_IN", f"{upper}_{inp}_SIZE").replace("SIZE_TARGET", f"{upper}_{target}_SIZE")
            .replace("UPPER", upper).replace("ARGS", "x, y").replace("NAME", example).replace("BATCH", str(batch)))
    (tmp_path / "main.c").write_text(main)
    exe = tmp_path / "main"
    build = subprocess.run([cc, "-std=c99", "-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                            "-fno-omit-frame-pointer", "-o", str(exe), str(tmp_path / "main.c"),
                            str(tmp_path / f"{example}.c"), "-lm"], capture_output=True, text=True)
    if build.returncode != 0 and "sanitize" in build.stderr:
        pytest.skip(f"this compiler cannot build with sanitizers: {build.stderr[-200:]}")
    assert build.returncode == 0, build.stderr
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1", UBSAN_OPTIONS="print_stacktrace=1")
    run = subprocess.run([str(exe)], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "runtime error" not in run.stderr and "AddressSanitizer" not in run.stderr
    first, second, _ = map(float, run.stdout.split())
    assert np.isfinite(first) and np.isfinite(second)


@pytest.mark.skipif(shutil.which("make") is None or CC is None, reason="needs make and a C compiler")
def test_embedding_example_trains_xor_without_python(tmp_path):
    work = tmp_path / "c"
    shutil.copytree(ROOT / "examples" / "c", work)
    run = subprocess.run(["make", "-s", "run", f"GENERATED={ROOT / 'generated' / 'c'}"], cwd=work,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    last_loss = [line for line in run.stdout.splitlines() if line.startswith("step")][-1]
    assert float(last_loss.split()[-1]) < 0.05
    assert "xor(0,1)=0.99" in run.stdout or "xor(0,1)=1.00" in run.stdout


def test_cli_writes_c_sources_and_module(tmp_path):
    model = ROOT / "examples" / "xor.nn"
    out_dir = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "nncc", str(model), "--backend", "c", "-o", f"{out_dir}/",
                    "--dtype", "float64"], check=True)
    assert "typedef double xor_real;" in (out_dir / "xor.h").read_text()
    assert (out_dir / "xor.c").exists()
    subprocess.run([sys.executable, "-m", "nncc", str(model), "--backend", "c", "-o", str(tmp_path / "m.py")],
                   check=True)
    assert "cffi" in (tmp_path / "m.py").read_text()


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_arrays_in_non_native_byte_order_are_refused_not_misread():
    # the C code reads the bytes as they lie: big-endian float32 would be read as garbage
    module = _c_module((ROOT / "examples" / "xor.nn").read_text(), "xor.nn")
    params = module.init_params(0, np.float32)
    x, y = _data(module, np.float32, batch=3)
    swapped = x.astype(x.dtype.newbyteorder())
    with pytest.raises(ValueError, match="non-native byte order"):
        module.loss(params, swapped, y)
    assert module.loss(params, swapped.astype(np.float32), y) == module.loss(params, x, y)


@needs_cc
def test_a_samples_numbers_do_not_depend_on_the_batch_it_is_in():
    # dense layers take four samples at a time and the rest one by one, each sample's
    # sums in the same order: a sample gives the same bits at any batch size and place
    module = _c_module((ROOT / "examples" / "nielsen.nn").read_text(), "nielsen.nn")
    params = module.init_params(0, np.float64)
    x, = _data(module, np.float64, batch=7)[:1]
    whole = module.forward(params, x)
    for k in range(7):
        np.testing.assert_array_equal(module.forward(params, x[k:k + 1])[0], whole[k])
    assert "bb_" in render_c_files(compile_source((ROOT / "examples" / "nielsen.nn").read_text(),
                                                  "nielsen.nn"))["nielsen.c"]  # the blocked loops are there


@needs_cc
def test_two_threads_calling_the_module_get_their_own_numbers():
    # the workspace and sgd_step's gradient are kept between calls, one set per thread
    import threading
    module = _c_module((ROOT / "examples" / "nielsen.nn").read_text(), "nielsen.nn")
    runs = {k: (module.init_params(k, np.float64), _data(module, np.float64, batch=3 + 2 * k, seed=k))
            for k in range(2)}
    expected = {}
    for k, (params, data) in runs.items():
        p = {n: v.copy() for n, v in params.items()}
        expected[k] = [module.loss_and_grad(p, *data)[0]] + [module.sgd_step(p, *data, lr=0.1) for _ in range(100)]
    got, errors = {}, []

    def run(k):
        try:
            params, data = runs[k]
            got[k] = [module.loss_and_grad(params, *data)[0]] + [module.sgd_step(params, *data, lr=0.1)
                                                                  for _ in range(100)]
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(k,)) for k in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == expected
