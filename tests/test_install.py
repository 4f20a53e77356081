"""A plain `pip install .` wheel works outside the source tree (grammar, prelude and
templates ship inside it)."""
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_and_compiles_outside_the_tree(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(ROOT)], check=True)
    (wheel,) = wheels.glob("nncc-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
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
