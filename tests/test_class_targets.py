"""Targets of class indices (`target y: class[10]`), PyTorch's cross_entropy(logits, labels)
habit: one integer per sample, read by the formulas as the one-hot row it stands for
without a one-hot array, in both backends, checked at run time."""
from __future__ import annotations

import shutil
import types

import numpy as np
import pytest

from nncc.api import compile_source, load_module
from nncc.backends.c.codegen import render_c_module
from nncc.errors import NNError

torch = pytest.importorskip("torch")
F = torch.nn.functional

SOURCE = """
network classes
input  x: [1, 8, 8]
target label: class[10]
h = x |> conv2d(4, 3, padding=1) |> relu |> maxpool2d(2)
z = h |> flatten |> dense(10)
loss = softmax_cross_entropy(z, label)
"""
needs_cc = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")


def _c(source):
    module = types.ModuleType("classes_c")
    exec(compile(render_c_module(compile_source(source, "classes.nn")), "<classes c>", "exec"), module.__dict__)
    return module


def _torch(params, x, labels, dtype):
    P = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in params.items()}
    h = F.max_pool2d(F.relu(F.conv2d(torch.tensor(x, dtype=dtype), P["conv2d_1.weight"], P["conv2d_1.bias"],
                                     padding=1)), 2)
    z = F.linear(h.flatten(1), P["dense_1.weight"], P["dense_1.bias"])
    loss = F.cross_entropy(z, torch.tensor(labels))
    loss.backward()
    return float(loss.detach()), {k: p.grad.numpy() for k, p in P.items()}


@pytest.mark.parametrize("backend", ["numpy", pytest.param("c", marks=needs_cc)])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_class_targets_match_torch_cross_entropy(backend, dtype, tol):
    module = load_module(SOURCE, "classes.nn") if backend == "numpy" else _c(SOURCE)
    assert module.TARGET_SHAPES == {"label": ()} and module.TARGET_CLASSES == {"label": 10}
    params = module.init_params(2, dtype)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (6, 1, 8, 8)).astype(dtype)
    labels = np.array([3, 0, 9, 3, 7, 1])
    value, grads = module.loss_and_grad(params, x, labels)
    expected, expected_grads = _torch(params, x, labels, torch.float64 if dtype == np.float64 else torch.float32)
    assert abs(value - expected) <= tol * abs(expected)
    for k in grads:
        assert np.max(np.abs(grads[k] - expected_grads[k])) <= tol * np.max(np.abs(expected_grads[k])), k
    state = module.init_state(params)
    before = module.loss(params, x, labels)
    for _ in range(3):
        module.train_step(params, state, x, labels, lr=0.05)
    assert module.loss(params, x, labels) < before


@pytest.mark.parametrize("backend", ["numpy", pytest.param("c", marks=needs_cc)])
@pytest.mark.parametrize("labels, message", [
    (np.array([3, 10]), "'label' holds the class index 10, but there are 10 classes (0 to 9)"),
    (np.array([-1, 2]), "'label' holds the class index -1"),
    (np.array([1.0, 2.0]), "'label' holds class indices, whole numbers from 0 to 9; got float64"),
    (np.array([[1], [2]]), "'label' must have shape (batch,), got (2, 1)"),
])
def test_bad_class_indices_are_named_alike_in_both_backends(backend, labels, message):
    module = load_module(SOURCE, "classes.nn") if backend == "numpy" else _c(SOURCE)
    params = module.init_params(0, np.float64)
    with pytest.raises(ValueError) as err:
        module.loss(params, np.zeros((2, 1, 8, 8)), labels)
    assert message in str(err.value)


@pytest.mark.parametrize("line, message", [
    ("target label: klass[10]", "unknown kind of target 'klass'; did you mean 'class'?"),
    ("target label: class[2, 5]", "class[k] takes one number"),
    ("target label: class[1]", "a class target needs at least 2 classes"),
])
def test_class_declarations_are_checked(line, message):
    with pytest.raises(NNError) as err:
        compile_source(SOURCE.replace("target label: class[10]", line), "classes.nn")
    assert message in str(err.value) and err.value.loc.line == 4
