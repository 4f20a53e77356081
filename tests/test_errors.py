"""Every mistake in a .nn file is a located, plain-words error from the `nncc` command.

Each bad program is compiled by the CLI in a subprocess: `python -m nncc` run by a small
driver that handles many programs per interpreter (an interpreter start with sympy costs
~1 s), and for a sample also by a real `python -m nncc` each, which must print exactly the
same.  Each must exit 1 and print

    FILE:LINE:COL: error: MESSAGE
        the source line
        ^ under column COL

with no Python traceback, and leave the output file untouched (an existing one
byte-identical, a missing one not created, no temporary file left behind).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

import nncc
import nn_zoo

HEADER = "network bad\ninput x: [4]\ntarget y: [3]\n"  # the body starts on line 4
SENTINEL = b"# an output from an earlier, successful compile\n"


@dataclass(frozen=True)
class Case:
    id: str
    source: str  # after HEADER unless whole=True
    line: int
    message: str  # regex searched in the message
    col: int | None = None
    whole: bool = False
    marks: tuple = ()

    @property
    def text(self) -> str:
        return self.source if self.whole else HEADER + self.source


CASES = [
    # syntax
    Case("syntax-missing-pipe", "h = x |> dense(4) sigmoid\nloss = quadratic(h, y)\n", 4,
         r"unexpected 'sigmoid'", col=19),
    Case("syntax-missing-colon", "network bad\ninput x [4]\n", 2, r"unexpected '\['", whole=True),
    Case("syntax-empty-expression", "a = x |> dense(3)\nloss =\n", 5, r"unexpected"),
    Case("syntax-keyword-as-name", "input = x |> dense(3)\nloss = quadratic(input, y)\n", 4, r"unexpected"),
    Case("unclosed-bracket", "a = dense(x, 3\nloss = quadratic(a, y)\n", 4, r"never closed|not closed", col=10),
    Case("unclosed-bracket-at-end-of-file", "a = x |> dense(3", 4, r"never closed|not closed|end of file"),
    Case("unclosed-shape", "network bad\ninput x: [4\ntarget y: [3]\n", 2, r"never closed|not closed|unexpected",
         whole=True),
    Case("bad-character", "a = x |> dense(3) $ 2\nloss = quadratic(a, y)\n", 4, r"unexpected character '\$'", col=19),
    Case("bad-character-unicode", "a = x |> dense(3) · 2\nloss = quadratic(a, y)\n", 4, r"unexpected character"),
    Case("bad-character-after-tab", "a = x |>\tdense(3)\t$ 2\nloss = quadratic(a, y)\n", 4,
         r"unexpected character '\$'", col=19),
    # unknown names
    Case("unknown-layer-did-you-mean", "h = x |> dens(3)\nloss = quadratic(h, y)\n", 4,
         r"unknown .*'dens'.*did you mean 'dense'", col=10),
    Case("unknown-layer-dense2", "h = x |> dense2(3)\nloss = quadratic(h, y)\n", 4,
         r"unknown .*'dense2'.*did you mean 'dense'"),
    Case("unknown-tensor-did-you-mean", "hidden = x |> dense(3)\nloss = quadratic(hiden, y)\n", 5,
         r"unknown tensor 'hiden'.*did you mean 'hidden'", col=18),
    Case("unknown-function-in-fn", "fn f(z) = sigmod(z)\na = x |> dense(3) |> f\nloss = quadratic(a, y)\n", 4,
         r"unknown function 'sigmod'.*did you mean 'sigmoid'", col=11),
    Case("unknown-output", "a = x |> dense(3)\noutput aa\nloss = quadratic(a, y)\n", 5,
         r"unknown tensor 'aa'.*did you mean 'a'"),
    # shapes
    Case("shape-mismatch-add", "a = x |> dense(3)\nb = x |> dense(4)\nh = a + b\nloss = quadratic(h, y)\n", 6,
         r"shape mismatch.*\[3\].*\[4\]", col=7),
    Case("shape-mismatch-loss", "a = x |> dense(4)\nloss = quadratic(a, y)\n", 5, r"shape mismatch.*\[4\].*\[3\]|"
         r"shape mismatch.*\[3\].*\[4\]"),
    Case("shape-mismatch-concat-rank", "network bad\ninput x: [4]\ninput u: [2, 3]\ntarget y: [3]\n"
         "c = concat(x, u)\nloss = quadratic(c, y)\n", 5, r"shape mismatch", whole=True),
    Case("shape-mismatch-dense-rank", "network bad\ninput x: [2, 3]\ntarget y: [3]\n"
         "a = x |> dense(3)\nloss = quadratic(a, y)\n", 4, r"shape mismatch", whole=True),
    Case("shape-not-positive", "input u: [0]\na = x |> dense(3)\nloss = quadratic(a, y)\n", 4,
         r"positive whole number"),
    # arguments
    Case("too-many-arguments", "a = x |> dense(3, true, 5)\nloss = quadratic(a, y)\n", 4,
         r"'dense' takes at most 3 arguments"),
    Case("too-many-arguments-elementwise", "a = sigmoid(x, x)\nloss = quadratic(a, y)\n", 4,
         r"'sigmoid' takes at most 1 argument"),
    Case("missing-argument", "a = dense(x)\nloss = quadratic(a, y)\n", 4, r"'dense' needs a value for 'n'"),
    Case("unknown-keyword", "a = x |> dense(3, bais=false)\nloss = quadratic(a, y)\n", 4,
         r"no argument 'bais'.*did you mean 'bias'", col=19),
    Case("keyword-given-twice", "a = dense(x, 3, n=4)\nloss = quadratic(a, y)\n", 4, r"'n' is given twice"),
    Case("bad-layer-name", "a = x |> dense(3, name=5)\nloss = quadratic(a, y)\n", 4, r"name="),
    # duplicates
    Case("tensor-defined-twice", "a = x |> dense(3)\na = x |> dense(3)\nloss = quadratic(a, y)\n", 5,
         r"'a' is already defined", col=1),
    Case("input-defined-twice", "input x: [2]\na = x |> dense(3)\nloss = quadratic(a, y)\n", 4,
         r"'x' is already defined"),
    Case("fn-defined-twice", "fn f(z) = z\nfn f(z) = 2 * z\na = x |> dense(3) |> f\nloss = quadratic(a, y)\n", 5,
         r"'f' is already defined"),
    Case("fn-shadows-primitive", "fn exp(z) = z\na = x |> dense(3) |> exp\nloss = quadratic(a, y)\n", 4,
         r"'exp' is already defined.*built-in"),
    Case("layer-redefined-by-user-twice", "layer dense(x: [k], n) {\n    param weight: [n, k]\n"
         "    y[i] = sum(j: weight[i, j] * x[j])\n}\nlayer dense(x: [k], n) {\n    param weight: [n, k]\n"
         "    y[i] = sum(j: weight[i, j] * x[j])\n}\na = x |> dense(3)\nloss = quadratic(a, y)\n", 8,
         r"'dense' is already defined \(defined at"),
    # option values
    Case("option-true-as-size", "a = x |> dense(true)\nloss = quadratic(a, y)\n", 4,
         r"'n' of 'dense' must be a number, not true", col=16),
    Case("option-fraction-as-size", "a = x |> dense(2.5)\nloss = quadratic(a, y)\n", 4,
         r"'n' of 'dense' must be a positive whole number, not 2.5"),
    Case("option-negative-stride", "network bad\ninput x: [2, 5, 5]\ntarget y: [3]\n"
         "a = x |> conv2d(2, 3, stride=-2) |> flatten |> dense(3)\nloss = quadratic(a, y)\n", 4,
         r"'stride' of 'conv2d' must be a positive whole number, not -2", whole=True),
    Case("option-fraction-as-padding", "network bad\ninput x: [2, 5, 5]\ntarget y: [3]\n"
         "a = x |> conv2d(2, 3, padding=1.5) |> flatten |> dense(3)\nloss = quadratic(a, y)\n", 4,
         r"'padding' of 'conv2d' must be a non-negative whole number", whole=True),
    Case("option-bool-as-kernel", "network bad\ninput x: [2, 4, 4]\ntarget y: [8]\n"
         "a = x |> maxpool2d(true) |> flatten\nloss = quadratic(a, y)\n", 4,
         r"'kernel' of 'maxpool2d' must be a number, not true", whole=True),
    Case("option-string-as-number", "a = x |> dense(3) |> leaky_relu(slope=\"x\")\nloss = quadratic(a, y)\n", 4,
         r"'slope' of 'leaky_relu' must be a number, not \"x\""),
    Case("option-number-as-switch", "a = x |> dense(3, bias=3)\nloss = quadratic(a, y)\n", 4,
         r"'bias' of 'dense' is true or false, not 3"),
    # numbers
    Case("number-too-large", "a = x |> dense(3)\nb = a * 1e400\nloss = quadratic(b, y)\n", 5,
         r"too large", col=9),
    Case("division-by-zero", "a = x |> dense(3)\nb = a / 0\nloss = quadratic(b, y)\n", 5,
         r"division by zero", col=9),
    Case("division-by-zero-expression", "a = x |> dense(3)\nb = a / (2 - 2)\nloss = quadratic(b, y)\n", 5,
         r"division by zero"),
    # names the generated code already gives to something else
    Case("name-of-a-gradient", "z = x |> dense(3)\nd_z = 2 * z\nloss = quadratic(d_z, y) + quadratic(z, y)\n", 5,
         r"'d_z' is taken.*gradient of 'z'"),
    Case("name-of-a-parameter", "dense_1_weight = x |> dense(3)\nloss = quadratic(dense_1_weight, y)\n", 4,
         r"'dense_1_weight' is taken.*parameter 'dense_1.weight'"),
    Case("loss-defined-twice", "a = x |> dense(3)\nloss = quadratic(a, y)\nloss = mse(a, y)\n", 6,
         r"'loss' is defined twice"),
    # formulas
    Case("unbound-index-in-layer", "layer lin(x: [k], n) {\n    param weight: [n, k]\n"
         "    y[i] = sum(j: weight[i, j] * x[q])\n}\na = x |> lin(3)\nloss = quadratic(a, y)\n", 6,
         r"index 'q' is not bound", col=36),
    Case("wrong-subscript-count", "layer lin(x: [k], n) {\n    param weight: [n, k]\n"
         "    y[i] = sum(j: weight[i] * x[j])\n}\na = x |> lin(3)\nloss = quadratic(a, y)\n", 6,
         r"'weight' has 2 axes"),
    Case("layer-without-equation", "layer lin(x: [k], n) {\n    param weight: [n, k]\n}\n"
         "a = x |> lin(3)\nloss = quadratic(a, y)\n", 4, r"exactly one output equation"),
    # the loss
    Case("missing-loss", "a = x |> dense(3)\n", 4, r"no loss"),
    Case("loss-not-a-scalar", "a = x |> dense(3)\nloss = sigmoid(a)\n", 5, r"loss must be one number per sample",
         col=8),
    Case("fn-calls-itself", "fn f(z) = 1 + f(z)\na = x |> dense(3) |> f\nloss = quadratic(a, y)\n", 4,
         r"'f' calls itself", col=15),
    Case("loss-target-first", "a = x |> dense(3)\nloss = quadratic(y, a)\n", 5,
         r"'y' is a target"),
    Case("output-computed-from-a-target", "a = x |> dense(3)\nr = a - y\nloss = mse(r, 0 * y)\n", 6,
         r"computed from the target 'y'"),
    Case("loss-a-plain-number", "a = x |> dense(3)\nloss = 3\n", 5, r"plain number", col=8),
    Case("no-input", "network bad\ntarget y: [3]\nloss = quadratic(y, y)\n", 1, r"no input", whole=True),
]
CASES_BY_ID = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES)


def run_cli(args, cwd, stdin=None, timeout=120):
    """`python -m nncc ARGS` in a subprocess."""
    env = dict(os.environ)
    env.pop("PYTHONHASHSEED", None)
    return subprocess.run([sys.executable, "-m", "nncc", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env, input=stdin)


# Runs `python -m nncc ARGS` for many jobs in one interpreter (an interpreter start with
# sympy costs ~1 s): each job is run_module("nncc") with its own argv, cwd and captured
# output; an exception escaping the CLI is printed as Python would print it.
_DRIVER = r"""
import contextlib, io, json, os, runpy, sys, traceback
jobs = json.load(sys.stdin)
results = {}
for cid, cwd, args in jobs:
    os.chdir(cwd)
    out, err, rc = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.argv = ["nncc", *args]
        try:
            runpy.run_module("nncc", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            rc = 1
    results[cid] = [rc, out.getvalue(), err.getvalue()]
sys.stdout.write(json.dumps(results))
"""

# compiled by a real `python -m nncc` as well, which must print exactly what the driver saw
REAL_CLI_SAMPLE = ("syntax-missing-pipe", "unknown-layer-did-you-mean", "shape-mismatch-add",
                   "unknown-keyword", "unbound-index-in-layer", "missing-loss", "unclosed-bracket")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    dir: object
    out: object
    before: list


def _run_driver(jobs):
    env = dict(os.environ)
    env.pop("PYTHONHASHSEED", None)
    proc = subprocess.run([sys.executable, "-c", _DRIVER], input=json.dumps(jobs), capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Compile every bad program; {id: Result}, and {id: real CLI process} for the sample.

    Even-numbered cases write to an existing `out.py` (which must stay byte-identical);
    odd ones to the default MODEL.py next to the source (which must not appear).
    """
    jobs, outs = [], {}
    for k, case in enumerate(CASES):
        d = tmp_path_factory.mktemp(case.id)
        (d / "case.nn").write_text(case.text, encoding="utf-8")
        if k % 2 == 0:
            (d / "out.py").write_bytes(SENTINEL)
            jobs.append((case.id, str(d), ["case.nn", "-o", "out.py"]))
            outs[case.id] = d / "out.py"
        else:
            jobs.append((case.id, str(d), ["case.nn"]))
            outs[case.id] = d / "case.py"
    before = {cid: sorted(os.listdir(d)) for cid, d, _ in jobs}
    real_jobs = {}
    for cid, d, args in jobs:
        if cid in REAL_CLI_SAMPLE:
            real_dir = tmp_path_factory.mktemp(f"real-{cid}")
            for name in os.listdir(d):
                (real_dir / name).write_bytes((Path(d) / name).read_bytes())
            real_jobs[cid] = (real_dir, args)
    with ThreadPoolExecutor(max_workers=4) as pool:
        halves = [pool.submit(_run_driver, jobs[k::2]) for k in range(2)]
        real = {cid: pool.submit(run_cli, args, rd) for cid, (rd, args) in real_jobs.items()}
        seen = {**halves[0].result(), **halves[1].result()}
        real = {cid: f.result() for cid, f in real.items()}
    res = {cid: Result(*seen[cid], Path(d), outs[cid], before[cid]) for cid, d, _ in jobs}
    return res, real


@pytest.mark.parametrize("case_id", REAL_CLI_SAMPLE)
def test_the_real_command_prints_the_same(case_id, results):
    res, real = results
    proc = real[case_id]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert (proc.returncode, proc.stdout, proc.stderr) == (res[case_id].returncode, res[case_id].stdout,
                                                           res[case_id].stderr)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_program_gets_a_located_error(case, results):
    proc = results[0][case.id]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines, "nothing printed"
    m = re.match(r"^case\.nn:(\d+):(\d+): error: (.+)$", lines[0])
    assert m, f"first line is not 'file:line:col: error: message': {lines[0]!r}"
    line, col, message = int(m.group(1)), int(m.group(2)), m.group(3)
    assert re.search(case.message, message), f"message {message!r} does not match {case.message!r}"
    assert line == case.line, proc.stderr
    if case.col is not None:
        assert col == case.col, proc.stderr
    source_line = case.text.splitlines()[line - 1]
    assert len(lines) >= 3, f"no source line and caret:\n{proc.stderr}"
    shown = lines[1]
    assert shown.strip() == source_line.expandtabs(4).strip(), proc.stderr
    indent = len(shown) - len(shown.lstrip(" "))
    caret = lines[2]
    assert caret.strip() == "^", proc.stderr
    # the caret sits under the character at `col` of the line as displayed
    shown_text = shown[indent:]
    caret_at = len(caret) - 1 - indent
    assert 0 <= caret_at <= len(shown_text), proc.stderr
    expected_char = source_line[col - 1] if col - 1 < len(source_line) else ""
    assert shown_text[caret_at:caret_at + 1] == expected_char, (
        f"caret under {shown_text[caret_at:caret_at + 1]!r}, expected {expected_char!r}:\n{proc.stderr}")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_failed_compile_touches_no_file(case, results):
    res = results[0][case.id]
    assert res.returncode != 0
    assert sorted(os.listdir(res.dir)) == res.before, "a failed compile created or removed a file"
    if res.out.name == "out.py":
        assert res.out.read_bytes() == SENTINEL, "a failed compile changed the existing output"
    else:
        assert not res.out.exists()


def test_the_error_cases_cover_the_brief():
    kinds = " ".join(CASES_BY_ID)
    for word in ("syntax", "did-you-mean", "shape-mismatch", "arguments", "keyword", "twice", "shadows",
                 "unbound-index", "missing-loss", "not-a-scalar", "unclosed", "bad-character"):
        assert word in kinds, word


# ---- the command itself ------------------------------------------------------------------

def test_version(tmp_path):
    proc = run_cli(["--version"], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"nncc {nncc.__version__}"


def test_help(tmp_path):
    proc = run_cli(["--help"], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: nncc")
    assert "-o" in proc.stdout and "--version" in proc.stdout
    assert "compile" in proc.stdout and "explain" in proc.stdout  # the commands, listed
    for command in ("compile", "explain"):
        sub = run_cli([command, "--help"], tmp_path)
        assert sub.returncode == 0 and sub.stdout.startswith(f"usage: nncc {command}") and "-o" in sub.stdout


def test_compile_is_the_default_command_and_can_be_named(tmp_path):
    model = nn_zoo.program("m", "a = x |> dense(3)\nloss = quadratic(a, y)")
    for name in ("m.nn", "explain", "compile"):  # a model file may be called like a command
        (tmp_path / name).write_text(model)
    assert run_cli(["m.nn", "-o", "a.py"], tmp_path).returncode == 0
    assert run_cli(["compile", "m.nn", "-o", "b.py"], tmp_path).returncode == 0
    assert run_cli(["compile", "explain", "-o", "c.py"], tmp_path).returncode == 0
    assert run_cli(["./compile", "-o", "d.py"], tmp_path).returncode == 0
    assert (tmp_path / "b.py").read_text() == (tmp_path / "a.py").read_text()  # the same module either way
    bare = run_cli([], tmp_path)
    assert bare.returncode == 2 and "nncc --help" in bare.stderr and "Traceback" not in bare.stderr


def test_missing_input_file(tmp_path):
    proc = run_cli(["nowhere.nn", "-o", "out.py"], tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "nowhere.nn" in proc.stderr and "error" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_input_that_is_not_utf8(tmp_path):
    (tmp_path / "bin.nn").write_bytes(b"\xff\xfe\x00network")
    proc = run_cli(["bin.nn"], tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "bin.nn" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin.nn"]


def test_output_may_not_overwrite_the_source(tmp_path):
    src = (nn_zoo.EXAMPLES / "xor.nn").read_text(encoding="utf-8")
    (tmp_path / "xor.nn").write_text(src, encoding="utf-8")
    proc = run_cli(["xor.nn", "-o", "xor.nn"], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (tmp_path / "xor.nn").read_text(encoding="utf-8") == src


def test_successful_compile_writes_an_importable_module(tmp_path):
    src = (nn_zoo.EXAMPLES / "xor.nn").read_text(encoding="utf-8")
    (tmp_path / "xor.nn").write_text(src, encoding="utf-8")
    (tmp_path / "xor.py").write_bytes(SENTINEL)
    proc = run_cli(["xor.nn"], tmp_path)  # the default output: MODEL.py, replacing an old one
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and "Traceback" not in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xor.nn", "xor.py"]
    # readable by others as any file the user writes (the atomic write must not keep
    # its temporary file's private mode)
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "xor.py").stat().st_mode & 0o777 == 0o666 & ~mask
    check = subprocess.run([sys.executable, "-c", "import xor, numpy as np; p = xor.init_params(0); "
                            "print(xor.forward(p, np.zeros((3, 2), np.float32)).shape)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "(3, 1)"
    text = (tmp_path / "xor.py").read_text(encoding="utf-8")
    assert "import numpy as np" in text
    imports = {line.split()[1] for line in text.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"numpy", "__future__"}, f"the generated module imports {imports}"


def test_compile_errors_raise_nnerror_in_the_api():
    from nncc.api import compile_source
    from nncc.errors import NNError
    case = CASES_BY_ID["unknown-layer-did-you-mean"]
    with pytest.raises(NNError) as info:
        compile_source(case.text, "model.nn")
    err = info.value
    assert (err.loc.line, err.loc.col) == (4, 10)
    assert err.render().splitlines()[0] == (
        "model.nn:4:10: error: unknown layer or function 'dens'; did you mean 'dense'?")


@pytest.mark.parametrize("failure", [NotImplementedError("a subscript it cannot read"), KeyError("oops")])
@pytest.mark.parametrize("command", [[], ["explain"]])
def test_an_unexpected_failure_is_reported_without_a_traceback(tmp_path, monkeypatch, capsys, failure, command):
    from nncc import api, cli

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(api, "compile_source", fail)
    src = tmp_path / "m.nn"
    src.write_text(nn_zoo.program("m", "a = x |> dense(3)\nloss = quadratic(a, y)"))
    out = tmp_path / ("m.md" if command else "m.py")
    out.write_text("earlier output\n")
    assert cli.main(command + [str(src), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(src) in err and "error" in err
    assert out.read_text() == "earlier output\n"
