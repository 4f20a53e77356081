"""A fixed slice of the differential campaign: random programs, numpy against C and
against finite differences (tests/differential.py; the long run is tests/campaign.py).

Program k is program_generator.generate(random.Random(SEED + k)); a failure names its
seed, and `python tests/program_generator.py SEED` prints the program.
"""
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

needs_cc = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")),
                              reason="no C compiler")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    pytest.importorskip("cffi")
    # -O1 keeps the warnings that need the optimizer's analysis at half -O3's build time
    saved = differential.OPTIMIZE
    differential.OPTIMIZE = os.environ.get("NNCC_DIFF_OPT", "-O1")
    try:
        programs = [(generate(random.Random(SEED + k), f"g{SEED + k}"), f"g{SEED + k}.nn") for k in range(COUNT)]
        folder = str(tmp_path_factory.mktemp("differential"))
        return {int(r.file[1:-3]): r for r in differential.check_many(programs, folder, group=GROUP)}
    finally:
        differential.OPTIMIZE = saved


@needs_cc
@pytest.mark.parametrize("seed", range(SEED, SEED + COUNT))
def test_random_program_agrees(reports, seed):
    report = reports[seed]
    assert report.status in ("ok", "refused", "inconclusive"), report.text() + "\n" + report.source


def test_generated_programs_are_valid_and_varied():
    """The generator's programs compile (a refusal would hide the case it was drawn for)
    and cover the language: its output is only as good as its spread."""
    sources = [generate(random.Random(SEED + k)) for k in range(200)]
    text = "\n".join(sources)
    for feature in ["layer ", "fn ", "where(", "max(", "min(", "logsumexp(", "mean(", "concat(", "conv2d(",
                    "pool2d(", "flatten", "softmax", "binary_cross_entropy", "1e30", "0.7978845608028654",
                    "loss = sum ", "[2*i", "[k - 1 - i]", "y[stride*i + p]", "dilation*p - padding"]:
        assert feature in text, feature
