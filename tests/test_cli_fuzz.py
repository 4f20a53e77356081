"""A fixed slice of the command-line fuzz campaign (tests/cli_fuzz.py), and checks that
its classifier tells a located refusal from a traceback or an injection."""
from __future__ import annotations

import json
import os
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
