"""The C backend's matrix product: nncc_gemm (compiler/backends/c/runtime.c) as a function,
its -DNNCC_CBLAS form through OpenBLAS, and the statements the C lowerer gives it."""
from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from nncc.api import compile_source
from nncc.backends.c.codegen import gemm_pack_size, render_c_files

RUNTIME = Path(__file__).resolve().parents[1] / "compiler" / "backends" / "c" / "runtime.c"
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler")
X86 = platform.machine() in ("x86_64", "AMD64")
# the flags the cffi module builds with on this machine, and the plain generic target
FLAGS = {"native": ["-O3", "-march=native", "-mno-avx512f", "-mprefer-vector-width=256"] if X86 else ["-O3"],
         "generic": ["-O1"]}


def _has_avx512():
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    except OSError:
        return False
    return X86 and "avx512f" in flags and "avx512vl" in flags


# ... and, on a CPU with AVX-512, the product alone in it (the cffi build's NNCC_AVX512)
AVX512 = _has_avx512() and "clang" not in Path(CC or "").name
if AVX512:
    FLAGS["avx512"] = FLAGS["native"] + ["-DNNCC_AVX512"]
# ... and with the big products' column halves on two threads, as the cffi build does
if os.name == "posix":
    FLAGS["threads"] = FLAGS["native"] + ["-D_POSIX_C_SOURCE=200809L", "-DNNCC_THREADS", "-pthread"]

# (ta, tb, m, n, k): the four layouts; sizes below one tile, on the tiles' edges, and
# across every block (MC = 128 rows, KC = 256 terms, NC = 16 tiles of columns)
CASES = [(0, 0, 1, 1, 1), (0, 1, 3, 17, 5), (1, 0, 7, 9, 2), (1, 1, 4, 16, 256), (0, 1, 130, 1030, 257),
         (1, 0, 129, 520, 513), (0, 0, 64, 784, 30), (1, 1, 33, 8, 700)]
LIBS = {}


def _library(tmp_path_factory, real, flags, blas=None):
    key = (real, flags, blas is not None)
    if key not in LIBS:
        folder = tmp_path_factory.mktemp("gemm")
        source = folder / "gemm.c"
        source.write_text(f"#include <math.h>\n#include <tgmath.h>\ntypedef {real} real;\n" + RUNTIME.read_text()
                          + "\nvoid gemm(int ta, int tb, long m, long n, long k, real alpha, const real *a, long lda,"
                            " const real *b, long ldb, int add, real *c, long ldc, real *pack)\n"
                            "{\n    nncc_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, add, c, ldc, pack);\n}\n")
        out = folder / "libgemm.so"
        extra = []
        if blas is not None:
            extra = ["-DNNCC_CBLAS", "-Dcblas_sgemm=scipy_cblas_sgemm", "-Dcblas_dgemm=scipy_cblas_dgemm",
                     f"-L{blas.get_lib_dir()}", f"-Wl,-rpath,{blas.get_lib_dir()}", f"-l{blas.get_library()}"]
        subprocess.run([CC, "-std=c99", "-Wall", "-Wextra", "-Werror", "-Wno-unused-function", "-fPIC", "-shared",
                        "-ffp-contract=off", *FLAGS[flags], str(source), "-o", str(out), *extra, "-lm"],
                       check=True, capture_output=True, text=True)
        lib = ctypes.CDLL(str(out))
        c_real = ctypes.c_float if real == "float" else ctypes.c_double
        L, P, I = ctypes.c_long, ctypes.c_void_p, ctypes.c_int
        lib.gemm.argtypes = [I, I, L, L, L, c_real, P, L, P, L, I, P, L, P]
        LIBS[key] = lib
    return LIBS[key]


def _product(lib, real, ta, tb, m, n, k, a, b, c, alpha=1.0, add=0):
    """c (m x n, rows of c.shape[1]) (+)= alpha op(a) op(b); the pack buffer is followed by
    sentinels that must survive.  Returns c."""
    dtype = np.float32 if real == "float" else np.float64
    size = gemm_pack_size(m, n, k, real)
    pack = np.full(size + 64, 7.25, dtype)
    lib.gemm(ta, tb, m, n, k, alpha, a.ctypes.data, a.strides[0] // a.itemsize, b.ctypes.data,
             b.strides[0] // b.itemsize, add, c.ctypes.data, c.strides[0] // c.itemsize, pack.ctypes.data)
    assert (pack[size:] == 7.25).all(), "nncc_gemm wrote past the pack size the planner gives it"
    return c


def _operands(ta, tb, m, n, k, dtype, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b, (a.T if ta else a).astype(np.float64), (b.T if tb else b).astype(np.float64)


def _check(c, want, bound, dtype):
    # the product's error bound for sums taken term by term: k eps (|A| |B|), plus the rest
    eps = np.finfo(dtype).eps
    assert np.all(np.abs(c - want) <= 2 * eps * bound + np.finfo(dtype).tiny), np.abs(c - want).max()


@needs_cc
@pytest.mark.parametrize("flags", ["native", "generic"] + [f for f in ("avx512", "threads") if f in FLAGS])
@pytest.mark.parametrize("real", ["float", "double"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_product_is_right_in_every_layout_and_size(tmp_path_factory, real, flags, case):
    ta, tb, m, n, k = case
    dtype = np.float32 if real == "float" else np.float64
    lib = _library(tmp_path_factory, real, flags)
    a, b, a64, b64 = _operands(ta, tb, m, n, k, dtype, seed=sum(case))
    c = _product(lib, real, ta, tb, m, n, k, a, b, np.full((m, n), np.nan, dtype))
    _check(c, a64 @ b64, k * (np.abs(a64) @ np.abs(b64)), dtype)
    # scaled and added to what is there: c + alpha op(a) op(b)
    base = np.random.default_rng(1).standard_normal((m, n)).astype(dtype)
    c = _product(lib, real, ta, tb, m, n, k, a, b, base.copy(), alpha=-0.5, add=1)
    _check(c, base - 0.5 * (a64 @ b64), np.abs(base) + k * 0.5 * (np.abs(a64) @ np.abs(b64)), dtype)


@needs_cc
@pytest.mark.skipif(not AVX512, reason="no AVX-512 here (or clang, which the build leaves on AVX2)")
@pytest.mark.parametrize("real", ["float", "double"])
def test_the_avx512_tiles_give_the_avx2_tiles_numbers_bit_for_bit(tmp_path_factory, real):
    # 8-row tiles in 512-bit registers or 4-row ones in 256-bit: each element the same sum
    dtype = np.float32 if real == "float" else np.float64
    wide, narrow = (_library(tmp_path_factory, real, f) for f in ("avx512", "native"))
    for ta, tb, m, n, k in CASES:
        a, b, _, _ = _operands(ta, tb, m, n, k, dtype, seed=5)
        got = [_product(lib, real, ta, tb, m, n, k, a, b, np.empty((m, n), dtype)) for lib in (wide, narrow)]
        assert np.array_equal(*got), (ta, tb, m, n, k)


@needs_cc
@pytest.mark.skipif("threads" not in FLAGS, reason="no POSIX threads here")
@pytest.mark.parametrize("real", ["float", "double"])
def test_two_threads_give_one_threads_numbers_bit_for_bit(tmp_path_factory, real):
    # products big enough to be split (2**26 terms and more), in every layout, with odd edges
    dtype = np.float32 if real == "float" else np.float64
    both, one = (_library(tmp_path_factory, real, f) for f in ("threads", "native"))
    for ta, tb, m, n, k in [(0, 1, 128, 1040, 520), (1, 0, 130, 1030, 520), (0, 0, 129, 777, 700), (1, 1, 200, 80, 4200)]:
        assert m * n * k >= 2 ** 26
        a, b, _, _ = _operands(ta, tb, m, n, k, dtype, seed=7)
        got = [_product(lib, real, ta, tb, m, n, k, a, b, np.empty((m, n), dtype)) for lib in (both, one)]
        assert np.array_equal(*got), (ta, tb, m, n, k)


@needs_cc
@pytest.mark.parametrize("real", ["float", "double"])
def test_an_element_does_not_depend_on_where_it_lies(tmp_path_factory, real):
    # a sample's numbers the same at any place in any batch: every element summed in the
    # same order by the same code, the edge tiles included
    dtype = np.float32 if real == "float" else np.float64
    lib = _library(tmp_path_factory, real, "native")
    m, n, k = 133, 1041, 600
    a, b, _, _ = _operands(0, 1, m, n, k, dtype, seed=3)
    whole = _product(lib, real, 0, 1, m, n, k, a, b, np.empty((m, n), dtype))
    for rows, cols in [(slice(5, 6), slice(0, n)), (slice(130, 133), slice(1030, 1041)), (slice(0, 9), slice(17, 40))]:
        part = _product(lib, real, 0, 1, rows.stop - rows.start, cols.stop - cols.start, k,
                        np.ascontiguousarray(a[rows]), np.ascontiguousarray(b[cols]),
                        np.empty((rows.stop - rows.start, cols.stop - cols.start), dtype))
        assert np.array_equal(part, whole[rows, cols])


@needs_cc
@pytest.mark.parametrize("real", ["float", "double"])
def test_with_nncc_cblas_the_product_is_openblas(tmp_path_factory, real):
    blas = pytest.importorskip("scipy_openblas32")
    dtype = np.float32 if real == "float" else np.float64
    lib = _library(tmp_path_factory, real, "generic", blas=blas)
    for ta, tb, m, n, k in CASES:
        a, b, a64, b64 = _operands(ta, tb, m, n, k, dtype, seed=m + n)
        base = np.ones((m, n), dtype)
        c = _product(lib, real, ta, tb, m, n, k, a, b, base.copy(), alpha=2.0, add=1)
        _check(c, 1 + 2 * (a64 @ b64), 1 + k * 2 * (np.abs(a64) @ np.abs(b64)), dtype)


WIDE = "input x: [300]\ntarget y: [10]\nz = x |> dense(64) |> relu |> dense(96) |> tanh |> dense(10)\n" \
       "loss = softmax_cross_entropy(z, y)\n"


def test_dense_layers_wide_enough_become_products_and_narrow_ones_stay_loops():
    text = next(t for name, t in render_c_files(compile_source(WIDE, "<wide>")).items() if name.endswith(".c"))
    calls = [line.strip() for line in text.splitlines() if line.strip().startswith("nncc_gemm(")]
    # forward x W1ᵀ and relu W2ᵀ (in forward, loss, loss_and_grad, sgd_step), the
    # gradients δ1ᵀ x, δ2ᵀ relu, and δ2 W2 into the relu's mask (in loss_and_grad, sgd_step);
    # the 96 -> 10 layer's products (960 multiply-adds a sample) stay loops
    assert "nncc_gemm(0, 1, batch, 64, 300, 1, v_x, 300, v_dense_1_weight, 300, 0, v_dense_1, 64, " in text
    assert "nncc_gemm(1, 0, 64, 300, batch, 1, dv_dense_1, 64, v_x, 300, 0, dv_dense_1_weight, 300, " in text
    assert "nncc_gemm(0, 0, batch, 64, 96, 1, dv_dense_2, 96, v_dense_2_weight, 64, 0, dv_dense_1, 64, " in text
    assert not any(", 10, " in call.split("v_")[0] for call in calls)
    assert len(calls) == 4 * 2 + 2 * 3
    # in sgd_step the weights' products go straight into the weights: W += -lr δᵀX
    step = text[text.index("network_sgd_step("):text.index("network_train_step(")]
    assert "nncc_gemm(1, 0, 64, 300, batch, -lr, dv_dense_1, 64, v_x, 300, 1, params + 0, 300, " in step
    assert "nncc_gemm(1, 0, 96, 64, batch, -lr, dv_dense_2, 96, v_relu_1, 64, 1, params + 19264, 64, " in step
    assert "dv_dense_1_weight" not in step and "dv_dense_2_weight" not in step


def _module(text, name):
    import types
    module = types.ModuleType(name)
    exec(compile(text, f"<{name}>", "exec"), module.__dict__)
    return module


@needs_cc
@pytest.mark.parametrize("blas", [False, True], ids=["own-product", "openblas"])
def test_the_c_module_with_products_agrees_with_numpy(tmp_path, monkeypatch, blas):
    pytest.importorskip("cffi")
    if blas:
        pytest.importorskip("scipy_openblas32")
    from nncc.backends.c.codegen import render_c_module
    monkeypatch.setenv("NNCC_CACHE", str(tmp_path / "cache"))
    c = compile_source(WIDE, "<wide>")
    text = render_c_module(c, blas=blas)
    assert ("scipy_openblas32" in text) == blas
    numpy_module, c_module = _module(c.numpy_module(), "wide_np"), _module(text, "wide_c")
    rng = np.random.default_rng(0)
    params = numpy_module.init_params(seed=3)
    for dtype, batch, tol in [(np.float64, 1, 1e-12), (np.float64, 67, 1e-12), (np.float32, 130, 1e-4)]:
        x = rng.standard_normal((batch, 300)).astype(dtype)
        y = rng.dirichlet(np.ones(10), batch).astype(dtype)
        p = {name: v.astype(dtype) for name, v in params.items()}
        (l0, g0), (l1, g1) = (m.loss_and_grad(p, x, y) for m in (numpy_module, c_module))
        assert abs(l0 - l1) <= tol * abs(l0)
        for name in g0:
            assert g1[name].dtype == dtype
            assert np.abs(g0[name] - g1[name]).max() <= tol * np.abs(g0[name]).max(), name
        stepped = {name: v.copy() for name, v in p.items()}
        c_module.sgd_step(stepped, x, y, lr=0.1)
        for name in p:
            want = p[name] - dtype(0.1) * g0[name]
            assert np.abs(stepped[name] - want).max() <= tol * max(np.abs(want).max(), 1), name
