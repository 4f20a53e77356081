"""Frozen layers: no gradient, no backward step that only feeds them, no update."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

import nn_zoo
from conftest import random_data
from nncc.api import compile_source, load_module
from nncc.errors import NNError


def _example(name):
    return next(m for m in nn_zoo.examples() if m.id == f"example-{name}")


def test_a_frozen_layer_gets_no_gradient_and_stops_the_backward_pass():
    model = _example("lenet")
    frozen = compile_source(model.source, model.file_name, freeze=("conv2d_1",))
    whole = compile_source(model.source, model.file_name)
    targets = [st.target for st in frozen.program.backward]
    # nothing below conv2d_2: not the pool's backward, not conv2d_1's
    assert "d_conv2d_2_weight" in targets and "d_h" not in targets and "d_conv2d_1" not in targets
    assert not any(t.startswith("d_conv2d_1") for t in targets)
    assert len(targets) < len(whole.program.backward)
    a, b = load_module(model.source, model.file_name, freeze=("conv2d_1",)), load_module(model.source, model.file_name)
    assert a.TRAINED == ("conv2d_2.weight", "conv2d_2.bias", "dense_1.weight", "dense_1.bias")
    params = a.init_params(1, np.float64)
    inputs, targets_ = random_data(a, model.domains, 3, seed=2)
    _, ga = a.loss_and_grad(params, *inputs, *targets_)
    _, gb = b.loss_and_grad(params, *inputs, *targets_)
    for name in params:
        expected = np.zeros_like(gb[name]) if name.startswith("conv2d_1") else gb[name]
        np.testing.assert_array_equal(ga[name], expected)


def _c_module(source, file, optimizer):
    import types

    from nncc.backends.c.codegen import render_c_module
    module = types.ModuleType("freeze_c")
    exec(compile(render_c_module(compile_source(source, file, optimizer)), "<c>", "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("backend", ["numpy", pytest.param("c", marks=pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"))])
def test_train_step_leaves_a_frozen_layer_alone_and_matches_torch(backend):
    torch = pytest.importorskip("torch")
    model = _example("digits")
    source = model.source + "\nfreeze dense_1\n"
    module = load_module(source, model.file_name, optimizer="adamw(lr=0.01)") if backend == "numpy" else \
        _c_module(source, model.file_name, "adamw(lr=0.01)")
    params = module.init_params(0, np.float64)
    inputs, targets = random_data(module, model.domains, 4, seed=3)
    P = {k: torch.tensor(v, requires_grad=not k.startswith("dense_1")) for k, v in params.items()}
    opt = torch.optim.AdamW(list(P.values()), lr=0.01)  # a parameter without a gradient is skipped
    X, Y = {"x": torch.tensor(inputs[0])}, {"y": torch.tensor(targets[0])}
    state = module.init_state(params)
    assert set(state["exp_avg"]) == {"dense_2.weight", "dense_2.bias"}
    before = {k: v.copy() for k, v in params.items()}
    for _ in range(3):
        opt.zero_grad()
        model.twin(P, X, Y)[1].backward()
        opt.step()
        module.train_step(params, state, *inputs, *targets)
    np.testing.assert_array_equal(params["dense_1.weight"], before["dense_1.weight"])
    for k in params:
        np.testing.assert_allclose(params[k], P[k].detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("line, message", [
    ("freeze dense_3", "no layer 'dense_3' to freeze; did you mean 'dense_2'?"),
    ("freeze relu_1", "'relu_1' has no parameters to freeze"),
    ("freeze dense_1(2)", "'freeze' names one layer"),
])
def test_freezing_what_is_not_there_is_located(line, message):
    model = _example("digits")
    with pytest.raises(NNError) as err:
        compile_source(model.source + "\n" + line + "\n", model.file_name)
    assert message in str(err.value) and err.value.loc.line > 8


def test_fine_tuning_from_saved_parameters(tmp_path):
    pytest.importorskip("sklearn")
    model = _example("digits")
    first = load_module(model.source, model.file_name)
    saved = first.init_params(7)
    first.save_params(tmp_path / "start.npz", saved)
    r = subprocess.run([sys.executable, "-m", "nncc", "train", "examples/digits.nn", "--data", "digits",
                        "--epochs", "2", "--init", str(tmp_path / "start.npz"), "--freeze", "dense_1",
                        "--checkpoint", str(tmp_path / "tuned.npz")], capture_output=True, text=True,
                       cwd=nn_zoo.EXAMPLES.parent, timeout=600)
    assert r.returncode == 0, r.stderr
    tuned = first.load_params(tmp_path / "tuned.npz")
    np.testing.assert_array_equal(tuned["dense_1.weight"], saved["dense_1.weight"])
    assert not np.array_equal(tuned["dense_2.weight"], saved["dense_2.weight"])
