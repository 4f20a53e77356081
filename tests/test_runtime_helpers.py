"""The runtime helpers of generated code (compiler/backends/numpy/runtime.py and
compiler/backends/c/runtime.c), tested as the functions they are, and copied verbatim
into the outputs that call them."""
from __future__ import annotations

import inspect
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from nncc.api import compile_source
from nncc.backends.numpy.module import helper_source
from nncc.backends.numpy import runtime as h

RNG = np.random.default_rng(7)


def test_erf_is_within_five_units_in_the_last_place():
    x = np.concatenate([np.linspace(-8, 8, 160_001), np.logspace(-300, 1, 3000), -np.logspace(-300, 1, 3000)])
    want = np.array([math.erf(v) for v in x])
    ulps = np.abs(h._erf(x) - want) / np.spacing(np.maximum(np.abs(want), np.finfo(np.float64).tiny))
    assert ulps.max() <= 5, x[ulps.argmax()]
    special = h._erf(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0]))
    assert np.isnan(special[0]) and list(special[1:3]) == [1.0, -1.0]
    assert list(np.signbit(special[3:])) == [False, True]
    small = h._erf(x.astype(np.float32))
    assert small.dtype == np.float32 and np.abs(small - want).max() <= 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_keeps_dtype_and_shape_and_nan_and_is_within_four_ulps(dtype):
    z = np.concatenate([np.linspace(-50, 50, 2001), [np.nan, np.inf, -np.inf, 0.0, -0.0]]).astype(dtype)
    got = h._sigmoid(z)
    assert got.dtype == dtype and got.shape == z.shape
    want = np.array([1 / (1 + math.exp(-v)) if abs(v) < 700 else float(v > 0) for v in z[:-5].astype(float)])
    assert np.all(np.abs(got[:-5] - want) <= 4 * np.spacing(want.astype(dtype)).astype(float))
    assert np.isnan(got[-5]) and list(got[-4:]) == [1.0, 0.0, 0.5, 0.5]
    scalar = h._sigmoid(np.array(-2.0, dtype))  # a 0-d array stays one
    assert scalar.shape == () and scalar.dtype == dtype
    assert h._sigmoid(z[::-2]).shape == z[::-2].shape  # a strided view is read, not written


def test_sigmoid_and_logsumexp_stay_finite_and_accurate_far_out():
    z = np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0])
    assert np.allclose(h._sigmoid(z), [0.0, 1 / (1 + math.exp(40)), 0.5, 1 / (1 + math.exp(-40)), 1.0], rtol=1e-15)
    a = np.array([[1000.0, 999.0], [-1000.0, -1001.0]])
    assert np.allclose(h._logsumexp(a, 1), [1000 + math.log1p(math.exp(-1)), -1000 + math.log1p(math.exp(-1))],
                       rtol=1e-15)
    with np.errstate(all="raise"):  # log(0) is clamped without a warning
        assert list(h._clamped_log(np.array([0.0, 1.0]), -100)) == [-100.0, 0.0]


WINDOWS = [  # (axis, start, stride, n, k[, dilation]), in the forms the lowering writes
    [(1, 0, 1, 4, 3)],
    [(1, -1, 2, 3, 3)],  # padding and a stride
    [(1, 0, 1, 3, 2), (2, -1, 1, 4, 3)],  # two axes, one padded
    [(2, 3, -1, 4, 1)],  # read backwards
    [(1, -2, 2, 3, 3, 2)],  # stride and dilation, padded
    [(1, 0, 1, 2, 2, 3), (2, 4, -1, 3, 2, -2)],  # dilated forwards and backwards
]


@pytest.mark.parametrize("windows", WINDOWS)
def test_patches_reads_zeros_outside_and_unpatches_is_its_adjoint(windows):
    a = RNG.standard_normal((2, 6, 5))
    p = h._patches(a, windows)
    # entry by entry: a[start + stride*i + q], zero outside
    for index in np.ndindex(*p.shape):
        src = list(index[:a.ndim])
        for (axis, start, stride, n, k, *dilation), q in zip(windows, index[a.ndim:]):
            src[axis] = start + stride * index[axis] + (dilation[0] if dilation else 1) * q
        inside = all(0 <= s < n for s, n in zip(src, a.shape))
        assert p[index] == (a[tuple(src)] if inside else 0.0)
    g = RNG.standard_normal(p.shape)
    assert np.isclose((p * g).sum(), (a * h._unpatches(g, a.shape, windows)).sum(), rtol=1e-13)


@pytest.mark.parametrize("windows", WINDOWS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_im2col_gathers_exactly_the_patches_in_the_order_asked(windows, dtype):
    a = RNG.standard_normal((3, 6, 5, 2)).astype(dtype)[..., 0]  # not contiguous
    patches = h._patches(a, tuple(windows))
    perm = tuple(reversed(range(patches.ndim)))
    for _ in range(2):  # the second call reads the cached index
        got = h._im2col(a, tuple(windows), perm)
        assert got.dtype == dtype and got.flags.c_contiguous
        assert np.array_equal(got, patches.transpose(perm))
    assert (a.shape, tuple(windows), perm, ()) in h._IM2COL_INDEX


def test_im2col_splits_window_positions_into_tiles_before_the_order_asked():
    a = RNG.standard_normal((2, 3, 8, 6))
    windows = ((2, -1, 1, 8, 3), (3, 0, 1, 4, 3, 1))
    patches = h._patches(a, windows)  # [b, c, i (8), j (4), p, q]
    # i = 2*i_o + i_i, j = 2*j_o + j_i: [b, c, i_o, i_i, j_o, j_i, p, q]
    tiled = patches.reshape(2, 3, 4, 2, 2, 2, 3, 3)
    perm = (1, 6, 7, 3, 5, 0, 2, 4)  # [c, p, q, i_i, j_i, b, i_o, j_o]
    got = h._im2col(a, windows, perm, ((2, 2), (3, 2)))
    assert got.flags.c_contiguous and np.array_equal(got, tiled.transpose(perm))


@pytest.mark.parametrize("shape,axes", [((3, 4, 2, 2), (2, 3)), ((3, 5, 5), (1, 2)), ((2, 3), (1,))])
def test_max_over_and_first_argmax_on_small_and_large_windows(shape, axes):
    a = RNG.integers(0, 3, shape).astype(np.float64)  # ties: the first maximum is the one
    assert np.array_equal(h._max_over(a, axes), a.max(axis=axes))
    # one 1 a window, at its first maximum in row-major order
    k, size = len(axes), int(np.prod([a.shape[d] for d in axes]))
    flat = [np.moveaxis(v, axes, range(a.ndim - k, a.ndim)).reshape(-1, size) for v in (a, h._first_argmax(a, axes))]
    assert np.array_equal(flat[1].sum(axis=-1), np.ones(len(flat[1])))
    assert np.array_equal(flat[1].argmax(axis=-1), flat[0].argmax(axis=-1))


def test_max_over_and_first_argmax_read_a_tiled_array_as_it_lies():
    # [c, p, q, b, i, j] seen as [b, c, i, j, p, q]: each window offset a contiguous block
    tiled = RNG.integers(0, 3, (3, 2, 2, 4, 5, 5)).astype(np.float32)
    tiled[0, 1, 1, 0, 0, 0] = np.nan
    a = tiled.transpose(3, 0, 4, 5, 1, 2)
    want = a.copy()  # row-major: the slow path
    assert np.array_equal(h._max_over(a, (4, 5)), h._max_over(want, (4, 5)), equal_nan=True)
    hot = h._first_argmax(a, (4, 5))
    assert np.array_equal(hot, h._first_argmax(want, (4, 5)))
    assert hot.transpose(1, 4, 5, 0, 2, 3).flags.c_contiguous  # in the operand's memory order


@pytest.mark.parametrize("nan", [False, True])
def test_route_max_is_the_gradient_times_first_argmax_and_with_positive_the_relus_mask(nan):
    # [c, p, q, b, i, j]: tiled (each window offset a block), ties and zeros everywhere
    # windows per channel 100, 27, 64: the first-maximum bookkeeping packs 4, 1, 8 bools a word
    for trial, (b, n) in enumerate([(4, 5), (3, 3), (4, 4)] * 7):
        pre = RNG.integers(-2, 3, (3, 2, 2, b, n, n)).astype(np.float32)
        if nan:
            pre[1, 0, 1, 2, 1, trial % n] = np.nan
        a = np.maximum(pre, 0)
        g = RNG.standard_normal((3, 1, 1, b, n, n)).astype(np.float32)
        want = h._first_argmax(a, (1, 2)) * g
        assert np.array_equal(h._route_max(a, (1, 2), g), want, equal_nan=True)
        out = np.empty_like(a)
        got = h._route_max(a, (1, 2), g.transpose(3, 0, 1, 2, 4, 5).copy().transpose(1, 2, 3, 0, 4, 5), out, positive=True)
        assert got is out and np.array_equal(got, want * (pre > 0), equal_nan=True)
        top = h._max_over(a, (1, 2))  # the forward pass's maximum, handed in
        assert np.array_equal(h._route_max(a, (1, 2), g, top=top, positive=True), want * (pre > 0), equal_nan=True)
        strided = a.transpose(3, 0, 4, 5, 1, 2)  # not tiled: the one-hot path
        assert np.array_equal(h._route_max(strided, (4, 5), g.transpose(3, 0, 4, 5, 1, 2), positive=True),
                              (want * (pre > 0)).transpose(3, 0, 4, 5, 1, 2), equal_nan=True)


@pytest.mark.parametrize("positive", [False, True])
def test_first_only_keeps_each_windows_first_hit_and_reports_a_window_with_none(positive):
    # [channel, offset, window]: the maxima of 4-entry windows, ties rare or everywhere
    for trial in range(40):
        a = RNG.integers(0, 2 + trial % 5 * 20, (3, 4, 50)).astype(np.float32)
        top = a.max(axis=1)
        pos = top > 0 if positive else None
        hit = a == top[:, None]
        first = hit & (hit.cumsum(axis=1) == 1)
        got = hit.copy()
        assert h._first_only(got, 1, top, pos)
        keep = pos[:, None] if positive else True  # all-zero windows: any hits will do
        assert np.array_equal(got & keep, first & keep)
        a[1, :, trial] = np.nan  # a window whose maximum is NaN holds no hit
        top = np.maximum.reduce(a, axis=1)
        hit = a == top[:, None]
        assert h._first_only(hit, 1, top, top > 0) if positive else not h._first_only(hit, 1, top)


def test_first_argmax_takes_the_last_nan_as_pytorch_does():
    a = np.array([[1.0, np.nan, 3.0, np.nan]])
    assert list(h._first_argmax(a, (1,))[0]) == [0, 0, 0, 1]
    big = np.concatenate([a, np.zeros((1, 16))], axis=1)
    assert list(np.flatnonzero(h._first_argmax(big, (1,))[0])) == [3]


def test_window_reads_zeros_outside():
    a = np.arange(6.0).reshape(1, 6)
    assert list(h._window(a, 1, -2, 5, 2)[0]) == [0.0, 0.0, 2.0, 4.0, 0.0]
    assert list(h._window(a, 1, 4, 3)[0]) == [4.0, 5.0, 0.0]
    # every start, stride (backwards too) and size against the definition
    for start in range(-8, 14):
        for stride in (-3, -2, -1, 1, 2, 3):
            for size in range(9):
                want = [a[0, start + stride * i] if 0 <= start + stride * i < 6 else 0.0 for i in range(size)]
                assert list(h._window(a, 1, start, size, stride)[0]) == want, (start, stride, size)


def test_a_module_carries_the_helpers_it_calls_verbatim_and_no_others():
    text = compile_source("input x: [1, 6, 6]\ntarget y: [4]\n"
                          "loss = quadratic(x |> conv2d(1, 3) |> maxpool2d(2) |> flatten |> sigmoid, y)\n",
                          "<helpers>").numpy_module()
    for used in (h._patches, h._reach, h._sigmoid):
        assert inspect.getsource(used).rstrip("\n") in text
    assert "def _erf(" not in text and "def _window(" not in text
    assert helper_source(set()) == ""


def test_the_compiler_reads_the_helpers_without_importing_numpy():
    # numpy's import is slow, and a signal that cuts it short surfaces as an ImportError
    import subprocess
    import sys
    code = ("import sys; from nncc.api import compile_source; "
            "compile_source('input x: [2]\\ntarget y: [2]\\nloss = quadratic(x |> erf, y)\\n').numpy_module(); "
            "assert 'numpy' not in sys.modules, 'numpy imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr


# ---- the C runtime helpers (compiler/backends/c/runtime.c) ------------------------------

C_RUNTIME = Path(__file__).resolve().parents[1] / "compiler" / "backends" / "c" / "runtime.c"
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
C_POINTS = [-1000.0, -40.0, -1.5, -1e-8, 0.0, 1e-8, 0.5, 3.0, 40.0, 1000.0]


@pytest.mark.skipif(CC is None, reason="no C compiler")
@pytest.mark.parametrize("real", ["float", "double"])
def test_c_helpers_compile_cleanly_and_compute_what_they_say(tmp_path, real):
    main = tmp_path / "main.c"
    main.write_text("#include <stdio.h>\n#include <math.h>\n#include <tgmath.h>\n"
                    f"typedef {real} real;\n" + C_RUNTIME.read_text() + "\nint main(void)\n{\n"
                    f"    const double z[] = {{{', '.join(repr(x) for x in C_POINTS)}}};\n"
                    f"    for (int k = 0; k < {len(C_POINTS)}; k++)\n"
                    "        printf(\"%.17g %.17g %.17g %.17g %.17g\\n\", (double)nncc_sigmoid((real)z[k]),\n"
                    "               (double)nncc_softplus((real)z[k]), (double)nncc_where(z[k] > 0, (real)1, (real)2),\n"
                    "               (double)nncc_clamped_log((real)fabs(z[k]), (real)-100), (double)z[k]);\n"
                    "    return 0;\n}\n")
    exe = tmp_path / "helpers"
    # nncc_gemm, not called here, has tests of its own (test_gemm.py)
    subprocess.run([CC, "-std=c99", "-Wall", "-Wextra", "-Werror", "-Wno-unused-function", "-O2", str(main),
                    "-o", str(exe), "-lm"],
                   check=True, capture_output=True, text=True)
    rows = [list(map(float, line.split())) for line in subprocess.run(
        [str(exe)], check=True, capture_output=True, text=True).stdout.splitlines()]
    tol = 1e-6 if real == "float" else 1e-15
    for sig, soft, where, clamped, z in rows:
        z32 = float(np.float32(z)) if real == "float" else z
        assert sig == pytest.approx(1 / (1 + math.exp(-z32)) if z32 > -700 else 0.0, rel=tol, abs=1e-300)
        assert math.isfinite(soft) and soft == pytest.approx(np.logaddexp(0, z32), rel=tol)
        assert where == (1.0 if z > 0 else 2.0)
        assert clamped == pytest.approx(max(math.log(abs(z32)), -100.0) if z32 != 0 else -100.0, rel=tol)


def test_c_sources_carry_the_helpers_they_call_and_no_others():
    from nncc.backends.c.codegen import render_c_files
    c = compile_source("input x: [3]\ntarget y: [2]\nloss = quadratic(x |> dense(2) |> sigmoid, y)\n", "<c>")
    text = next(t for name, t in render_c_files(c, "float64").items() if name.endswith(".c"))
    assert "static real nncc_sigmoid(real z)" in text and "#define nncc_sigmoid" in text
    assert "nncc_softplus" not in text and "nncc_clamped_log" not in text
