"""Every gradient nncc derives agrees with central finite differences in float64.

Runs over the whole zoo (tests/nn_zoo.py): each example in examples/*.nn, each prelude
operator, the DAG features and user definitions.  Inputs are lifted into parameters
(conftest.lift_inputs) so the check perturbs parameters and inputs together, and then
each parameter (and each input) alone.
"""
from __future__ import annotations

import numpy as np
import pytest

import nn_zoo
from conftest import (LIFT_PREFIX, compile_nn, fd_check, init_params, lift_inputs, model_params,
                      random_data, record_worst)

FD_TOL = 1e-6


def _all_models():
    return nn_zoo.zoo()


def test_every_example_is_in_the_zoo():
    found = {p.stem for p in nn_zoo.example_paths()}
    assert found, "no examples/*.nn found"
    assert {m.id for m in nn_zoo.examples()} == {f"example-{s}" for s in found}


@pytest.mark.parametrize("model", model_params(_all_models()))
def test_gradients_match_finite_differences(model):
    lifted = compile_nn(lift_inputs(model.source), model.file_name)
    params = init_params(lifted, seed=1)
    inputs, targets = random_data(lifted, model.domains, model.batch, seed=2)
    errors = fd_check(lifted, params, *inputs, *targets, seed=3)
    worst_what = max(errors, key=errors.get)
    print(f"\n{model.id}: worst FD relative error {errors[worst_what]:.2e} ({worst_what})")
    record_worst("finite differences (float64)", errors[worst_what], f"{model.id}: {worst_what}")
    bad = {k: v for k, v in errors.items() if not v < FD_TOL}
    assert not bad, f"gradients disagree with finite differences: {bad}"
    # every input was lifted, so its gradient was checked too
    lifted_inputs = {n for n in errors if n.startswith(LIFT_PREFIX)}
    assert len(lifted_inputs) == len(lifted.INPUT_SHAPES)


@pytest.mark.parametrize("model", model_params(_all_models()))
def test_lifting_inputs_changes_nothing(model):
    """The unlifted program computes the same loss and gradients as the lifted one."""
    plain = compile_nn(model.source, model.file_name)
    lifted = compile_nn(lift_inputs(model.source), model.file_name)
    params = init_params(lifted, seed=1)
    inputs, targets = random_data(plain, model.domains, model.batch, seed=2)
    value, grads = lifted.loss_and_grad(params, *inputs, *targets)
    plain_params = {k: v for k, v in params.items() if not k.startswith(LIFT_PREFIX)}
    assert set(plain_params) == set(plain.PARAM_SHAPES)
    value0, grads0 = plain.loss_and_grad(plain_params, *inputs, *targets)
    assert value0 == pytest.approx(value, rel=1e-12, abs=1e-14)
    assert set(grads0) == set(plain_params)
    for name, g in grads0.items():
        np.testing.assert_allclose(g, grads[name], rtol=1e-10, atol=1e-13, err_msg=name)
    np.testing.assert_allclose(plain.forward(plain_params, *inputs), lifted.forward(params, *inputs),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("model", model_params(_all_models()))
def test_loss_is_the_loss_of_loss_and_grad(model):
    module = compile_nn(model.source, model.file_name)
    params = module.init_params(4, np.float64)
    inputs, targets = random_data(module, model.domains, model.batch, seed=5)
    value, _ = module.loss_and_grad(params, *inputs, *targets)
    assert isinstance(value, float)
    assert module.loss(params, *inputs, *targets) == pytest.approx(value, rel=1e-12, abs=1e-14)


def test_bias_false_has_no_bias_parameter():
    module = compile_nn(nn_zoo.program("nobias", "a = x |> dense(3, bias=false)\nloss = quadratic(a, y)"))
    assert module.PARAM_SHAPES == {"dense_1.weight": (3, 4)}


def test_name_keyword_names_the_parameters():
    module = compile_nn(nn_zoo.program("named", """
        b = x |> dense(5, name="hidden") |> sigmoid
        a = b |> dense(3) |> dense(3, name="out")
        loss = quadratic(a, y)
    """))
    assert list(module.PARAM_SHAPES) == ["hidden.weight", "hidden.bias", "dense_1.weight", "dense_1.bias",
                                         "out.weight", "out.bias"]


def test_parameters_are_numbered_per_operator_in_source_order():
    module = compile_nn(nn_zoo.program("numbered", """
        b = x |> dense(5) |> tanh
        c = b |> dense(4)
        a = concat(b, c) |> dense(3)
        loss = quadratic(a, y)
    """))
    assert module.PARAM_SHAPES == {
        "dense_1.weight": (5, 4), "dense_1.bias": (5,),
        "dense_2.weight": (4, 5), "dense_2.bias": (4,),
        "dense_3.weight": (3, 9), "dense_3.bias": (3,),
    }


def test_a_parameter_that_does_not_reach_the_loss_gets_a_zero_gradient():
    module = compile_nn(nn_zoo.program("unused", """
        a = x |> dense(3)
        side = x |> dense(2) |> tanh
        loss = quadratic(a, y)
    """))
    params = module.init_params(0, np.float64)
    inputs, targets = random_data(module)
    _, grads = module.loss_and_grad(params, *inputs, *targets)
    assert not np.any(grads["dense_2.weight"]) and not np.any(grads["dense_2.bias"])
    assert np.any(grads["dense_1.weight"])


def test_output_chooses_what_forward_returns():
    module = compile_nn(nn_zoo.program("outp", """
        h = x |> dense(5) |> tanh
        a = h |> dense(3)
        output h
        loss = quadratic(a, y)
    """))
    params = module.init_params(0, np.float64)
    (x,), _ = random_data(module, batch=2)
    expected = np.tanh(x @ params["dense_1.weight"].T + params["dense_1.bias"])
    np.testing.assert_allclose(module.forward(params, x), expected, rtol=1e-13)


def test_forward_returns_the_first_argument_of_the_loss_by_default():
    module = compile_nn(nn_zoo.program("first", """
        h = x |> dense(5) |> tanh
        a = h |> dense(3)
        loss = quadratic(a, y)
    """))
    params = module.init_params(0, np.float64)
    (x,), _ = random_data(module, batch=2)
    h = np.tanh(x @ params["dense_1.weight"].T + params["dense_1.bias"])
    np.testing.assert_allclose(module.forward(params, x), h @ params["dense_2.weight"].T + params["dense_2.bias"],
                               rtol=1e-13)


def test_init_keyword_chooses_the_distribution():
    source = nn_zoo.program("inits", """
        a = x |> dense(40, init="zeros") |> dense(30, init="he") |> dense(20, init="xavier") |> dense(3, init="normal")
        loss = quadratic(a, y)
    """)
    module = compile_nn(source)
    p = module.init_params(0, np.float64)
    assert not np.any(p["dense_1.weight"])
    assert np.std(p["dense_2.weight"]) == pytest.approx(np.sqrt(2 / 40), rel=0.15)
    bound = np.sqrt(6 / (30 + 20))
    assert np.abs(p["dense_3.weight"]).max() <= bound
    assert np.abs(p["dense_3.weight"]).max() > 0.9 * bound
    assert np.std(p["dense_4.weight"]) == pytest.approx(1 / np.sqrt(20), rel=0.3)


def test_a_max_over_parameters_alone():
    # max(j: ...) reads no batch axis: the window helper reduces every axis of its operand
    module = compile_nn(nn_zoo.program("maxnorm", "loss = quadratic(scaled(x), y)", targets={"y": [4]}, defs="""
        layer scaled(x: [n]) {
            param w: [n]
            y[i] = x[i] * w[i] / max(j: abs(w[j]))
        }
    """))
    params = init_params(module, seed=1)
    inputs, targets = random_data(module)
    errors = fd_check(module, params, *inputs, *targets, seed=3)
    assert max(errors.values()) < 1e-6, errors
