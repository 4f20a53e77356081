"""One SGD step of Nielsen's 784-30-10 sigmoid network: nncc's generated module
against a hand-vectorized numpy step and PyTorch eager.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/nielsen_step.py
    ... python bench/nielsen_step.py --batch-sizes 10 64 256 1024 --rounds 300 --block-ms 2

Each contender does the same work per call: forward, quadratic loss (returned as
a Python float), the gradient of every parameter, and the in-place update
W -= lr * dW, in float32.  Before anything is timed the three are checked to give
the same loss, gradients and updated parameters in float64 (tight tolerance),
and to stay in float32 when given float32.

Timing is interleaved: every round runs a block of calls of each contender in
turn (the order rotates from round to round), so slow drift of a shared machine
hits all of them alike.  Reported: the median over rounds of the per-step time in
microseconds, the spread (half the interquartile range, as a percentage of the
median), and the ratios generated/hand and generated/torch of the medians.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from harness import EXAMPLES, Peers, peer_parser, run_peers

DEFAULT_SOURCE = EXAMPLES / "nielsen.nn"
NAMES = ("dense_1.weight", "dense_1.bias", "dense_2.weight", "dense_2.bias")


# ---------------------------------------------------------------------------
# (b) the hand-written step: Nielsen's backprop in matrix form, batch-first

def _sigmoid(z):
    """σ(z) without overflow: only exp of non-positive numbers.

    s = σ(|z|) = 1 / (1 + e) with e = exp(-|z|); σ(z) = s where z ≥ 0, e·s where z < 0.
    (One division; ufunc `where=`/`out=` masking measured slower than np.where here.)
    """
    e = np.exp(-np.abs(z))
    s = 1 / (1 + e)
    return np.where(z >= 0, s, e * s)


def _hand_backprop(p, x, y, scale):
    """Loss and (scale x) the gradients.  scale = 1 gives the gradient;
    scale = lr gives the SGD increments, with lr folded into δ2 (n x 10)
    instead of multiplying the 30 x 784 weight gradient."""
    W1, b1, W2, b2 = (p[k] for k in NAMES)
    n = x.shape[0]
    z1 = x @ W1.T                      # z1 = x W1ᵀ + b1
    z1 += b1
    a1 = _sigmoid(z1)                  # a1 = σ(z1)
    z2 = a1 @ W2.T                     # z2 = a1 W2ᵀ + b2
    z2 += b2
    a2 = _sigmoid(z2)                  # a2 = σ(z2)
    r = a2 - y                         # a2 − y
    loss = 0.5 * float(np.vdot(r, r)) / n   # C = ½ Σ‖a2 − y‖² / n
    d2 = 1 - a2                        # δ2 = (a2 − y) ⊙ a2(1 − a2) / n
    d2 *= a2
    d2 *= r
    d2 *= scale / n
    gW2 = d2.T @ a1                    # ∂C/∂W2 = δ2ᵀ a1
    gb2 = d2.sum(axis=0)               # ∂C/∂b2 = Σ_b δ2
    d1 = d2 @ W2                       # δ1 = (δ2 W2) ⊙ a1(1 − a1)
    s1 = 1 - a1
    s1 *= a1
    d1 *= s1
    gW1 = d1.T @ x                     # ∂C/∂W1 = δ1ᵀ x
    gb1 = d1.sum(axis=0)               # ∂C/∂b1 = Σ_b δ1
    return loss, {"dense_1.weight": gW1, "dense_1.bias": gb1,
                  "dense_2.weight": gW2, "dense_2.bias": gb2}


def hand_loss_and_grad(p, x, y):
    return _hand_backprop(p, x, y, 1.0)


def hand_sgd_step(p, x, y, lr):
    loss, steps = _hand_backprop(p, x, y, lr)
    for k, s in steps.items():
        p[k] -= s
    return loss


# ---------------------------------------------------------------------------
# (c) PyTorch eager

def make_torch(torch, params):
    """Two nn.Linear layers holding copies of the numpy params."""
    dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[params[NAMES[0]].dtype]
    l1 = torch.nn.Linear(784, 30, dtype=dtype)
    l2 = torch.nn.Linear(30, 10, dtype=dtype)
    with torch.no_grad():
        l1.weight.copy_(torch.from_numpy(params["dense_1.weight"]))
        l1.bias.copy_(torch.from_numpy(params["dense_1.bias"]))
        l2.weight.copy_(torch.from_numpy(params["dense_2.weight"]))
        l2.bias.copy_(torch.from_numpy(params["dense_2.bias"]))
    return l1, l2


def torch_loss(torch, model, x, y):
    l1, l2 = model
    a = torch.sigmoid(l2(torch.sigmoid(l1(x))))
    return 0.5 * ((a - y) ** 2).sum() / x.shape[0]


def torch_loss_and_grad(torch, model, x, y):
    l1, l2 = model
    for t in (l1.weight, l1.bias, l2.weight, l2.bias):
        t.grad = None
    loss = torch_loss(torch, model, x, y)
    loss.backward()
    return loss.item(), {"dense_1.weight": l1.weight.grad.numpy(), "dense_1.bias": l1.bias.grad.numpy(),
                         "dense_2.weight": l2.weight.grad.numpy(), "dense_2.bias": l2.bias.grad.numpy()}


def make_torch_step(torch, model):
    l1, l2 = model
    ps = (l1.weight, l1.bias, l2.weight, l2.bias)

    def step(x, y, lr):
        for t in ps:
            t.grad = None
        loss = torch_loss(torch, model, x, y)
        loss.backward()
        with torch.no_grad():
            for t in ps:
                t.sub_(t.grad, alpha=lr)
        return loss.item()
    return step


def torch_params(model):
    l1, l2 = model
    return {"dense_1.weight": l1.weight.detach().numpy(), "dense_1.bias": l1.bias.detach().numpy(),
            "dense_2.weight": l2.weight.detach().numpy(), "dense_2.bias": l2.bias.detach().numpy()}


# ---------------------------------------------------------------------------
# checks

def make_data(batch, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((batch, 784)).astype(dtype)              # pixel-like values in [0, 1)
    y = np.zeros((batch, 10), dtype=dtype)
    y[np.arange(batch), rng.integers(0, 10, batch)] = 1     # one-hot targets
    return x, y


PEERS = Peers(NAMES, make_data, hand_loss_and_grad, hand_sgd_step, make_torch, torch_loss_and_grad,
              make_torch_step, torch_params)


def main(argv=None):
    ap = peer_parser(__doc__, [10, 64, 256])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the .nn file (default examples/nielsen.nn)")
    args = ap.parse_args(argv)
    return run_peers(args, args.source, "784-30-10 sigmoid, quadratic loss", PEERS)


if __name__ == "__main__":
    sys.exit(main())
