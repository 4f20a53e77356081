"""input_grad (nncc --input-grad): the loss's gradient with respect to each input, per
sample, in both backends, against PyTorch's x.grad and central finite differences."""
from __future__ import annotations

import shutil
import types

import numpy as np
import pytest

import nn_zoo
from conftest import random_data
from nncc.api import compile_source, load_module
from nncc.backends.c.codegen import render_c_module

TWINS = [m for m in nn_zoo.examples() if m.twin is not None]
needs_cc = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")


def _module(model, backend):
    if backend == "numpy":
        return load_module(model.source, model.file_name, input_grad=True)
    module = types.ModuleType("input_grad_c")
    text = render_c_module(compile_source(model.source, model.file_name, input_grad=True))
    exec(compile(text, "<input_grad c>", "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("backend", ["numpy", pytest.param("c", marks=needs_cc)])
@pytest.mark.parametrize("model", TWINS, ids=[m.id for m in TWINS])
def test_input_gradients_match_torch(model, backend):
    torch = pytest.importorskip("torch")
    module = _module(model, backend)
    params = module.init_params(1, np.float64)
    inputs, targets = random_data(module, model.domains, model.batch, seed=4)
    value, grads = module.input_grad(params, *inputs, *targets)
    P = {k: torch.tensor(v) for k, v in params.items()}
    X = {k: torch.tensor(v, requires_grad=True) for k, v in zip(module.INPUT_SHAPES, inputs)}
    Y = {k: torch.tensor(v) for k, v in zip(module.TARGET_SHAPES, targets)}
    loss = model.twin(P, X, Y)[1]
    loss.backward()
    assert abs(value - float(loss.detach())) <= 1e-12 * max(abs(float(loss.detach())), 1e-30)
    for name, x in X.items():
        expected = x.grad.numpy()
        assert grads[name].shape == expected.shape
        assert np.max(np.abs(grads[name] - expected)) <= 1e-10 * max(np.max(np.abs(expected)), 1e-30), name


def test_input_gradients_match_finite_differences():
    model = next(m for m in nn_zoo.examples() if m.id == "example-lenet")
    module = _module(model, "numpy")
    params = module.init_params(2, np.float64)
    inputs, targets = random_data(module, model.domains, 2, seed=5)
    _, grads = module.input_grad(params, *inputs, *targets)
    x = inputs[0]
    rng = np.random.default_rng(0)
    for _ in range(12):
        at = tuple(rng.integers(0, n) for n in x.shape)
        up, down = x.copy(), x.copy()
        up[at] += 1e-6
        down[at] -= 1e-6
        fd = (module.loss(params, up, *targets) - module.loss(params, down, *targets)) / 2e-6
        assert abs(fd - grads["x"][at]) <= 1e-7 + 1e-5 * abs(fd), at


def test_input_grad_is_made_only_when_asked_for():
    model = next(m for m in nn_zoo.examples() if m.id == "example-digits")
    assert not hasattr(load_module(model.source, model.file_name), "input_grad")
    plain = compile_source(model.source, model.file_name)
    asked = compile_source(model.source, model.file_name, input_grad=True)
    # the parameters' backward pass is the same either way
    assert [st.target for st in plain.program.backward] == [st.target for st in asked.program.backward]
