"""A plain `pip install .` wheel works outside the source tree (grammar, prelude and
templates ship inside it)."""
import os
import re
import subprocess
import sys
import sysconfig
import venv
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _version(package):
    try:
        return tuple(int(n) for n in re.findall(r"\d+", metadata.version(package))[:2])
    except metadata.PackageNotFoundError:
        return None


def _can_build_here():
    """Whether this environment can build the wheel itself (pyproject wants setuptools>=68;
    bdist_wheel ships inside setuptools from 70.1, before that in the `wheel` package)."""
    setuptools = _version("setuptools")
    return setuptools is not None and setuptools >= (68, 0) and (setuptools >= (70, 1) or bool(_version("wheel")))


def _build_wheel(wheels):
    # a fresh venv (Python 3.11's bundles setuptools 65.5 and no wheel) cannot build it:
    # let pip fetch the build requirements into an isolated environment instead
    isolation = ["--no-build-isolation"] if _can_build_here() else []
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q",
                          "-w", str(wheels), str(ROOT)], capture_output=True, text=True)
    if run.returncode != 0 and not isolation and \
            re.search(r"No matching distribution found for setuptools|Could not find a version that satisfies "
                      r"the requirement setuptools", run.stderr):
        pytest.skip("cannot build the wheel: this environment's setuptools is older than 68 (or has no "
                    "bdist_wheel) and pip cannot fetch a newer one for an isolated build")
    assert run.returncode == 0, run.stdout + run.stderr
    (wheel,) = wheels.glob("nncc-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_installs_and_compiles_outside_the_tree(tmp_path):
    wheel = _build_wheel(tmp_path / "wheels")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    # the dependencies come from the running environment, which may itself be a venv whose
    # packages the base interpreter's site-packages lack; listed after the new venv's own
    # site-packages, so nncc is the wheel's (path lines only: no .pth of theirs runs)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    here = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(site) / "_running_env.pth").write_text("".join(f"{d}\n" for d in here))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
                    str(wheel)], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "tiny.nn").write_text("input x: [2]\ntarget y: [1]\n"
                                  "p = x |> dense(3) |> tanh |> dense(1) |> sigmoid\n"
                                  "loss = binary_cross_entropy(p, y)\n")
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(py), "-c", "import nncc; print(nncc.__file__)"], cwd=work, env=clean,
                           capture_output=True, text=True, check=True).stdout
    assert str(env_dir) in where, f"imported nncc from {where} instead of the wheel"
    subprocess.run([str(py), "-m", "nncc", "tiny.nn", "-o", "tiny.py"], cwd=work, env=clean, check=True)
    run = subprocess.run([str(py), "-c", "import numpy as np, tiny; p = tiny.init_params(0); "
                          "print(tiny.loss(p, np.ones((4, 2), np.float32), np.ones((4, 1), np.float32)))"],
                         cwd=work, env=clean, capture_output=True, text=True, check=True)
    assert float(run.stdout) > 0
