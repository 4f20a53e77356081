"""nncc agrees with PyTorch autograd: loss, every gradient and the forward output.

Each zoo model (tests/nn_zoo.py) with a `twin` is the same network written in PyTorch
with torch's own layers and losses (F.linear with weight (out, in), F.cross_entropy,
F.binary_cross_entropy, nn.MSELoss, ...).  The parameters are copied by name from nncc's
`params` dict.  Input gradients (batch-summed) come from the lifted program.  float64 must agree to ~1e-10; float32 (nncc float32 vs torch float32) to
~1e-4.  The worst errors are printed (pytest -s) and summarised at the end of the run.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nn_zoo  # noqa: E402
from conftest import (LIFT_PREFIX, compile_nn, lift_inputs, model_params, random_data,  # noqa: E402
                      record_worst)

TOL = {np.float64: 1e-10, np.float32: 2e-4}
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}


def rel_err(ours, theirs, floor=1e-12) -> float:
    """max |ours - theirs| relative to max |theirs| (never less than floor)."""
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, f"shape {ours.shape} != {theirs.shape}"
    if ours.size == 0:
        return 0.0
    return float(np.max(np.abs(ours - theirs)) / max(float(np.max(np.abs(theirs))), floor))


def run_twin(model, params, inputs, targets, module, dtype):
    tdt = TORCH_DTYPE[dtype]
    P = {k: torch.tensor(v, dtype=tdt, requires_grad=True) for k, v in params.items()}
    X = {k: torch.tensor(v, dtype=tdt, requires_grad=True) for k, v in zip(module.INPUT_SHAPES, inputs)}
    Y = {k: torch.tensor(v, dtype=tdt) for k, v in zip(module.TARGET_SHAPES, targets)}
    out, loss = model.twin(P, X, Y)
    assert loss.dim() == 0
    if loss.requires_grad:  # a model straight on its inputs has no parameters
        loss.backward()
    grads = {k: (p.grad.numpy() if p.grad is not None else np.zeros(p.shape)) for k, p in P.items()}
    # dL/dx summed over the batch: what the lifted program reports as `input_x.shift`
    for k, x in X.items():
        grads[f"{LIFT_PREFIX}{k}.shift"] = x.grad.sum(0).numpy() if x.grad is not None else np.zeros(x.shape[1:])
    return out.detach().numpy(), float(loss.detach()), grads


def _torch_models():
    return [m for m in nn_zoo.zoo() if m.twin is not None or m.id.startswith("example-")]


def test_every_prelude_operator_has_a_torch_twin():
    ops = {m.id for m in nn_zoo.operator_models() if m.twin is not None}
    assert ops == {m.id for m in nn_zoo.operator_models()}
    assert {op.name for op in nn_zoo.ELEMENTWISE} >= {
        "sigmoid", "tanh", "relu", "leaky_relu", "softplus", "elu", "silu", "exp", "log", "identity", "abs", "sqrt"}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("model", model_params(_torch_models()))
def test_matches_torch(model, dtype):
    if model.twin is None:
        pytest.skip(f"no PyTorch twin written for {model.file_name}; add one to nn_zoo.EXAMPLE_EXTRAS")
    module = compile_nn(model.source, model.file_name)
    params64 = module.init_params(7, np.float64)
    inputs, targets = random_data(module, model.domains, model.batch, seed=8)
    params = {k: v.astype(dtype) for k, v in params64.items()}
    inputs = [a.astype(dtype) for a in inputs]
    targets = [a.astype(dtype) for a in targets]
    t_out, t_loss, t_grads = run_twin(model, params, inputs, targets, module, dtype)

    value, grads = module.loss_and_grad(params, *inputs, *targets)
    out = module.forward(params, *inputs)
    assert set(grads) == set(module.PARAM_SHAPES)
    # input gradients, through the lifted program (conftest.lift_inputs)
    lifted = compile_nn(lift_inputs(model.source), model.file_name)
    shifts = {k: np.zeros(s, dtype) for k, s in lifted.PARAM_SHAPES.items() if k.startswith(LIFT_PREFIX)}
    _, lifted_grads = lifted.loss_and_grad({**params, **shifts}, *inputs, *targets)
    grads.update({k: lifted_grads[k] for k in shifts})
    assert set(grads) == set(t_grads)

    name = np.dtype(dtype).name
    errors = {"loss": rel_err(value, t_loss), "forward": rel_err(out, t_out)}
    for k in grads:
        kind = "input-grad" if k.startswith(LIFT_PREFIX) else "grad"
        errors[f"{kind} {k}"] = rel_err(grads[k], t_grads[k])
    print(f"\n{model.id} [{name}]: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    for k, v in errors.items():
        record_worst(f"torch {name} {k.split(' ')[0]}", v, f"{model.id}: {k}")
    tol = TOL[dtype]
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"nncc and PyTorch disagree beyond {tol:g}: {bad}"
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads.values())
    assert isinstance(value, float)
