"""Numerics of the generated module: dtypes, argument checks, extreme inputs, kinks, init, SGD."""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

import nn_zoo
from conftest import compile_nn, random_data

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])


def _example(stem):
    path = nn_zoo.EXAMPLES / f"{stem}.nn"
    return compile_nn(path.read_text(encoding="utf-8"), f"examples/{path.name}")


@pytest.fixture(scope="module")
def nielsen():
    return _example("nielsen")


@pytest.fixture(scope="module")
def xor():
    return _example("xor")


# ---- dtypes ----------------------------------------------------------------------------

@DTYPES
@pytest.mark.parametrize("stem", ["nielsen", "xor", "digits"])
def test_dtype_in_is_dtype_out(stem, dtype):
    module = _example(stem)
    params = module.init_params(0, dtype)
    assert all(p.dtype == dtype for p in params.values())
    inputs, targets = random_data(module, batch=3, dtype=dtype)
    out = module.forward(params, *inputs)
    assert out.dtype == dtype
    value, grads = module.loss_and_grad(params, *inputs, *targets)
    assert type(value) is float and type(module.loss(params, *inputs, *targets)) is float
    assert all(g.dtype == dtype for g in grads.values())
    before = {k: v.copy() for k, v in params.items()}
    step_value = module.sgd_step(params, *inputs, *targets, lr=0.1)
    assert type(step_value) is float
    assert all(p.dtype == dtype for p in params.values())
    assert any(not np.array_equal(before[k], params[k]) for k in params)


@pytest.mark.parametrize("what", ["input", "target", "param"])
def test_mixed_dtypes_raise_value_error(xor, what):
    params = xor.init_params(0, np.float32)
    x = np.zeros((2, 2), np.float32)
    y = np.zeros((2, 1), np.float32)
    if what == "input":
        x = x.astype(np.float64)
    elif what == "target":
        y = y.astype(np.float64)
    else:
        params["dense_2.bias"] = params["dense_2.bias"].astype(np.float64)
    for call in (lambda: xor.loss(params, x, y), lambda: xor.loss_and_grad(params, x, y),
                 lambda: xor.sgd_step(params, x, y, 0.1)):
        with pytest.raises(ValueError, match="float"):
            call()


def test_integer_inputs_are_refused(xor):
    params = xor.init_params(0, np.float64)
    with pytest.raises(ValueError):
        xor.forward(params, np.zeros((2, 2), np.int64))


@pytest.mark.parametrize("dtype", [np.float16, np.longdouble])
def test_only_float32_and_float64_are_accepted(xor, dtype):
    params = {k: v.astype(dtype) for k, v in xor.init_params(0).items()}
    with pytest.raises(ValueError, match="float32 or float64"):
        xor.loss(params, np.zeros((2, 2), dtype), np.zeros((2, 1), dtype))


def test_non_native_byte_order_is_refused_in_plain_words(xor):
    params = xor.init_params(0, np.float32)
    x = np.zeros((2, 2), np.dtype(np.float32).newbyteorder())
    with pytest.raises(ValueError, match=r"'x' is float32 in non-native byte order .*x.astype\(np.float32\)"):
        xor.loss(params, x, np.zeros((2, 1), np.float32))


def test_a_list_is_refused_as_a_list(xor):
    params = xor.init_params(0, np.float64)
    with pytest.raises(ValueError, match="'x' must be a numpy array, got a list"):
        xor.forward(params, [[0.0, 1.0]])


@pytest.mark.parametrize("shape", [(5, 783), (5, 784, 1), (784,)])
def test_wrong_input_shape_names_input_and_expected_shape(nielsen, shape):
    params = nielsen.init_params(0)
    with pytest.raises(ValueError) as info:
        nielsen.forward(params, np.zeros(shape, np.float32))
    message = str(info.value)
    assert "'x'" in message and "784" in message


def test_wrong_target_shape_names_target(nielsen):
    params = nielsen.init_params(0)
    with pytest.raises(ValueError) as info:
        nielsen.loss(params, np.zeros((5, 784), np.float32), np.zeros((5, 9), np.float32))
    assert "'y'" in str(info.value) and "10" in str(info.value)


def test_batch_sizes_must_agree(nielsen):
    params = nielsen.init_params(0)
    with pytest.raises(ValueError, match="batch"):
        nielsen.loss(params, np.zeros((5, 784), np.float32), np.zeros((4, 10), np.float32))


def test_missing_param_names_it_and_its_shape(nielsen):
    params = nielsen.init_params(0)
    del params["dense_2.weight"]
    with pytest.raises(ValueError) as info:
        nielsen.loss_and_grad(params, np.zeros((5, 784), np.float32), np.zeros((5, 10), np.float32))
    assert "dense_2.weight" in str(info.value) and "(10, 30)" in str(info.value)


def test_wrong_param_shape_names_it_and_its_shape(nielsen):
    params = nielsen.init_params(0)
    params["dense_1.weight"] = params["dense_1.weight"].T.copy()
    with pytest.raises(ValueError) as info:
        nielsen.forward(params, np.zeros((5, 784), np.float32))
    assert "dense_1.weight" in str(info.value) and "(30, 784)" in str(info.value)


def test_arguments_may_be_passed_by_name(xor):
    params = xor.init_params(0, np.float64)
    x, y = np.ones((2, 2)), np.ones((2, 1))
    assert xor.loss(params, x=x, y=y) == xor.loss(params, x, y)
    assert xor.loss_and_grad(params, y=y, x=x)[0] == xor.loss(params, x, y)


# ---- inputs of +-1000 -----------------------------------------------------------------

EXTREME = {  # body after `h = x |> dense(4)` (weight = I, bias = 0: h = x = +-1000)
    "sigmoid": "a = h |> sigmoid\nloss = quadratic(a, y)",
    "softplus": "a = h |> softplus\nloss = quadratic(a, y)",
    "silu": "a = h |> silu\nloss = quadratic(a, y)",
    "tanh": "a = h |> tanh\nloss = quadratic(a, y)",
    "elu": "a = h |> elu\nloss = quadratic(a, y)",
    "softmax": "a = h |> softmax\nloss = quadratic(a, y)",
    "log_softmax": "a = h |> log_softmax\nloss = quadratic(a, y)",
    "bce-after-sigmoid": "a = h |> sigmoid\nloss = binary_cross_entropy(a, y)",
    "softmax_cross_entropy": "loss = softmax_cross_entropy(h, y)",
}


def _extreme_twin(name, h, y):
    import torch
    import torch.nn.functional as F
    q = lambda a: (0.5 * ((a - y) ** 2).sum(1)).mean()  # noqa: E731
    return {
        "sigmoid": lambda: (torch.sigmoid(h), q(torch.sigmoid(h))),
        "softplus": lambda: (F.softplus(h), q(F.softplus(h))),
        "silu": lambda: (F.silu(h), q(F.silu(h))),
        "tanh": lambda: (torch.tanh(h), q(torch.tanh(h))),
        "elu": lambda: (F.elu(h), q(F.elu(h))),
        "softmax": lambda: (F.softmax(h, 1), q(F.softmax(h, 1))),
        "log_softmax": lambda: (F.log_softmax(h, 1), q(F.log_softmax(h, 1))),
        "bce-after-sigmoid": lambda: (torch.sigmoid(h), F.binary_cross_entropy(torch.sigmoid(h), y,
                                                                               reduction="sum") / h.shape[0]),
        "softmax_cross_entropy": lambda: (h, F.cross_entropy(h, y.argmax(1))),
    }[name]()


@DTYPES
@pytest.mark.parametrize("name", list(EXTREME))
def test_inputs_of_plus_minus_1000_stay_finite_and_quiet(name, dtype):
    module = compile_nn(nn_zoo.program(f"extreme_{name}", "h = x |> dense(4)\n" + EXTREME[name],
                                       targets={"y": [4]}))
    params = {"dense_1.weight": np.eye(4, dtype=dtype), "dense_1.bias": np.zeros(4, dtype)}
    x = np.array([[1000, -1000, 0.5, -0.5], [-1000, 1000, 1000, -1000], [1000, 1000, -1000, -1000]], dtype)
    y = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any numpy RuntimeWarning (overflow, divide, invalid) fails
        out = module.forward(params, x)
        value, grads = module.loss_and_grad(params, x, y)
        assert module.loss(params, x, y) == value
    assert np.isfinite(value)
    assert np.all(np.isfinite(out))
    for k, g in grads.items():
        assert np.all(np.isfinite(g)), k
    # and the values are right (float32 loosely: see the precision test below)
    _compare_with_torch(name, out, value, grads, x, y, rtol=1e-3 if dtype == np.float32 else 1e-12)


def _compare_with_torch(name, out, value, grads, x, y, rtol):
    torch = pytest.importorskip("torch")
    h = torch.tensor(x.astype(np.float64), requires_grad=True)
    t_out, t_loss = _extreme_twin(name, h, torch.tensor(y.astype(np.float64)))
    t_loss.backward()
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=rtol, atol=1e-30)
    assert value == pytest.approx(float(t_loss.detach()), rel=rtol)
    # h = x through an identity dense: dL/dbias is the batch sum of dL/dh
    np.testing.assert_allclose(grads["dense_1.bias"], h.grad.sum(0).numpy(), rtol=rtol, atol=rtol * 0.1)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "softmax_cross_entropy"])
def test_float32_softmaxes_of_large_logits_are_accurate(name):
    module = compile_nn(nn_zoo.program(f"extreme_{name}", "h = x |> dense(4)\n" + EXTREME[name],
                                       targets={"y": [4]}))
    params = {"dense_1.weight": np.eye(4, dtype=np.float32), "dense_1.bias": np.zeros(4, np.float32)}
    x = np.array([[1000, -1000, 0.5, -0.5], [-1000, 1000, 1000, -1000], [1000, 1000, -1000, -1000]], np.float32)
    y = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], np.float32)
    value, grads = module.loss_and_grad(params, x, y)
    _compare_with_torch(name, module.forward(params, x), value, grads, x, y, rtol=1e-6)


# ---- stable across nodes ---------------------------------------------------------------
# A sigmoid is a node of its own, kept in a buffer when the backward pass reads it; its
# readers still get the stable forms (log s = -softplus(-h), 1 - s = sigmoid(-h)).

def _identity_dense(dtype=np.float64):
    return {"dense_1.weight": np.eye(4, dtype=dtype), "dense_1.bias": np.zeros(4, dtype)}


def test_binary_cross_entropy_of_a_saturated_sigmoid_is_exact():
    # sigmoid(h) rounds to 1 beyond h = 37, so log(1 - sigmoid(h)) computed from the
    # sigmoid's value is the -100 clamp (its gradient 0) where it is -h (gradient 1 - y)
    module = compile_nn(nn_zoo.program("bce_saturated", """
        h = x |> dense(4)
        a = h |> sigmoid
        loss = binary_cross_entropy(a, y)
    """, targets={"y": [4]}))
    x = np.array([[20.0, 40.0, 60.0, -45.0], [-20.0, 99.0, -99.0, 0.5]])
    y = np.array([[0.3, 0.7, 0.2, 0.9], [0.6, 0.1, 0.8, 0.4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grads = module.loss_and_grad(_identity_dense(), x, y)
    # |h| < 100: the clamp at -100 is not reached, so this is BCE with logits
    exact = float(((1 - y) * np.logaddexp(0, x) + y * np.logaddexp(0, -x)).sum()) / 2
    assert value == pytest.approx(exact, rel=1e-14)
    sigmoid = np.exp(-np.logaddexp(0, -x))
    np.testing.assert_allclose(grads["dense_1.bias"], (sigmoid - y).sum(0) / 2, rtol=1e-13, atol=0)
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    h = torch.tensor(x, requires_grad=True)
    t = F.binary_cross_entropy_with_logits(h, torch.tensor(y), reduction="sum") / 2
    t.backward()
    assert value == pytest.approx(float(t.detach()), rel=1e-14)
    np.testing.assert_allclose(grads["dense_1.bias"], h.grad.sum(0).numpy(), rtol=1e-13, atol=0)


@DTYPES
def test_log_of_a_sigmoid_node_is_minus_softplus(dtype):
    module = compile_nn(nn_zoo.program("log_sigmoid_node", """
        h = x |> dense(4)
        a = log(sigmoid(h))
        loss = quadratic(a, y)
    """, targets={"y": [4]}))
    x = np.array([[1000, -1000, 0.5, -40], [-1e12, 1e12, 40, -0.5]], dtype)
    y = np.zeros((2, 4), dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # log(0) would warn
        out = module.forward(_identity_dense(dtype), x)
        value, grads = module.loss_and_grad(_identity_dense(dtype), x, y)
    expected = -np.logaddexp(0, -x.astype(np.float64))
    np.testing.assert_allclose(out, expected, rtol=1e-6 if dtype == np.float32 else 1e-15)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads.values())
    # d/dh 0.5 (log s(h))^2 = log s(h) (1 - s(h)) = -softplus(-h) s(-h)
    dh = expected * np.exp(-np.logaddexp(0, x.astype(np.float64)))
    np.testing.assert_allclose(grads["dense_1.bias"], dh.sum(0) / 2, rtol=1e-5 if dtype == np.float32 else 1e-14)


def test_logsumexp_of_a_sharp_softplus_has_a_finite_gradient():
    # the softmax weight exp(f - lse) of f = softplus(h) / 1e-3 must not be taken apart
    # into (1 + exp(h))**1000 * exp(-lse), which overflows
    module = compile_nn(nn_zoo.program("sharp_softplus", """
        h = x |> dense(4)
        loss = sharp(h, y)
    """, targets={"y": [4]}, defs="fn sharp(a[i], y[i]) = 1e-3 * logsumexp(i: softplus(a[i] - y[i]) / 1e-3)"))
    x = np.array([[3.0, 1.0, 2.9995, -1.0], [0.5, 0.4, 0.2, 0.1]])
    y = np.zeros((2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grads = module.loss_and_grad(_identity_dense(), x, y)
    f = np.logaddexp(0, x) / 1e-3
    weights = np.exp(f - f.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    sigmoid = np.exp(-np.logaddexp(0, -x))
    np.testing.assert_allclose(grads["dense_1.bias"], (weights * sigmoid).sum(0) / 2, rtol=1e-12, atol=1e-300)


# ---- kinks, as PyTorch ------------------------------------------------------------------

KINKS = {  # function, derivative at exactly 0 (PyTorch's choice)
    "relu": ("relu", 0.0),
    "leaky_relu": ("leaky_relu", 0.01),
    "leaky_relu-slope": ("leaky_relu(slope=0.3)", 0.3),
    "abs": ("abs", 0.0),
    "elu": ("elu(alpha=0.5)", 0.5),
}


@pytest.mark.parametrize("name", list(KINKS))
def test_derivative_at_zero_is_pytorchs(name):
    stage, expected = KINKS[name]
    module = compile_nn(nn_zoo.program(f"kink_{name}", f"""
        a = x |> dense(3) |> {stage}
        loss = sum total(a)
    """, targets={}, defs="fn total(a[i]) = sum(i: a[i])"))
    # weight = bias = 0: every pre-activation is exactly 0, and dL/dbias = f'(0) per sample
    params = {"dense_1.weight": np.zeros((3, 4)), "dense_1.bias": np.zeros(3)}
    _, grads = module.loss_and_grad(params, np.ones((2, 4)))
    np.testing.assert_array_equal(grads["dense_1.bias"], np.full(3, 2 * expected))
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    z = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    f = {"relu": F.relu, "leaky_relu": F.leaky_relu, "leaky_relu-slope": lambda t: F.leaky_relu(t, 0.3),
         "abs": torch.abs, "elu": lambda t: F.elu(t, 0.5)}[name]
    f(z).sum().backward()
    np.testing.assert_array_equal(z.grad.numpy(), np.full(3, expected))


# ---- init_params ---------------------------------------------------------------------

@pytest.mark.parametrize("stem", ["nielsen", "zhou", "lenet"])
def test_init_params_is_deterministic_per_seed_and_dtype(stem):
    if not (nn_zoo.EXAMPLES / f"{stem}.nn").exists():
        pytest.skip(f"examples/{stem}.nn not there")
    module = _example(stem)
    for dtype in (np.float32, np.float64):
        a, b = module.init_params(3, dtype), module.init_params(3, dtype)
        assert list(a) == list(module.PARAM_SHAPES)
        for k in a:
            assert a[k].dtype == dtype and a[k].shape == module.PARAM_SHAPES[k]
            np.testing.assert_array_equal(a[k], b[k])
        c = module.init_params(4, dtype)
        assert all(not np.array_equal(a[k], c[k]) for k in a)
    # float32 values are the float64 values rounded
    a32, a64 = module.init_params(3, np.float32), module.init_params(3, np.float64)
    for k in a32:
        np.testing.assert_array_equal(a32[k], a64[k].astype(np.float32))
    # the default seed is a seed
    for k, v in module.init_params().items():
        np.testing.assert_array_equal(v, module.init_params(0)[k])


def test_init_params_is_the_same_in_another_process(tmp_path):
    src = (nn_zoo.EXAMPLES / "zhou.nn").read_text(encoding="utf-8")
    code = ("import sys, numpy as np; from nncc.api import load_module; "
            "m = load_module(sys.stdin.read(), 'zhou.nn'); p = m.init_params(11, np.float64); "
            "print(repr([(k, v.tolist()) for k, v in p.items()]))")
    runs = [subprocess.run([sys.executable, "-c", code], input=src, capture_output=True, text=True,
                           env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}, check=True).stdout
            for seed in ("1", "2")]
    assert runs[0] == runs[1]
    here = compile_nn(src, "zhou.nn").init_params(11, np.float64)
    assert runs[0].strip() == repr([(k, v.tolist()) for k, v in here.items()])


def test_default_init_is_uniform_within_one_over_sqrt_fan_in(nielsen):
    params = nielsen.init_params(0, np.float64)
    for name, fan_in in (("dense_1.weight", 784), ("dense_1.bias", 784), ("dense_2.weight", 30)):
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(params[name]).max() <= bound
        assert np.abs(params[name]).max() > 0.8 * bound  # spread over the whole range


# ---- sgd_step ------------------------------------------------------------------------

@DTYPES
def test_sgd_step_updates_in_place_and_returns_the_pre_step_loss(nielsen, dtype):
    params = nielsen.init_params(0, dtype)
    arrays = {k: v for k, v in params.items()}
    inputs, targets = random_data(nielsen, {"x": nn_zoo.Uniform(0, 1)}, batch=4, dtype=dtype)
    value, grads = nielsen.loss_and_grad(params, *inputs, *targets)
    expected = {k: params[k] - dtype(0.5) * grads[k] for k in params}
    returned = nielsen.sgd_step(params, *inputs, *targets, lr=0.5)
    assert returned == value
    for k in params:
        assert params[k] is arrays[k], f"{k} was replaced, not updated in place"
        assert params[k].dtype == dtype
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-6 if dtype == np.float32 else 1e-14)
    assert nielsen.loss(params, *inputs, *targets) < value  # a small step downhill


@pytest.mark.parametrize("lr", [0.5, np.float64(0.5), np.float32(0.5), np.array(0.5)],
                         ids=["float", "np.float64", "np.float32", "0-d array"])
def test_sgd_step_keeps_float32_whatever_the_type_of_lr(nielsen, lr):
    # -lr seeds the backward pass: a float64 scalar must not turn the float32 step into float64
    params = nielsen.init_params(0, np.float32)
    inputs, targets = random_data(nielsen, {"x": nn_zoo.Uniform(0, 1)}, batch=4, dtype=np.float32)
    _, grads = nielsen.loss_and_grad(params, *inputs, *targets)
    expected = {k: params[k] - np.float32(0.5) * grads[k] for k in params}
    nielsen.sgd_step(params, *inputs, *targets, lr=lr)
    for k in params:
        assert params[k].dtype == np.float32
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-6, atol=1e-7)


def test_sgd_step_leaves_a_parameter_the_loss_does_not_reach():
    module = compile_nn(nn_zoo.program("unreached", """
        h = x |> dense(3)
        o = x |> dense(2)
        output o
        loss = quadratic(h, y)
    """))
    params = module.init_params(0, np.float64)
    before = {k: v.copy() for k, v in params.items()}
    inputs, targets = random_data(module, batch=3)
    _, grads = module.loss_and_grad(params, *inputs, *targets)
    assert not grads["dense_2.weight"].any() and not grads["dense_2.bias"].any()
    module.sgd_step(params, *inputs, *targets, lr=0.1)
    np.testing.assert_array_equal(params["dense_2.weight"], before["dense_2.weight"])
    np.testing.assert_allclose(params["dense_1.weight"], before["dense_1.weight"] - 0.1 * grads["dense_1.weight"],
                               rtol=1e-14)


def test_two_threads_calling_the_module_get_their_own_numbers(nielsen):
    import threading
    runs = {k: (nielsen.init_params(k, np.float64), random_data(nielsen, batch=3 + 2 * k, seed=k)) for k in range(2)}
    expected = {}
    for k, (params, (inputs, targets)) in runs.items():
        p = {n: v.copy() for n, v in params.items()}
        expected[k] = [nielsen.sgd_step(p, *inputs, *targets, lr=0.1) for _ in range(50)]
    got, errors = {}, []

    def run(k):
        try:
            params, (inputs, targets) = runs[k]
            got[k] = [nielsen.sgd_step(params, *inputs, *targets, lr=0.1) for _ in range(50)]
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(k,)) for k in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == expected


def test_training_xor_converges(xor):
    params = xor.init_params(0, np.float64)
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float64)
    y = np.array([[0], [1], [1], [0]], np.float64)
    first = xor.sgd_step(params, x, y, lr=1.0)
    for _ in range(2000):
        last = xor.sgd_step(params, x, y, lr=1.0)
    assert last < 0.1 < first
    assert np.array_equal(xor.forward(params, x) > 0.5, y > 0.5)


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_a_batch_reduction_takes_any_loss_expression(reduce):
    from nncc.api import load_module
    head = "network r\ninput x: [3]\ntarget y: [2]\na = x |> dense(2)\n"
    plain = load_module(head + f"loss = {reduce} quadratic(a, y)\n")
    scaled = load_module(head + f"loss = {reduce} 0.5 * quadratic(a, y)\n")
    negated = load_module(head + f"loss = {reduce} -quadratic(a, y)\n")
    params = plain.init_params(0, np.float64)
    x, y = np.ones((4, 3)), np.zeros((4, 2))
    base = plain.loss(params, x, y)
    assert scaled.loss(params, x, y) == pytest.approx(0.5 * base)
    assert negated.loss(params, x, y) == pytest.approx(-base)
