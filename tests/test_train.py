"""`nncc train`: data fitted to each example, checkpoints, resume, curves, plain errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nncc.api import load_module
from nncc.training.data import DataError, fit, load
from nncc.training.loop import train

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

pytest.importorskip("sklearn")


def _nncc(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nncc", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def _module(name, optimizer=None):
    path = EXAMPLES / f"{name}.nn"
    return load_module(path.read_text(encoding="utf-8"), f"examples/{name}.nn", optimizer=optimizer)


# every example, with data that fits it and a few epochs: (example, data, options)
FITS = [("digits", "digits", ()), ("lenet", "digits", ()), ("residual", "digits", ()),
        ("nielsen", "digits", ("--optimizer", "sgd(lr=3)", "--batch-size", "10")),  # 8x8 resampled to 28x28
        ("zhou", "iris", ("--optimizer", "adam(lr=0.05)")), ("linear42", "iris", ()),
        ("xor", EXAMPLES / "xor.csv", ("--val", "0", "--batch-size", "4"))]


def test_every_example_has_data_it_trains_on():
    assert sorted(p.stem for p in EXAMPLES.glob("*.nn")) == sorted(f[0] for f in FITS)


@pytest.mark.parametrize("example, data, options", FITS, ids=[f[0] for f in FITS])
def test_nncc_train_runs_every_example(example, data, options, tmp_path):
    r = _nncc("train", EXAMPLES / f"{example}.nn", "--data", data, "--epochs", "3", *options,
              "--checkpoint", tmp_path / "best.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "epoch   3  train loss" in r.stdout
    params = _module(example).load_params(tmp_path / "best.npz")
    assert all(np.isfinite(v).all() for v in params.values())


def test_digits_reach_the_accuracy_the_readme_states(tmp_path):
    """The README's main command: Adam on the digits, a checkpoint and a curve."""
    r = _nncc("train", EXAMPLES / "digits.nn", "--data", "digits", "--optimizer", "adam(lr=0.005)",
              "--epochs", "30", "--checkpoint", tmp_path / "digits.npz", "--curve", tmp_path / "digits.png",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    accuracy = float(r.stdout.split("val accuracy ")[-1].split("%")[0])
    assert accuracy >= 98.0, r.stdout
    assert (tmp_path / "digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.npz", "digits.png"]


def test_a_resumed_run_is_the_run_that_never_stopped(tmp_path):
    module = _module("digits", "adam(lr=0.003)")
    data = fit(load("digits"), module, 0.2, 0, np.dtype(np.float64))
    quiet = dict(batch_size=64, lr=0.003, seed=0, say=lambda line: None)
    whole, history = train(module, data, epochs=4, **quiet)
    train(module, data, epochs=2, checkpoint=tmp_path / "c.npz", **quiet)
    resumed, history2 = train(module, data, epochs=4, checkpoint=tmp_path / "c.npz", resume=tmp_path / "c.npz",
                              **quiet)
    for name in whole:
        np.testing.assert_array_equal(whole[name], resumed[name])
    assert history.train_loss == history2.train_loss and history.val_accuracy == history2.val_accuracy
    last = module.load_params(tmp_path / "c.npz")  # the best epoch's
    for name in whole:
        np.testing.assert_array_equal(last[name], whole[name])


@pytest.mark.parametrize("example, data, message", [
    ("digits", "wine", "wine has 13 values per sample, but the network's input 'x' is [64] (64 values)"),
    ("zhou", "digits", "digits has 64 values per sample, but the network's input 'x' is [4]"),
    ("digits", "mnist", "unknown data 'mnist': name one of digits, iris, breast_cancer, wine"),
    ("xor", "nothere.csv", "cannot read nothere.csv: no such file"),
])
def test_data_that_does_not_fit_is_named(example, data, message, tmp_path):
    r = _nncc("train", EXAMPLES / f"{example}.nn", "--data", data, "--checkpoint", tmp_path / "c.npz", cwd=tmp_path)
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "c.npz").exists()


def test_files_of_data(tmp_path):
    module = _module("zhou")
    (tmp_path / "bad.csv").write_text("1,2,3,4,0\n1,2,x,4,1\n")
    with pytest.raises(DataError, match="row 2 is not 5 numbers"):
        load(str(tmp_path / "bad.csv"))
    np.savez(tmp_path / "d.npz", features=np.zeros((3, 4)))
    with pytest.raises(DataError, match="reads the arrays 'x'"):
        load(str(tmp_path / "d.npz"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(20, 4)), y=rng.integers(0, 3, 20))
    data = fit(load(str(tmp_path / "d.npz")), module, 0.25, 0, np.dtype(np.float32))
    assert data.x_train.shape == (15, 4) and data.y_train.shape == (15, 3) and data.labels_val.shape == (5,)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(20, 4)), y=rng.integers(0, 5, 20))
    with pytest.raises(DataError, match="5 classes, but the network's target 'y' is \\[3\\]"):
        fit(load(str(tmp_path / "d.npz")), module, 0.25, 0, np.dtype(np.float32))


def test_a_class_target_trains_on_the_labels_themselves(tmp_path):
    source = (EXAMPLES / "digits.nn").read_text(encoding="utf-8").replace("target y: [10]", "target y: class[10]")
    assert "class[10]" in source
    (tmp_path / "labels.nn").write_text(source, encoding="utf-8")
    module = load_module(source, "labels.nn")
    data = fit(load("digits"), module, 0.2, 0, np.dtype(np.float32))
    assert data.y_train.dtype == np.int64 and data.y_train.shape == (len(data.x_train),)
    r = _nncc("train", tmp_path / "labels.nn", "--data", "digits", "--epochs", "3", "--optimizer", "adam(lr=0.005)",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.split("val accuracy ")[-1].split("%")[0]) > 80
