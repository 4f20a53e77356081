"""Window operators over a grid of strides, paddings and kernels: finite differences,
PyTorch agreement (forward, input and weight gradients) and the max-pool tie rule."""
import itertools

import numpy as np
import pytest

from nncc.api import load_module

# y = x + shift with shift = 0: dL/dshift is the batch sum of dL/dx, so input gradients
# come out of loss_and_grad as a parameter's
LIFT = """
layer lift(x: [c, h, w]) {
    param shift: [c, h, w] init zeros
    y[ch, i, j] = x[ch, i, j] + shift[ch, i, j]
}
fn weighted(a[i], y[i]) = sum(i: a[i] * y[i])
"""
SIZES = [(7, 6), (6, 7)]  # odd and even heights and widths
CONV_GRID = [(s, p, k, hw) for s, p, k, hw in itertools.product((1, 2), (0, 1, 2), (1, 2, 3), SIZES)]
# kernel 5: a window of more than 16 elements, which the generated helpers reduce differently
POOL_GRID = [(kind, k, s, hw) for kind, k, s, hw in itertools.product(("max", "avg"), (1, 2, 3, 5), (1, 2), SIZES)]


def _out(n, k, s, p=0):
    return (n + 2 * p - k) // s + 1


def _conv_program(s, p, k, hw):
    h, w = hw
    n_out = 3 * _out(h, k, s, p) * _out(w, k, s, p)
    return LIFT + f"""
input x: [2, {h}, {w}]
target y: [{n_out}]
a = x |> lift(name="input") |> conv2d(3, {k}, stride={s}, padding={p}) |> flatten
loss = sum weighted(a, y)
"""


def _pool_program(kind, k, s, hw):
    h, w = hw
    n_out = 2 * _out(h, k, s) * _out(w, k, s)
    return LIFT + f"""
input x: [2, {h}, {w}]
target y: [{n_out}]
a = x |> lift(name="input") |> {kind}pool2d({k}, stride={s}) |> flatten
loss = sum weighted(a, y)
"""


def _fd_worst(module, params, *arrays, h=1e-6):
    _, grads = module.loss_and_grad(params, *arrays)
    rng = np.random.default_rng(7)
    worst = 0.0
    for name in params:
        d = rng.normal(size=params[name].shape)
        plus = {**params, name: params[name] + h * d}
        minus = {**params, name: params[name] - h * d}
        fd = (module.loss(plus, *arrays) - module.loss(minus, *arrays)) / (2 * h)
        an = float((grads[name] * d).sum())
        worst = max(worst, abs(fd - an) / max(abs(fd) + abs(an), 1e-6))
    return worst


def _data(module, seed=0, batch=3, integers=False):
    rng = np.random.default_rng(seed)
    (xs,), (ys,) = module.INPUT_SHAPES.values(), module.TARGET_SHAPES.values()
    x = rng.integers(0, 3, (batch,) + xs).astype(float) if integers else rng.normal(size=(batch,) + xs)
    return x, rng.normal(size=(batch,) + ys)


@pytest.mark.parametrize("s,p,k,hw", CONV_GRID, ids=[f"s{s}-p{p}-k{k}-{hw[0]}x{hw[1]}" for s, p, k, hw in CONV_GRID])
def test_conv2d_gradients_match_finite_differences(s, p, k, hw):
    m = load_module(_conv_program(s, p, k, hw))
    params = m.init_params(1, np.float64)
    assert _fd_worst(m, params, *_data(m)) < 1e-6


@pytest.mark.parametrize("kind,k,s,hw", POOL_GRID, ids=[f"{c}-k{k}-s{s}-{hw[0]}x{hw[1]}" for c, k, s, hw in POOL_GRID])
def test_pool_gradients_match_finite_differences(kind, k, s, hw):
    m = load_module(_pool_program(kind, k, s, hw))
    params = m.init_params(1, np.float64)
    assert _fd_worst(m, params, *_data(m)) < 1e-6


try:
    import torch
    F = torch.nn.functional
except ImportError:  # the PyTorch comparisons skip; the finite-difference ones still run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")


def _against_torch(m, params, x, y, torch_fn, weight_names=()):
    value, grads = m.loss_and_grad(params, x, y)
    tx = torch.tensor(x, requires_grad=True)
    tw = {n: torch.tensor(params[n], requires_grad=True) for n in weight_names}
    out = torch_fn(tx, tw).flatten(1)
    t_loss = (out * torch.tensor(y)).sum()
    t_loss.backward()
    np.testing.assert_allclose(m.forward(params, x), out.detach().numpy(), rtol=1e-12, atol=1e-12)
    assert value == pytest.approx(t_loss.item(), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(grads["input.shift"], tx.grad.sum(0).numpy(), rtol=1e-11, atol=1e-12)
    for n in weight_names:
        np.testing.assert_allclose(grads[n], tw[n].grad.numpy(), rtol=1e-11, atol=1e-12)


@needs_torch
@pytest.mark.parametrize("s,p,k,hw", CONV_GRID, ids=[f"s{s}-p{p}-k{k}-{hw[0]}x{hw[1]}" for s, p, k, hw in CONV_GRID])
def test_conv2d_agrees_with_torch(s, p, k, hw):
    m = load_module(_conv_program(s, p, k, hw))
    params = m.init_params(2, np.float64)
    x, y = _data(m, seed=3)
    _against_torch(m, params, x, y,
                   lambda tx, tw: F.conv2d(tx, tw["conv2d_1.weight"], tw["conv2d_1.bias"], stride=s, padding=p),
                   ("conv2d_1.weight", "conv2d_1.bias"))


@needs_torch
@pytest.mark.parametrize("kind,k,s,hw", POOL_GRID, ids=[f"{c}-k{k}-s{s}-{hw[0]}x{hw[1]}" for c, k, s, hw in POOL_GRID])
def test_pools_agree_with_torch_including_ties(kind, k, s, hw):
    m = load_module(_pool_program(kind, k, s, hw))
    params = m.init_params(0, np.float64)
    x, y = _data(m, seed=4, integers=True)  # small integers: many windows hold tied maxima
    fn = F.max_pool2d if kind == "max" else F.avg_pool2d
    _against_torch(m, params, x, y, lambda tx, tw: fn(tx, k, s))


@needs_torch
@pytest.mark.parametrize("k", [2, 5])
def test_maxpool_gradient_goes_where_torch_sends_it_past_nans(k):
    # PyTorch's CPU kernel takes a NaN as the maximum, the last one when there are several
    m = load_module(_pool_program("max", k, k, (k, k)))
    params = m.init_params(0, np.float64)
    x = np.arange(k * k * 2 * 3, dtype=float).reshape(3, 2, k, k) % 4
    x[0, 0, 0, 1] = np.nan
    x[1, 1, 1, 0] = x[1, 1, 0, 1] = np.nan
    y = np.ones((3, 2))
    _, grads = m.loss_and_grad(params, x, y)
    tx = torch.tensor(x, requires_grad=True)
    F.max_pool2d(tx, k, k).sum().backward()
    np.testing.assert_array_equal(grads["input.shift"], tx.grad.sum(0).numpy())


def test_maxpool_tie_goes_to_the_first_maximum():
    m = load_module(LIFT + """
input x: [1, 2, 2]
target y: [1]
a = x |> lift(name="input") |> maxpool2d(2) |> flatten
loss = sum weighted(a, y)
""")
    params = m.init_params(0, np.float64)
    _, grads = m.loss_and_grad(params, np.array([[[[1.0, 2.0], [2.0, 2.0]]]]), np.ones((1, 1)))
    np.testing.assert_array_equal(grads["input.shift"], [[[0.0, 1.0], [0.0, 0.0]]])


@needs_torch
def test_user_written_window_layers():
    """A 1-D convolution and a strided average written by the user get derived gradients too."""
    m = load_module("""
layer conv1d(x: [c, n], out, kernel, stride = 1, padding = 0) {
    param weight: [out, c, kernel]
    param bias: [out]
    y[o, i] = sum(ci, p: weight[o, ci, p] * x[ci, i*stride + p - padding]) + bias[o]
        for i < (n + 2*padding - kernel) / stride + 1
}
layer stride_mean(x: [c, n], k) {
    param scale: [c] init uniform(0.5, 1.5)
    y[ch, i] = scale[ch] * sum(p: x[ch, i*k + p]) / k for i < n / k, p < k
}
layer flat(x: [c, n]) {
    y[ch*n + i] = x[ch, i]
}
input x: [2, 11]
target y: [3]
h = x |> conv1d(3, 3, stride=2, padding=1) |> tanh |> stride_mean(2)
loss = quadratic(h |> flat |> dense(3), y)
""")
    params = m.init_params(3, np.float64)
    x, y = _data(m, seed=5)
    assert _fd_worst(m, params, x, y) < 1e-6
    tw = {n: torch.tensor(v, requires_grad=True) for n, v in params.items()}
    hh = torch.tanh(F.conv1d(torch.tensor(x), tw["conv1d_1.weight"], tw["conv1d_1.bias"], stride=2, padding=1))
    hh = tw["stride_mean_1.scale"][None, :, None] * F.avg_pool1d(hh, 2)
    z = hh.flatten(1) @ tw["dense_1.weight"].T + tw["dense_1.bias"]
    t_loss = (0.5 * ((z - torch.tensor(y)) ** 2).sum(1)).mean()
    t_loss.backward()
    value, grads = m.loss_and_grad(params, x, y)
    assert value == pytest.approx(t_loss.item(), rel=1e-12)
    for n in params:
        np.testing.assert_allclose(grads[n], tw[n].grad.numpy(), rtol=1e-10, atol=1e-12)


CONV1D = """
layer conv1d(x: [c, n], out, kernel, stride = 1, padding = 0, dilation = 1) {
    param weight: [out, c, kernel]
    param bias: [out]
    y[o, i] = sum(ci, p: weight[o, ci, p] * x[ci, i*stride + dilation*p - padding]) + bias[o]
        for i < (n + 2*padding - dilation*(kernel - 1) - 1) / stride + 1
}
layer lift(x: [c, n]) {
    param shift: [c, n] init zeros
    y[ch, i] = x[ch, i] + shift[ch, i]
}
layer flat(x: [c, n]) {
    y[ch*n + i] = x[ch, i]
}
fn weighted(a[i], y[i]) = sum(i: a[i] * y[i])
"""
DILATED_GRID = [(s, d, p) for s, d, p in itertools.product((1, 2, 3), (2, 3), (0, 2))]


@needs_torch
@pytest.mark.parametrize("s,d,p", DILATED_GRID, ids=[f"s{s}-d{d}-p{p}" for s, d, p in DILATED_GRID])
def test_dilated_strided_conv1d_agrees_with_torch(s, d, p):
    n, k = 11, 3
    n_out = 2 * ((n + 2 * p - d * (k - 1) - 1) // s + 1)
    m = load_module(CONV1D + f"input x: [2, {n}]\ntarget y: [{n_out}]\n"
                    f"a = x |> lift(name=\"input\") |> conv1d(2, {k}, stride={s}, padding={p}, dilation={d}) |> flat\n"
                    f"loss = sum weighted(a, y)\n")
    params = m.init_params(1, np.float64)
    x, y = _data(m, seed=6)
    _against_torch(m, params, x, y,
                   lambda tx, tw: F.conv1d(tx, tw["conv1d_1.weight"], tw["conv1d_1.bias"], stride=s, padding=p,
                                           dilation=d),
                   ("conv1d_1.weight", "conv1d_1.bias"))
