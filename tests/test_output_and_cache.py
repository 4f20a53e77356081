"""What nncc writes and what the cffi module loads.

- outputs: a device, FIFO or symbolic link is written through, never replaced; a
  failed write to stdout is a plain error; the input is bounded; an error names the
  user's path; a header and source are committed together and carry a matching stamp;
  a termination signal removes the temporary files;
- the cffi cache: private, per user; every extension checked against the sha256
  recorded when it was built, so a planted or truncated one is rebuilt, never run;
- the cffi build: a compiler warning that can change numbers fails the import, naming
  the model; other warnings are shown;
- the generated modules' argument checks.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from nncc import output
from nncc.api import compile_source, load_module
from nncc.backends.c.codegen import render_c_module
from nncc.cli import main

ROOT = Path(__file__).resolve().parent.parent
XOR = ROOT / "examples" / "xor.nn"
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _xor_copy(where: Path) -> Path:
    src = where / "xor.nn"
    src.write_text(XOR.read_text())
    return src


# ---- 1. special files, symbolic links, stdout, input size -------------------------------

def test_a_fifo_is_written_through_not_replaced(tmp_path):
    fifo = tmp_path / "pipe.py"
    os.mkfifo(fifo)
    # the reading end open first (without waiting for a writer), so that nothing blocks;
    # the module fits in the pipe's buffer
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert main([str(XOR), "-o", str(fifo)]) == 0
        got = b""
        while chunk := os.read(reader, 1 << 16):
            got += chunk
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert got.startswith(b'"""xor:')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.py"]


@pytest.mark.skipif(not IS_ROOT, reason="making a device node needs root")
def test_a_character_device_is_written_through_not_replaced(tmp_path):
    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is
    except OSError as exc:
        pytest.skip(f"cannot make a device node here: {exc}")
    assert main([str(XOR), "-o", str(null)]) == 0
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]


def test_a_symbolic_link_keeps_pointing_at_its_replaced_target(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "xor.py"
    target.write_text("old\n")
    link = tmp_path / "xor.py"
    link.symlink_to(target)
    dangling = tmp_path / "new.py"
    dangling.symlink_to(tmp_path / "real" / "created.py")
    assert main([str(XOR), "-o", str(link)]) == 0
    assert main([str(XOR), "-o", str(dangling)]) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text().startswith('"""xor:')
    assert dangling.is_symlink() and (tmp_path / "real" / "created.py").read_text().startswith('"""xor:')
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["created.py", "xor.py"]


def test_a_directory_or_socket_is_refused_in_plain_words(tmp_path, capsys):
    (tmp_path / "d.py").mkdir()
    assert main([str(XOR), "-o", str(tmp_path / "d.py")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nncc: error: cannot write {tmp_path / 'd.py'}: ") and "directory" in err
    if hasattr(__import__("socket"), "AF_UNIX") and len(str(tmp_path / "s.py")) < 100:
        import socket
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(tmp_path / "s.py"))
            assert main([str(XOR), "-o", str(tmp_path / "s.py")]) == 1
            assert "socket" in capsys.readouterr().err
            assert stat.S_ISSOCK(os.lstat(tmp_path / "s.py").st_mode)


def test_existing_output_keeps_its_permissions(tmp_path):
    out = tmp_path / "xor.py"
    out.write_text("old\n")
    out.chmod(0o600)
    assert main([str(XOR), "-o", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.read_text().startswith('"""xor:')


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_explain_to_a_full_stdout_is_a_plain_error(tmp_path):
    src = _xor_copy(tmp_path)
    with open("/dev/full", "w") as full:
        env = dict(os.environ)
        proc = subprocess.run([sys.executable, "-m", "nncc", "explain", str(src)], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=300, env=env)
    assert proc.returncode == 1
    assert proc.stderr == "nncc: error: cannot write to standard output: No space left on device\n"


def test_an_oversized_input_is_refused(tmp_path, capsys):
    big = tmp_path / "big.nn"
    big.write_bytes(b"#" * (output.MAX_INPUT_BYTES + 1))
    assert main([str(big), "-o", str(tmp_path / "big.py")]) == 1
    assert capsys.readouterr().err == f"nncc: error: {big} is larger than 16 MiB; a .nn file is a few lines of text\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.nn"]


@pytest.mark.skipif(not os.path.exists("/dev/zero") or sys.platform != "linux", reason="needs Linux /dev/zero")
def test_dev_zero_as_input_ends_with_an_error(tmp_path):
    import resource

    def limit():  # should the bound be lost, fail fast rather than eat the machine's memory
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    proc = subprocess.run([sys.executable, "-m", "nncc", "/dev/zero", "-o", str(tmp_path / "z.py")],
                          capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert proc.returncode == 1
    assert proc.stderr == "nncc: error: /dev/zero is larger than 16 MiB; a .nn file is a few lines of text\n"
    assert list(tmp_path.iterdir()) == []


def test_a_write_error_names_the_users_path_not_the_temporary_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / "x.py"

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(src))

    monkeypatch.setattr(os, "replace", refuse)
    assert main([str(XOR), "-o", str(out)]) == 1
    assert capsys.readouterr().err == f"nncc: error: cannot write {out}: Permission denied\n"
    assert list(tmp_path.iterdir()) == []


# ---- 2. C pairs, signals ------------------------------------------------------------

def _pair(folder: Path):
    return {name: (folder / name).read_bytes() for name in ("xor.h", "xor.c")}


def test_a_failed_rename_leaves_both_old_c_files(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("xor.h", "xor.c"):
        (out / name).write_text(f"old {name}\n")
    real, calls = os.replace, []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the second of the pair's renames
            raise OSError(28, "No space left on device", str(src))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    assert main([str(XOR), "--backend", "c", "-o", f"{out}/"]) == 1
    monkeypatch.setattr(os, "replace", real)
    second = Path(calls[1]).name
    assert capsys.readouterr().err == f"nncc: error: cannot write {out / second}: No space left on device\n"
    assert _pair(out) == {"xor.h": b"old xor.h\n", "xor.c": b"old xor.c\n"}
    assert sorted(p.name for p in out.iterdir()) == ["xor.c", "xor.h"]


@needs_cc
def test_a_header_and_source_from_two_runs_do_not_compile(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    src = _xor_copy(tmp_path)
    assert main([str(src), "--backend", "c", "-o", f"{first}/"]) == 0
    src.write_text(XOR.read_text().replace("dense(4)", "dense(5)"))
    assert "dense(5)" in src.read_text()
    assert main([str(src), "--backend", "c", "-o", f"{second}/"]) == 0
    ok = subprocess.run([CC, "-std=c99", "-Wall", "-Werror", "-c", "xor.c", "-o", "xor.o"], cwd=second,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    shutil.copy(first / "xor.h", second / "xor.h")  # a new source with an old header
    mixed = subprocess.run([CC, "-std=c99", "-c", "xor.c", "-o", "xor.o"], cwd=second, capture_output=True,
                           text=True)
    assert mixed.returncode != 0
    assert "xor.h and xor.c come from different nncc runs" in mixed.stderr


# runs the CLI, stopping once a temporary output file is complete, to be signalled there
STOP_IN_WRITE = """
import os, signal, sys, time
import nncc.cli
# Ctrl-C as a terminal delivers it, even where the suite runs in the background (a shell
# starts background jobs with SIGINT ignored, and the child would inherit that)
signal.signal(signal.SIGINT, signal.default_int_handler)
ready, args = sys.argv[1], sys.argv[2:]
real_chmod = os.chmod
def chmod(path, mode, *a, **k):
    real_chmod(path, mode, *a, **k)
    if os.path.basename(str(path)).startswith("."):
        open(ready, "w").close()
        time.sleep(60)
os.chmod = chmod
sys.exit(nncc.cli.main(args))
"""


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_a_signal_mid_write_leaves_the_old_outputs_and_no_temporary_file(tmp_path, signum, backend):
    out = tmp_path / "out"
    out.mkdir()
    names = ["xor.py"] if backend == "numpy" else ["xor.c", "xor.h"]
    for name in names:
        (out / name).write_text(f"old {name}\n")
    ready = tmp_path / "ready"
    target = [str(out / "xor.py")] if backend == "numpy" else ["--backend", "c", "-o", f"{out}/"]
    args = [str(XOR)] + (["-o"] + target if backend == "numpy" else target)
    proc = subprocess.Popen([sys.executable, "-c", STOP_IN_WRITE, str(ready), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the CLI never reached the write"
            time.sleep(0.02)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == names
    for name in names:
        assert (out / name).read_text() == f"old {name}\n"


# ---- 3. the cffi cache --------------------------------------------------------------

HAS_CFFI = CC is not None and __import__("importlib").util.find_spec("cffi") is not None
needs_cffi = pytest.mark.skipif(not HAS_CFFI, reason="needs a C compiler and cffi")
WHERE = "import xor_c; print(xor_c._lib_module.__name__); print(xor_c._lib_module.__file__)"


def _module_text():
    return render_c_module(compile_source(XOR.read_text(), "examples/xor.nn"))


def _import(where: Path, cache: Path | None, env=None, script=WHERE):
    env = dict(os.environ if env is None else env)
    if cache is not None:
        env["NNCC_CACHE"] = str(cache)
    return subprocess.run([sys.executable, "-c", script], cwd=where, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """(a folder holding xor_c.py, a cache holding its build, the extension's module name)."""
    where = tmp_path_factory.mktemp("warm")
    (where / "xor_c.py").write_text(_module_text())
    run = _import(where, where / "cache")
    assert run.returncode == 0, run.stderr
    name, path = run.stdout.split()
    return where, where / "cache", name


def _copy_of(warm, tmp_path):
    where, cache, name = warm
    shutil.copy(where / "xor_c.py", tmp_path / "xor_c.py")
    shutil.copytree(cache, tmp_path / "cache", symlinks=True)
    folder = tmp_path / "cache" / name
    (extension,) = [p for p in folder.iterdir() if p.name.startswith(name + ".") and p.suffix in (".so", ".pyd")]
    return tmp_path / "cache", folder, extension


def _plant(path: Path, module_name: str, mark: Path):
    """An extension named as nncc's that, when loaded, leaves `mark` behind."""
    src = path.parent / "planted.c"
    src.write_text(textwrap.dedent(f"""
        #include <Python.h>
        PyMODINIT_FUNC PyInit_{module_name}(void)
        {{
            FILE *f = fopen("{mark}", "w");
            if (f) fclose(f);
            PyErr_SetString(PyExc_ImportError, "planted");
            return NULL;
        }}
    """))
    include = sysconfig.get_paths()["include"]
    subprocess.run([CC, "-shared", "-fPIC", f"-I{include}", str(src), "-o", str(path)], check=True)
    src.unlink()


@needs_cffi
def test_a_build_records_the_extensions_sha256_in_a_private_folder(warm, tmp_path):
    cache, folder, extension = _copy_of(warm, tmp_path)
    assert stat.S_IMODE(os.stat(warm[1]).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(warm[1] / warm[2]).st_mode) == 0o700
    record = (folder / f"{warm[2]}.sha256").read_text().split()
    assert record == [hashlib.sha256(extension.read_bytes()).hexdigest(), extension.name]


@needs_cffi
@pytest.mark.parametrize("record", ["kept", "removed"])
def test_a_planted_extension_is_rebuilt_never_run(warm, tmp_path, record):
    cache, folder, extension = _copy_of(warm, tmp_path)
    mark = tmp_path / "planted-code-ran"
    _plant(extension, warm[2], mark)
    if record == "removed":
        (folder / f"{warm[2]}.sha256").unlink()
    run = _import(tmp_path, cache)
    assert run.returncode == 0, run.stderr
    assert not mark.exists(), "the planted extension was loaded"
    assert (folder / f"{warm[2]}.sha256").read_text().split()[0] == hashlib.sha256(extension.read_bytes()).hexdigest()


@needs_cffi
@pytest.mark.parametrize("size", [2000, 30000])
def test_a_truncated_extension_is_rebuilt_not_run(warm, tmp_path, size):
    cache, folder, extension = _copy_of(warm, tmp_path)
    whole = extension.read_bytes()
    extension.write_bytes(whole[:size])  # as a build killed half-way, or a full disk, leaves it
    run = _import(tmp_path, cache)
    assert run.returncode == 0, run.stderr  # not killed by SIGBUS
    assert extension.stat().st_size > size


@needs_cffi
@pytest.mark.parametrize("unsafe", ["writable by others", "owned by another user"])
def test_a_cache_others_can_write_is_not_used(warm, tmp_path, unsafe):
    cache, folder, extension = _copy_of(warm, tmp_path)
    mark = tmp_path / "planted-code-ran"
    _plant(extension, warm[2], mark)
    (folder / f"{warm[2]}.sha256").write_text(  # a record to match: only privacy stops this
        f"{hashlib.sha256(extension.read_bytes()).hexdigest()}  {extension.name}\n")
    if unsafe == "writable by others":
        cache.chmod(0o777)
    else:
        if not IS_ROOT:
            pytest.skip("giving a folder to another user needs root")
        os.chown(cache, 65534, 65534)
    run = _import(tmp_path, cache, script="import warnings; warnings.simplefilter('always'); " + WHERE)
    assert run.returncode == 0, run.stderr
    assert not mark.exists(), "an extension from a cache others can write was loaded"
    assert f"not using the nncc cache {cache}" in run.stderr
    assert not run.stdout.split()[1].startswith(str(cache))


@needs_cffi
def test_the_cache_lives_under_xdg_cache_home_else_home(warm, tmp_path):
    where = tmp_path
    shutil.copy(warm[0] / "xor_c.py", where / "xor_c.py")
    env = {k: v for k, v in os.environ.items() if k not in ("NNCC_CACHE", "XDG_CACHE_HOME")}
    env["HOME"] = str(tmp_path / "home")
    # the build itself is the warm one's: only the location is under test here
    (tmp_path / "xdg").mkdir()
    shutil.copytree(warm[1], tmp_path / "xdg" / "nncc")
    shutil.copytree(warm[1], tmp_path / "home" / ".cache" / "nncc")
    run = _import(where, None, env=dict(env, XDG_CACHE_HOME=str(tmp_path / "xdg")))
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[1].startswith(str(tmp_path / "xdg" / "nncc") + os.sep)
    run = _import(where, None, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[1].startswith(str(tmp_path / "home" / ".cache" / "nncc") + os.sep)


# ---- 4. compiler warnings in the cffi build -------------------------------------------

def _with_c(text: str, c_code: str) -> str:
    marker = '_SOURCE = r"""\n'
    assert marker in text
    return text.replace(marker, marker + c_code + "\n", 1)


@needs_cffi
@pytest.mark.parametrize("c_code,said", [
    ("static long long nncc_big_(void) { return 99999999999999999999999LL; }", "too large"),
    ("static int nncc_wrap_(void) { int x = 2147483647 + 1; return x; }", "overflow"),
    ("static float nncc_narrow_(double d) { return d; }", "float-conversion"),
], ids=["too-large", "overflow", "float-conversion"])
def test_a_warning_that_can_change_numbers_fails_the_build(tmp_path, c_code, said):
    (tmp_path / "xor_c.py").write_text(_with_c(_module_text(), c_code))
    run = _import(tmp_path, tmp_path / "cache")
    assert run.returncode != 0
    last = run.stderr[run.stderr.index("\nImportError: ") + 1:]
    assert last.startswith(f"ImportError: the C code of xor ({tmp_path / 'xor_c.py'}) was not built")
    assert said in last


@needs_cffi
def test_other_warnings_are_shown(tmp_path):
    (tmp_path / "xor_c.py").write_text(_with_c(_module_text(), "static int nncc_unused_(void) { int u; return 0; }"))
    run = _import(tmp_path, tmp_path / "cache")
    assert run.returncode == 0, run.stderr
    assert "RuntimeWarning: building the C code of xor" in run.stderr and "unused" in run.stderr


# ---- 5. the generated modules' argument checks ----------------------------------------

@pytest.fixture(scope="module")
def modules(request):
    """The numpy module of xor, and its cffi module (from the warm cache) where it builds."""
    import importlib.util
    numpy_module = load_module(XOR.read_text(), "examples/xor.nn", "nncc_xor_checks")
    out = [numpy_module]
    if HAS_CFFI:
        warm = request.getfixturevalue("warm")
        old = os.environ.get("NNCC_CACHE")
        os.environ["NNCC_CACHE"] = str(warm[1])
        try:
            spec = importlib.util.spec_from_file_location("nncc_xor_c_checks", warm[0] / "xor_c.py")
            c_module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(c_module)
        finally:
            if old is None:
                del os.environ["NNCC_CACHE"]
            else:
                os.environ["NNCC_CACHE"] = old
        out.append(c_module)
    return out


def _arrays(batch=4, dtype=np.float32):
    return np.ones((batch, 2), dtype), np.ones((batch, 1), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parameters_given_as_lists_are_named(modules, dtype):
    for m in modules:
        params = {k: v.tolist() for k, v in m.init_params(0, dtype).items()}
        with pytest.raises(ValueError, match=r"^parameter 'dense_1.weight' must be a numpy array of float32 "
                                             r"or float64, got a list"):
            m.loss(params, *_arrays(dtype=dtype))


@pytest.mark.parametrize("function", ["forward", "loss", "loss_and_grad", "sgd_step"])
def test_an_empty_batch_is_a_plain_error(modules, function):
    for m in modules:
        x, y = _arrays(batch=0)
        args = (x,) if function == "forward" else (x, y)
        kwargs = {"lr": 0.1} if function == "sgd_step" else {}
        with pytest.raises(ValueError, match=r"the batch is empty \('x' has 0 samples\)"):
            getattr(m, function)(m.init_params(0), *args, **kwargs)


def test_unknown_parameters_are_named(modules):
    for m in modules:
        params = m.init_params(0)
        params["dense_3.weight"] = np.zeros((1, 1), np.float32)
        with pytest.raises(ValueError, match=r"unknown parameter 'dense_3.weight'"):
            m.loss(params, *_arrays())
        del params["dense_1.bias"]
        with pytest.raises(ValueError, match=r"missing parameter 'dense_1.bias'.*unknown 'dense_3.weight'"):
            m.loss(params, *_arrays())
        with pytest.raises(ValueError, match=r"params must be a dict of numpy arrays"):
            m.loss(list(m.init_params(0).values()), *_arrays())


def test_sgd_step_checks_every_parameter_before_touching_any(modules):
    for m in modules:
        params = m.init_params(0)
        params["dense_2.bias"] = params["dense_2.bias"].copy()
        params["dense_2.bias"].flags.writeable = False  # the last one sgd_step would update
        before = {k: v.copy() for k, v in params.items()}
        with pytest.raises(ValueError, match=r"parameter 'dense_2.bias' is read-only"):
            m.sgd_step(params, *_arrays(), lr=0.5)
        for k, v in params.items():
            np.testing.assert_array_equal(v, before[k], err_msg=f"{m.__name__}: {k} changed")
