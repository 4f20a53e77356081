"""The cffi module's build cache under concurrent imports, the header from C++, and the
CLI's refusals of outputs and options the C and numpy backends cannot honour."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nncc.api import compile_source
from nncc.backends.c.codegen import render_c_files, render_c_module
from nncc.cli import main

ROOT = Path(__file__).resolve().parent.parent
XOR = ROOT / "examples" / "xor.nn"
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler")

# waits for the go file so that every process reaches the import at the same moment
IMPORT_WHEN_TOLD = """
import os, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.001)
import numpy as np, xor_c
print(xor_c.loss(xor_c.init_params(0), np.ones((4, 2), np.float32), np.ones((4, 1), np.float32)))
"""


def _write_module(where: Path) -> Path:
    module = where / "xor_c.py"
    module.write_text(render_c_module(compile_source(XOR.read_text(), "examples/xor.nn")))
    return module


def _env(cache: Path):
    return dict(os.environ, NNCC_CACHE=str(cache))


@needs_cc
def test_simultaneous_first_imports_all_succeed(tmp_path):
    pytest.importorskip("cffi")
    _write_module(tmp_path)
    cache, go = tmp_path / "cache", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", IMPORT_WHEN_TOLD, str(go)], cwd=tmp_path, env=_env(cache),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    time.sleep(1.0)  # let every interpreter start and wait
    go.touch()
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    for out, err, code in results:
        assert code == 0, err[-2000:]
        assert float(out) > 0
    # one finished extension per build; the private build folders are gone
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


@needs_cc
def test_a_truncated_cached_extension_is_rebuilt(tmp_path):
    pytest.importorskip("cffi")
    _write_module(tmp_path)
    cache = tmp_path / "cache"
    script = "import xor_c; print(xor_c._lib_module.__file__)"
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(cache),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    built = Path(run.stdout.strip())
    assert built.parent.parent == cache
    built.write_bytes(built.read_bytes()[:100])  # as a build killed half-way leaves it
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(cache),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert built.stat().st_size > 100


@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("gcc") is None, reason="needs gcc and g++")
def test_header_links_from_cpp(tmp_path):
    for name, text in render_c_files(compile_source(XOR.read_text(), "examples/xor.nn"), "float64").items():
        (tmp_path / name).write_text(text)
    (tmp_path / "main.cpp").write_text(r"""
#include <cstdio>
#include <vector>
#include "xor.h"
int main() {
    std::vector<xor_real> params(XOR_PARAM_COUNT), work(XOR_WORKSPACE_SIZE(4));
    const xor_real x[8] = {0, 0, 0, 1, 1, 0, 1, 1};
    xor_real out[4];
    xor_init_params(params.data(), 1);
    xor_forward(params.data(), x, out, 4, work.data());
    std::printf("%g\n", out[3]);
    return 0;
}
""")
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Werror", "-c", "xor.c", "-o", "xor.o"], cwd=tmp_path, check=True)
    subprocess.run(["g++", "-Wall", "-Werror", "-c", "main.cpp", "-o", "main.o"], cwd=tmp_path, check=True)
    link = subprocess.run(["g++", "main.o", "xor.o", "-lm", "-o", "main"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert link.returncode == 0, link.stderr
    run = subprocess.run([str(tmp_path / "main")], capture_output=True, text=True, check=True)
    assert 0 < float(run.stdout) < 1


@pytest.mark.parametrize("output", ["model.c", "model.h", "model.txt", "model"])
def test_c_backend_refuses_an_output_that_is_neither_a_folder_nor_a_py_file(tmp_path, capsys, output):
    target = tmp_path / output
    assert main([str(XOR), "--backend", "c", "-o", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nncc: error: ") and "Traceback" not in err
    assert "-o DIR/" in err and "OUT.py" in err
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_c_backend_still_writes_to_an_existing_folder_without_a_slash(tmp_path):
    out = tmp_path / "out.d"
    out.mkdir()
    assert main([str(XOR), "--backend", "c", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["xor.c", "xor.h"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_with_the_numpy_backend_is_an_error(tmp_path, capsys, dtype):
    target = tmp_path / "xor.py"
    assert main([str(XOR), "--dtype", dtype, "-o", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nncc: error: --dtype")
    assert "--backend c" in err and "numpy module follows its inputs' dtype" in err
    assert not target.exists()


def test_dtype_with_the_cffi_module_is_an_error(tmp_path, capsys):
    target = tmp_path / "xor_c.py"
    assert main([str(XOR), "--backend", "c", "--dtype", "float64", "-o", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nncc: error: --dtype") and "-o DIR/" in err
    assert not target.exists()
