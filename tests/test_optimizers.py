"""train_step's optimizers (the prelude's `optimizer` definitions) against torch.optim.

Each case compiles an example with one optimizer (numpy module and C), takes five steps with train_step in
float64, and takes the same five steps in PyTorch with the example's twin (nn_zoo) and
torch.optim (and clip_grad_norm_ where the case clips): parameters, losses and the
optimizer's state agree to 1e-12.  The errors users meet (an unknown optimizer or
option, a malformed state) are checked too.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import nn_zoo
from conftest import random_data
from nncc.api import load_module
from nncc.errors import NNError

torch = pytest.importorskip("torch")

STEPS = 5
# (nncc optimizer, torch.optim class, its keyword arguments, the state names each keeps)
CASES = {
    "sgd": ("sgd(lr=0.1)", "SGD", dict(lr=0.1)),
    "sgd-decay": ("sgd(lr=0.1, weight_decay=0.01)", "SGD", dict(lr=0.1, weight_decay=0.01)),
    "momentum": ("sgd(lr=0.1, momentum=0.9)", "SGD", dict(lr=0.1, momentum=0.9)),
    "momentum-dampening": ("sgd(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.001)", "SGD",
                           dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.001)),
    "nesterov": ("sgd(lr=0.1, momentum=0.9, nesterov=true)", "SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    "adam": ("adam(lr=0.01)", "Adam", dict(lr=0.01)),
    "adam-l2": ("adam(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.05)", "Adam",
                dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    "adamw": ("adamw(lr=0.01)", "AdamW", dict(lr=0.01)),
    "adamw-decay": ("adamw(lr=0.02, weight_decay=0.1)", "AdamW", dict(lr=0.02, weight_decay=0.1)),
}
TORCH_STATE = {"momentum_buffer": "momentum_buffer", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}


def _example(name):
    return next(m for m in nn_zoo.examples() if m.id == f"example-{name}")


def _rel(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.max(np.abs(ours - theirs)) / max(float(np.max(np.abs(theirs))), 1e-300))


def _torch_run(model, params, inputs, targets, module, optim, kwargs, lrs, max_norm):
    P = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    X = {k: torch.tensor(v) for k, v in zip(module.INPUT_SHAPES, inputs)}
    Y = {k: torch.tensor(v) for k, v in zip(module.TARGET_SHAPES, targets)}
    opt = getattr(torch.optim, optim)(list(P.values()), **kwargs)
    losses = []
    for lr in lrs:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        _, loss = model.twin(P, X, Y)
        loss.backward()
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(P.values()), max_norm)
        opt.step()
        losses.append(float(loss.detach()))
    state = {k: {name: opt.state[p] for name, p in P.items()} for k in TORCH_STATE}
    return {k: p.detach().numpy() for k, p in P.items()}, losses, state


def _c_module(model, spec):
    import types

    from nncc.api import compile_source
    from nncc.backends.c.codegen import render_c_module
    module = types.ModuleType("optimizer_c")
    exec(compile(render_c_module(compile_source(model.source, model.file_name, spec)), "<c>", "exec"),
         module.__dict__)
    return module


needs_cc = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")


@pytest.mark.parametrize("backend", ["numpy", pytest.param("c", marks=needs_cc)])
@pytest.mark.parametrize("example", ["nielsen", "lenet"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_optimizer_matches_torch_optim(example, case, backend):
    spec, optim, kwargs = CASES[case]
    model = _example(example)
    module = load_module(model.source, model.file_name, optimizer=spec) if backend == "numpy" else \
        _c_module(model, spec)
    params = {k: np.array(v) for k, v in module.init_params(3, np.float64).items()}
    inputs, targets = random_data(module, model.domains, model.batch, seed=1)
    lrs = [kwargs["lr"]] * STEPS
    theirs, their_losses, their_state = _torch_run(model, params, inputs, targets, module, optim, kwargs, lrs, None)
    ours = module.init_params(3, np.float64)  # the module's own arrays (the C module's views)
    state = module.init_state(ours)
    losses = [module.train_step(ours, state, *inputs, *targets, lr=lr) for lr in lrs]
    assert state["step"] == STEPS
    np.testing.assert_allclose(losses, their_losses, rtol=1e-12)
    for name in ours:
        assert _rel(ours[name], theirs[name]) <= 1e-12, name
    for kept in module.STATE_NAMES:
        for name in ours:
            assert _rel(state[kept][name], their_state[kept][name][kept].numpy()) <= 1e-12, (kept, name)


def test_no_state_where_torch_keeps_none():
    """Plain SGD and SGD with weight decay keep nothing; momentum keeps one buffer."""
    model = _example("nielsen")
    assert load_module(model.source, model.file_name, optimizer="sgd").STATE_NAMES == ()
    assert load_module(model.source, model.file_name, optimizer="sgd(weight_decay=0.1)").STATE_NAMES == ()
    assert load_module(model.source, model.file_name, optimizer="sgd(momentum=0.5)").STATE_NAMES == ("momentum_buffer",)
    assert load_module(model.source, model.file_name, optimizer="adam").STATE_NAMES == ("exp_avg", "exp_avg_sq")


@pytest.mark.parametrize("case", ["sgd", "adam"])
def test_clipping_and_a_schedule_match_torch(case):
    spec, optim, kwargs = CASES[case]
    model = _example("nielsen")
    module = load_module(model.source, model.file_name, optimizer=spec)
    params = module.init_params(5, np.float64)
    inputs, targets = random_data(module, model.domains, model.batch, seed=2)
    lrs = [kwargs["lr"] * 0.5 ** k for k in range(STEPS)]
    theirs, their_losses, _ = _torch_run(model, params, inputs, targets, module, optim, kwargs, lrs, 0.05)
    state = module.init_state(params)
    ours = {k: v.copy() for k, v in params.items()}
    losses = [module.train_step(ours, state, *inputs, *targets, lr=lr, max_norm=0.05) for lr in lrs]
    np.testing.assert_allclose(losses, their_losses, rtol=1e-12)
    for name in ours:
        assert _rel(ours[name], theirs[name]) <= 1e-12, name


def test_float32_steps_stay_float32():
    model = _example("lenet")
    module = load_module(model.source, model.file_name, optimizer="adamw(lr=0.01)")
    params = module.init_params(0, np.float32)
    inputs, targets = random_data(module, model.domains, model.batch, dtype=np.float32)
    state = module.init_state(params)
    before = module.loss(params, *inputs, *targets)
    for _ in range(3):
        module.train_step(params, state, *inputs, *targets)
    assert all(v.dtype == np.float32 for v in params.values())
    assert all(a.dtype == np.float32 for k in module.STATE_NAMES for a in state[k].values())
    assert module.loss(params, *inputs, *targets) < before


def test_the_program_chooses_the_optimizer_and_lr_defaults_to_its_value():
    source = _example("nielsen").source + "\noptimizer adam(lr = 0.005, beta2 = 0.99)\n"
    module = load_module(source, "n.nn")
    assert module.OPTIMIZER == ("adam", {"lr": 0.005, "beta1": 0.9, "beta2": 0.99, "eps": 1e-08,
                                         "weight_decay": 0.0})
    import inspect
    assert inspect.signature(module.train_step).parameters["lr"].default == 0.005


def test_a_user_defined_optimizer():
    source = _example("nielsen").source + """
optimizer signsgd(lr = 0.01) {
    p = p - lr * where(g > 0, 1, where(g < 0, -1, 0))
}
optimizer signsgd(lr = 0.002)
"""
    module = load_module(source, "n.nn")
    params = module.init_params(0, np.float64)
    inputs, targets = random_data(module, {"x": nn_zoo.Uniform(0, 1)}, 3)
    _, grads = module.loss_and_grad(params, *inputs, *targets)
    new = {k: v.copy() for k, v in params.items()}
    module.train_step(new, module.init_state(new), *inputs, *targets)
    for k in params:
        np.testing.assert_array_equal(new[k], params[k] - 0.002 * np.sign(grads[k]))


@pytest.mark.parametrize("text, message", [
    ("optimizer adma", "unknown optimizer 'adma'; did you mean 'adam'?"),
    ("optimizer adam(lr=0.1, beta=0.9)", "optimizer 'adam' has no option 'beta'"),
    ("optimizer adam(lr=0)", "the learning rate must be a positive number"),
    ("optimizer sgd\noptimizer adam", "the optimizer is chosen twice"),
    ("optimiser adam", "unknown statement 'optimiser'; did you mean 'optimizer'?"),
    ("optimizer o(lr = 1) {\n    state m\n    p = p - lr * g\n}", "the state 'm' is never updated"),
    ("optimizer o(lr = 1) {\n    m = g\n}", "optimizer 'o' never updates the parameter"),
    ("optimizer o(rate = 1) {\n    p = p - g\n}", "optimizer 'o' needs a learning rate option 'lr'"),
    ("optimizer o(lr = 1) {\n    d = p\n    p = p - lr * g\n    p = d\n}",
     "'d' was computed from p before p was updated"),
    ("optimizer o(lr = 1) {\n    g = 2 * g\n    p = p - lr * g\n}", "'g' cannot be assigned"),
    ("optimizer o(lr = 1) {\n    stat m\n    p = p - lr * g\n}", "unknown declaration 'stat'"),
])
def test_optimizer_mistakes_are_located(text, message):
    source = _example("nielsen").source + "\n" + text + "\n"
    with pytest.raises(NNError) as err:
        load_module(source, "n.nn")
    assert message in str(err.value)
    assert err.value.loc is not None and err.value.loc.line > 10


def test_a_malformed_state_is_named():
    model = _example("nielsen")
    module = load_module(model.source, model.file_name, optimizer="adam")
    params = module.init_params(0)
    inputs, targets = random_data(module, model.domains, 2, dtype=np.float32)
    state = module.init_state(params)
    del state["exp_avg"]["dense_1.bias"]
    with pytest.raises(ValueError, match=r"state\['exp_avg'\]\['dense_1.bias'\] must be a numpy array"):
        module.train_step(params, state, *inputs, *targets)
    with pytest.raises(ValueError, match="state must be the dict init_state"):
        module.train_step(params, {}, *inputs, *targets)
    state = module.init_state(params)
    state["step"] = -1
    with pytest.raises(ValueError, match="whole number"):
        module.train_step(params, state, *inputs, *targets)

