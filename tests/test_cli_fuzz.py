"""A fixed slice of the command-line fuzz campaign (tests/cli_fuzz.py), and checks that
its classifier tells a located refusal from a traceback or an injection."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cli_fuzz  # noqa: E402

SEED = 0
INPUTS = 200


def test_fixed_slice_has_no_failure(tmp_path):
    # a subprocess: the campaign forks workers, which a pytest process should not do
    env = dict(os.environ, NNCC_CACHE=str(tmp_path / "cache"), TMPDIR=str(tmp_path))
    run = subprocess.run([sys.executable, str(HERE / "cli_fuzz.py"), "--inputs", str(INPUTS), "--seed", str(SEED),
                          "--jobs", "2", "--out", str(tmp_path / "out"), "--quiet"],
                         capture_output=True, text=True, env=env, timeout=600)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    reports = sorted((tmp_path / "out").glob("failure-*/report.txt"))
    details = "\n".join(p.read_text() for p in reports)
    assert summary["counts"]["FAILURE"] == 0, f"{run.stdout}\n{details}"
    assert run.returncode == 0, run.stdout + run.stderr
    # a campaign where nothing compiles, or nothing is refused, tests little
    assert summary["counts"]["OK"] >= 20 and summary["counts"]["REFUSED"] >= 20, run.stdout


@pytest.mark.parametrize("rc, stderr, outcome", [
    (1, "m.nn:3:5: error: unknown layer 'dense2'\n    h = x |> dense2(3)\n             ^\n", "REFUSED"),
    (1, "nncc: error: m.nn is not UTF-8 text\n", "REFUSED"),
    (1, "nncc: error: cannot read m.nn: No such file or directory\n", "REFUSED"),
    (0, "", "OK"),
    (0, "DeprecationWarning: something\n", "FAILURE"),
    (1, "m.nn: internal error: KeyError: 'x'\nnncc failed on this file\n", "FAILURE"),
    (1, "Traceback (most recent call last):\n  File ...\nKeyError: 'x'\n", "FAILURE"),
    (1, "m.nn: error: the expression is nested too deeply\n", "FAILURE"),
    (1, "nncc: error: a\nb.nn is not UTF-8 text\n", "FAILURE"),
    (1, "a\x1b[31m.nn:1:1: error: unexpected 'x'\n", "FAILURE"),
    (2, "usage: nncc ...\n", "FAILURE"),
    ("raised", "[escaped nncc.cli.main]\n", "FAILURE"),
])
def test_classify(rc, stderr, outcome):
    assert cli_fuzz.classify(rc, stderr)[0] == outcome


def test_injection_checks_see_code_and_spare_names():
    assert cli_fuzz._python_injection('x = 1\n__import__("os").system("touch PWNED")\n')
    assert not cli_fuzz._python_injection('"""a "PWNED" file\n"""\n# system("touch PWNED")\nx_PWNED = 1\n')
    assert cli_fuzz._c_injection('/* a */ int x = system("touch PWNED"); /* b */')
    assert cli_fuzz._c_injection('/* x */\n#include "PWNED"\n')
    assert cli_fuzz._c_injection("// name\\\nint PWNED;\n") == []  # a line comment continued by \
    assert not cli_fuzz._c_injection('#ifndef X___SYSTEM__TOUCH_PWNED_H\n/* system("touch PWNED") */\n'
                                     'const char *f = "x\\"); system(\\"touch PWNED";\n')


# ---- the checks of output targets, full devices and interrupted runs -----------------------

XOR = HERE.parent / "examples" / "xor.nn"


def _call(outcome, rc=0, stderr=""):
    return dict(outcome=outcome, rc=rc, stderr=stderr, problems=[], note="")


def test_target_checks_see_a_replaced_link_and_a_short_fifo_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = set()
    cmd = dict(target="symlink", out="target.py")
    state = cli_fuzz._prepare_target(cmd, expected)
    os.unlink("target.py")  # as a writer that replaces the link by a file would leave it
    Path("target.py").write_text("x = 1\n")
    call = _call("OK")
    cli_fuzz._check_target(None, cmd, call, state, False)
    assert any("symbolic link" in p for p in call["problems"]), call["problems"]
    assert {"target.py", "real", "real/symlink.py"} <= expected

    fifo = dict(target="fifo", out="pipe.py", ref_argv=[str(XOR), "-o", "ref/target.py"])
    state = cli_fuzz._prepare_target(fifo, set())
    cli_fuzz._release_reader("pipe.py", state)  # nothing written: the reader gets no bytes
    call = _call("OK")
    cli_fuzz._check_target(None, fifo, call, state, False)
    assert any("reader got" in p for p in call["problems"]), call["problems"]
    assert not Path("ref").exists()


def test_an_older_output_must_be_replaced_whole(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmd = dict(target="older", out="target.py")
    state = cli_fuzz._prepare_target(cmd, set())
    assert cli_fuzz.call_cli([str(XOR), "-o", "target.py"])[0] == 0
    call = _call("OK")
    cli_fuzz._check_target(None, cmd, call, state, False)
    assert call["problems"] == []
    Path("target.py").write_text(Path("target.py").read_text() + cli_fuzz.OLD_END)  # a tail left over
    call = _call("OK")
    cli_fuzz._check_target(None, cmd, call, state, False)
    assert any("not replaced whole" in p for p in call["problems"]), call["problems"]


def test_full_stdout_checks():
    call = _call("OK")
    cli_fuzz._check_full(call)
    assert call["problems"]
    call = _call("REFUSED", 1, "nncc: error: cannot write to standard output: [Errno 28] No space left\n")
    cli_fuzz._check_full(call)
    assert call["problems"]
    call = _call("REFUSED", 1, cli_fuzz.FULL_MESSAGE + "\n")
    cli_fuzz._check_full(call)
    assert call["problems"] == []


def test_temporary_names_are_recognised():
    assert cli_fuzz._TEMP.match(".model.py.k3j_9x2a") and cli_fuzz._TEMP.match(".xor.h.0a1b2c3d.old")
    assert not cli_fuzz._TEMP.match("model.py") and not cli_fuzz._TEMP.match("xor.h")


def test_numpy_output_to_a_missing_folder_path_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = cli_fuzz.call_cli([str(XOR), "-o", "newdir/"])[0]
    assert not Path("newdir").is_file()
    assert rc == 1


# SIGTERM while a weakref callback runs, as importlib's module-lock callback does during the
# CLI's lazy imports (the campaign met it: case 0:2, a run interrupted at 0.43 s)
SWALLOWED = """
import os, signal, sys, weakref
from nncc.output import Interrupted, signals_raise

class A:
    pass

try:  # as nncc.cli.main does
    with signals_raise():
        a = A()
        r = weakref.ref(a, lambda _: os.kill(os.getpid(), signal.SIGTERM))
        del a
except Interrupted as exc:
    sys.exit(128 + exc.signum)
"""


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_a_sigterm_during_an_import_callback_still_ends_the_run():
    proc = subprocess.run([sys.executable, "-c", SWALLOWED], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    # quietly: Python's "Exception ignored in ..." report of the swallowed one is not shown
    assert proc.stderr == "", proc.stderr
