"""A fixed slice of the differential campaign: random programs, numpy against C and
against finite differences (tests/differential.py; the long run is tests/campaign.py).

Program k is program_generator.generate(random.Random(SEED + k)); a failure names its
seed, and `python tests/program_generator.py SEED` prints the program.
"""
import json
import os
import random
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import differential  # noqa: E402
from program_generator import generate  # noqa: E402

SEED = 20_000
COUNT = int(os.environ.get("NNCC_DIFF_PROGRAMS", "80"))
GROUP = 16  # programs per C extension: one build's fixed cost shared
# programs the long campaign once caught disagreeing, checked on every run:
# 4894: float32 sigmoid(7*h^2) into binary cross-entropy, whose C gradient was inf
REGRESSIONS = [4894]

needs_cc = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")),
                              reason="no C compiler")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    pytest.importorskip("cffi")
    # -O1 keeps the warnings that need the optimizer's analysis at half -O3's build time
    saved = differential.OPTIMIZE
    differential.OPTIMIZE = os.environ.get("NNCC_DIFF_OPT", "-O1")
    try:
        programs = [(generate(random.Random(k), f"g{k}"), f"g{k}.nn") for k in [*range(SEED, SEED + COUNT), *REGRESSIONS]]
        folder = str(tmp_path_factory.mktemp("differential"))
        return {int(r.file[1:-3]): r for r in differential.check_many(programs, folder, group=GROUP)}
    finally:
        differential.OPTIMIZE = saved


# the same check with every contraction the C lowerer can give nncc_gemm given to it, however
# small (GEMM_MIN 1): the blocked product on the odd shapes random programs have
GEMM_SEED, GEMM_COUNT = 30_000, int(os.environ.get("NNCC_DIFF_GEMM_PROGRAMS", "24"))


@pytest.fixture(scope="module")
def gemm_reports(tmp_path_factory):
    pytest.importorskip("cffi")
    from nncc.backends.c.codegen import CLowerer
    saved = differential.OPTIMIZE, CLowerer.GEMM_MIN
    differential.OPTIMIZE, CLowerer.GEMM_MIN = os.environ.get("NNCC_DIFF_OPT", "-O1"), 1
    try:
        programs = [(generate(random.Random(k), f"g{k}"), f"g{k}.nn") for k in range(GEMM_SEED, GEMM_SEED + GEMM_COUNT)]
        folder = str(tmp_path_factory.mktemp("differential_gemm"))
        return {int(r.file[1:-3]): r for r in differential.check_many(programs, folder, group=GROUP)}
    finally:
        differential.OPTIMIZE, CLowerer.GEMM_MIN = saved


@needs_cc
@pytest.mark.parametrize("seed", range(GEMM_SEED, GEMM_SEED + GEMM_COUNT))
def test_random_program_agrees_with_every_product_blocked(gemm_reports, seed):
    report = gemm_reports[seed]
    assert report.status in ("ok", "refused", "inconclusive"), report.text() + "\n" + report.source


@needs_cc
@pytest.mark.parametrize("seed", [*range(SEED, SEED + COUNT), *REGRESSIONS])
def test_random_program_agrees(reports, seed):
    report = reports[seed]
    assert report.status in ("ok", "refused", "inconclusive"), report.text() + "\n" + report.source
    json.dumps(report.worst, allow_nan=False)  # plain numbers: the campaign's workers send them as JSON


def test_generated_programs_are_valid_and_varied():
    """The generator's programs compile (a refusal would hide the case it was drawn for)
    and cover the language: its output is only as good as its spread."""
    sources = [generate(random.Random(SEED + k)) for k in range(200)]
    text = "\n".join(sources)
    for feature in ["layer ", "fn ", "where(", "max(", "min(", "logsumexp(", "mean(", "concat(", "conv2d(",
                    "pool2d(", "flatten", "softmax", "binary_cross_entropy", "1e30", "0.7978845608028654",
                    "loss = sum ", "[2*i", "[k - 1 - i]", "y[stride*i + p]", "dilation*p - padding"]:
        assert feature in text, feature


# ---- the checker catches what it is there to catch -------------------------------------

class _Skewed:
    """A module whose gradient of one parameter is changed: a planted bug."""

    def __init__(self, module, param, change):
        self._module, self._param, self._change = module, param, change

    def __getattr__(self, name):
        return getattr(self._module, name)

    def loss_and_grad(self, params, *arrays):
        value, grads = self._module.loss_and_grad(params, *arrays)
        return value, {**grads, self._param: self._change(grads[self._param])}


def _prepared(source):
    prep = differential.prepare(source, "<planted>.nn")
    assert prep.report.status == "ok", prep.report.text()
    return prep


PLANTED = "input x: [3]\ntarget y: [2]\na = x |> dense(4) |> tanh |> dense(2)\nloss = quadratic(a, y)\n"


@pytest.mark.parametrize("size", [1e-6, 1e-8])
def test_a_slightly_wrong_gradient_is_caught_by_finite_differences(size):
    prep = _prepared(PLANTED)
    prep.numpy_module = _Skewed(prep.numpy_module, "dense_1.bias", lambda g: g * (1 + size))
    report = differential.check_prepared(prep)
    assert report.status == "disagree" and "dense_1.bias" in report.text(), report.text()


def test_a_gradient_that_should_be_zero_is_judged_at_what_finite_differences_resolve():
    # the first layer reaches the loss through a factor 1e-14: its true gradient is
    # ~1e-14, below what a relative 1e-9 can be asked of; one that is 1e-9 is still wrong
    source = "input x: [3]\ntarget y: [2]\na = x |> dense(2)\nb = 1e-14 * (a |> dense(2))\nloss = quadratic(a + b, y)\n"
    honest = differential.check_prepared(_prepared(source))
    assert honest.status == "ok", honest.text()
    prep = _prepared(source)
    prep.numpy_module = _Skewed(prep.numpy_module, "dense_2.weight", lambda g: g + 1e-9)
    report = differential.check_prepared(prep)
    assert report.status == "disagree" and "dense_2.weight" in report.text(), report.text()


def test_a_loss_that_rounds_in_plateaus_is_not_blamed_on_its_gradient():
    # log(1 - sigmoid(z)) near z = 20 holds one value over steps of 1e-7 in z (1 + exp(-z)
    # moves in steps of eps): differences over 1e-3 see a staircase, not the slope, which
    # the analytic gradient (exact here) has; the estimate must say it cannot resolve it
    source = "input x: [3]\ntarget y: [2]\na = x |> dense(2)\nloss = binary_cross_entropy(sigmoid(a + 20), y)\n"
    report = differential.check_prepared(_prepared(source))
    assert report.status in ("ok", "inconclusive"), report.text()


def test_a_fused_gradient_is_not_multiplied_out():
    # (1 - tanh^2)(tanh - y)(...) of steps fused into one statement: multiplied out as
    # tanh - y - tanh^3 + ..., it kept round-off of 1e-16 where tanh = 1 and the true
    # gradient is 0, which the factor 1e9 then made a gradient of 1e-9 (g402689)
    source = ("layer maxmix(x: [n], m) {\n    param w: [m, n]\n"
              "    y[k] = max(j: sum(l: w[j, l] * x[l]) + x[k]) for k < n\n}\n"
              "input x: [6]\ntarget y: [6]\nh = 0.000001 * (x |> maxmix(3))\n"
              "loss = quadratic(tanh(silu(h) * 1E+15), y)\n")
    report = differential.check_prepared(_prepared(source))
    assert report.status == "ok", report.text()


@needs_cc
def test_c_that_differs_beyond_round_off_is_caught(tmp_path):
    pytest.importorskip("cffi")
    honest = _prepared(PLANTED)
    differential.build_c([honest], str(tmp_path), group=1)
    assert differential.check_prepared(honest).status == "ok", honest.report.text()
    prep = _prepared(PLANTED)
    prep.c_module = _Skewed(honest.c_module, "dense_2.weight", lambda g: g * (1 + 1e-11))
    report = differential.check_prepared(prep)
    assert report.status == "disagree" and "C vs numpy" in report.text(), report.text()


@needs_cc
def test_a_stopped_campaign_resumes_where_it_was(tmp_path):
    pytest.importorskip("cffi")
    import subprocess
    env = dict(os.environ, NNCC_DIFF_OPT="-O0", TMPDIR=str(tmp_path))
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "campaign.py"), "--seed", str(SEED),
           "--jobs", "1", "--group", "2", "--out", str(tmp_path / "out")]
    first = subprocess.run(cmd + ["--programs", "2"], capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    log = tmp_path / "out" / "results.jsonl"
    assert len(log.read_text().splitlines()) == 2
    with open(log, "a") as f:  # as a run stopped in the middle of a line leaves it
        f.write('{"seed": 1')
    second = subprocess.run(cmd + ["--programs", "3"], capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 programs already in" in second.stderr
    assert "programs         3" in second.stdout
    lines = log.read_text().splitlines()
    assert lines[2] == '{"seed": 1'  # the broken line stays alone, the new results after it
    assert sorted(json.loads(line)["seed"] for line in lines[:2] + lines[3:]) == [SEED, SEED + 1, SEED + 2]
