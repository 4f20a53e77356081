"""The Linear(4, 2) check of "Back-propagation explained", by hand.

With weight = 1, bias = 0 and x = ones(1, 4): y = W x + b = 4 in both outputs,
L = sum of y^2 = 32, dL/dy = 2y = 8, dL/dW[i, j] = 8 * x[j] = 8 and dL/db = 8.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import compile_nn
from nn_zoo import EXAMPLES


@pytest.fixture(scope="module")
def linear42():
    path = EXAMPLES / "linear42.nn"
    return compile_nn(path.read_text(encoding="utf-8"), "examples/linear42.nn")


@pytest.fixture(params=[np.float64, np.float32], ids=["float64", "float32"])
def setup(request, linear42):
    dtype = request.param
    params = {"dense_1.weight": np.ones((2, 4), dtype), "dense_1.bias": np.zeros(2, dtype)}
    return linear42, params, np.ones((1, 4), dtype), dtype


def test_shapes(linear42):
    assert linear42.PARAM_SHAPES == {"dense_1.weight": (2, 4), "dense_1.bias": (2,)}
    assert linear42.INPUT_SHAPES == {"x": (4,)}
    assert linear42.TARGET_SHAPES == {}


def test_forward_is_four(setup):
    module, params, x, dtype = setup
    y = module.forward(params, x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, np.full((1, 2), 4.0))


def test_loss_is_32(setup):
    module, params, x, _ = setup
    assert module.loss(params, x) == 32.0


def test_gradients_are_8(setup):
    module, params, x, dtype = setup
    value, grads = module.loss_and_grad(params, x)
    assert value == 32.0
    np.testing.assert_array_equal(grads["dense_1.weight"], np.full((2, 4), 8.0))
    np.testing.assert_array_equal(grads["dense_1.bias"], np.full(2, 8.0))
    assert grads["dense_1.weight"].dtype == dtype and grads["dense_1.bias"].dtype == dtype


def test_sum_reduction_doubles_with_two_identical_samples(setup):
    """`loss = sum ...`: two copies of the sample give twice the loss and gradients."""
    module, params, x, _ = setup
    value, grads = module.loss_and_grad(params, np.concatenate([x, x]))
    assert value == 64.0
    np.testing.assert_array_equal(grads["dense_1.weight"], np.full((2, 4), 16.0))
    np.testing.assert_array_equal(grads["dense_1.bias"], np.full(2, 16.0))


def test_sgd_step_from_the_worked_example(setup):
    module, params, x, _ = setup
    assert module.sgd_step(params, x, lr=0.01) == 32.0
    np.testing.assert_allclose(params["dense_1.weight"], np.full((2, 4), 1 - 0.08), rtol=1e-6)
    np.testing.assert_allclose(params["dense_1.bias"], np.full(2, -0.08), rtol=1e-6)
