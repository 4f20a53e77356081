"""One SGD step of the LeNet-style network of examples/lenet.nn: nncc's generated
module against a hand-written im2col numpy step and PyTorch eager.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/lenet_step.py --threads 1
    ... python bench/lenet_step.py --batch-sizes 1 64 256 1024 --rounds 300 --block-ms 2

The network: x [1, 8, 8] -> conv2d(8, 3, padding=1) -> relu -> maxpool2d(2) ->
conv2d(16, 3, padding=1) -> relu -> flatten -> dense(10), loss the batch mean of
softmax cross-entropy against one-hot targets.  Each contender does the same work
per call: forward, loss (returned as a Python float), the gradient of every
parameter, and the in-place update p -= lr * dp, in float32.  Before anything is
timed the three are checked to give the same loss, gradients and SGD increments in
float64 (tight tolerance) and float32, and to stay in float32 when given float32.

Timing is interleaved: every round runs a block of calls of each contender in
turn (the order rotates from round to round), so slow drift of a shared machine
hits all of them alike.  Reported: the median over rounds of the per-step time in
microseconds, the spread (half the interquartile range, as a percentage of the
median), and the ratios generated/hand and generated/torch of the medians.
"""
from __future__ import annotations

import sys

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from harness import EXAMPLES, Peers, peer_parser, run_peers

SOURCE = EXAMPLES / "lenet.nn"
NAMES = ("conv2d_1.weight", "conv2d_1.bias", "conv2d_2.weight", "conv2d_2.bias",
         "dense_1.weight", "dense_1.bias")


# ---------------------------------------------------------------------------
# (b) the hand-written step: im2col convolutions
#
# Activations are kept batch-last, [channel, row, column, batch] (cuda-convnet's
# CHWN).  Then every im2col copy, window slice and scatter moves runs of at least
# `batch` contiguous numbers, where channels-first or channels-last layouts move
# runs of 3 (a kernel row) or 8 (the channels); the same steps written
# channels-last took about 1.3x as long at batch 64 and 256 on the reference
# machine.  Each convolution is one matrix product weight[o, (ci p q)] @
# cols[(ci p q), (i j b)] whose result is again batch-last; relu(conv2d_2)
# reshaped to [(c i j), b] is already the C-order flatten, so the parameters keep
# PyTorch's layout with no permuting.  The loss is a batch mean, and scale (1, or
# lr for the SGD step) is folded into δ at the logits, so no gradient is scaled
# separately.

def _hand_backprop(p, x, y, scale):
    """Loss and (scale x) the gradients, in PyTorch's layout."""
    W1, b1, W2, b2, W3, b3 = (p[k] for k in NAMES)
    n, dt = x.shape[0], x.dtype
    W1m = W1.reshape(8, 9)                                      # [o, (ci p q)], ci = 1
    W2m = W2.reshape(16, 72)                                    # [o, (ci p q)]

    # conv2d_1: cols1[(p q), (i j b)] = xpad[i + p, j + q, b]
    xp = np.zeros((10, 10, n), dt)
    xp[1:9, 1:9] = x[:, 0].transpose(1, 2, 0)
    cols1 = sliding_window_view(xp, (3, 3), axis=(0, 1)).transpose(3, 4, 0, 1, 2).reshape(9, 64 * n)
    z1 = W1m @ cols1                                            # [o, (i j b)]
    z1 += b1[:, None]
    a1 = np.maximum(z1, 0)                                      # relu
    # 2x2 max-pool: a1 reshaped to [c, i, p, j, q, b]; the window's elements in
    # row-major (p, q) order are the views va, vb, vc, vd.  The maximum is a
    # knock-out tournament, max(va, vb) against max(vc, vd), and the same
    # comparisons (>=: the earlier element wins a tie) select the first maximum in
    # row-major order for the backward pass, as PyTorch's max-pool does.  (Copying
    # the windows to a trailing axis of 4 for max/argmax took 1.5x as long for the
    # whole step: numpy's reductions over an axis of 4 are slow.)
    w = a1.reshape(8, 4, 2, 4, 2, n)
    va, vb, vc, vd = w[:, :, 0, :, 0], w[:, :, 0, :, 1], w[:, :, 1, :, 0], w[:, :, 1, :, 1]
    mab = np.maximum(va, vb)
    mcd = np.maximum(vc, vd)
    hp = np.zeros((8, 6, 6, n), dt)                             # the pooled map, zero-padded
    np.maximum(mab, mcd, out=hp[:, 1:5, 1:5])
    # conv2d_2: cols2[(c p q), (i j b)] = hpad[c, i + p, j + q, b]
    cols2 = sliding_window_view(hp, (3, 3), axis=(1, 2)).transpose(0, 4, 5, 1, 2, 3).reshape(72, 16 * n)
    z2 = W2m @ cols2                                            # [o, (i j b)]
    z2 += b2[:, None]
    f = np.maximum(z2, 0).reshape(256, n)                       # relu; flatten is [(c i j), b]
    z = W3 @ f                                                  # dense_1: logits [k, b]
    z += b3[:, None]

    # stable log-softmax over the classes (axis 0) and the batch-mean cross-entropy
    s = z - z.max(axis=0)
    e = np.exp(s)
    se = e.sum(axis=0)
    loss = -float(np.vdot(s - np.log(se), y.T)) / n
    # δz = (softmax(z) Σ_k y_k − y) / n, times scale
    c = scale / n
    dz = e * (y.sum(axis=1) * c / se)
    dz -= c * y.T

    gW3 = dz @ f.T                                              # [k, (c i j)]
    gb3 = dz.sum(axis=1)
    dz2 = (W3.T @ dz).reshape(16, 16 * n)                       # δ at relu(conv2d_2)
    dz2 *= z2 > 0                                               # relu'
    gW2 = (dz2 @ cols2.T).reshape(16, 8, 3, 3)
    gb2 = dz2.sum(axis=1)
    # δ at the pooled map: the transposed convolution, col2im with one strided
    # slice add per kernel offset
    dcols = (W2m.T @ dz2).reshape(8, 3, 3, 4, 4, n)
    dhp = np.zeros((8, 6, 6, n), dt)
    for i in range(3):
        for j in range(3):
            dhp[:, i:i + 4, j:j + 4] += dcols[:, i, j]
    dh = dhp[:, 1:5, 1:5]
    # max-pool backward: δ to the tournament's winner, 0 elsewhere (exact: x·1, x·0, x − x)
    dz1 = np.empty((8, 4, 2, 4, 2, n), dt)
    da, db, dc, dd = dz1[:, :, 0, :, 0], dz1[:, :, 0, :, 1], dz1[:, :, 1, :, 0], dz1[:, :, 1, :, 1]
    dl = dh * (mab >= mcd)                                      # the winner is a or b
    dr = dh - dl                                                # ... or c or d
    np.multiply(dl, va >= vb, out=da)
    np.subtract(dl, da, out=db)
    np.multiply(dr, vc >= vd, out=dc)
    np.subtract(dr, dc, out=dd)
    dz1 = dz1.reshape(8, 64 * n)
    dz1 *= z1 > 0                                               # relu'
    gW1 = (dz1 @ cols1.T).reshape(8, 1, 3, 3)
    gb1 = dz1.sum(axis=1)
    return loss, {"conv2d_1.weight": gW1, "conv2d_1.bias": gb1, "conv2d_2.weight": gW2,
                  "conv2d_2.bias": gb2, "dense_1.weight": gW3, "dense_1.bias": gb3}


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
    """Leaf tensors (requires_grad) holding copies of the numpy params, by name."""
    return {k: torch.from_numpy(params[k].copy()).requires_grad_() for k in NAMES}


def torch_loss(torch, tp, x, y):
    F = torch.nn.functional
    h = F.max_pool2d(F.relu(F.conv2d(x, tp["conv2d_1.weight"], tp["conv2d_1.bias"], padding=1)), 2)
    g = F.relu(F.conv2d(h, tp["conv2d_2.weight"], tp["conv2d_2.bias"], padding=1))
    z = F.linear(torch.flatten(g, 1), tp["dense_1.weight"], tp["dense_1.bias"])
    return F.cross_entropy(z, y)          # y one-hot: the class-probability form, batch mean


def torch_loss_and_grad(torch, tp, x, y):
    for t in tp.values():
        t.grad = None
    loss = torch_loss(torch, tp, x, y)
    loss.backward()
    return loss.item(), {k: t.grad.numpy() for k, t in tp.items()}


def make_torch_step(torch, tp):
    ps = tuple(tp.values())

    def step(x, y, lr):
        for t in ps:
            t.grad = None
        loss = torch_loss(torch, tp, x, y)
        loss.backward()
        with torch.no_grad():
            for t in ps:
                t.sub_(t.grad, alpha=lr)
        return loss.item()
    return step


def torch_params(tp):
    return {k: t.detach().numpy() for k, t in tp.items()}


# ---------------------------------------------------------------------------
# checks

def make_data(batch, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((batch, 1, 8, 8)).astype(dtype)           # pixel-like values in [0, 1)
    y = np.zeros((batch, 10), dtype=dtype)
    y[np.arange(batch), rng.integers(0, 10, batch)] = 1     # one-hot targets
    return x, y


# The 1e-5 float32 tolerance of the check holds here: the longest sums are the weight
# gradients of conv2d_1 (batch x 64 terms, with cancellation), measured within 4e-6 of
# each other up to batch 1024.  The data are continuous random numbers, so no max-pool
# window has a tie among positive values (a window that relu zeroed passes no gradient
# whichever element wins), nor, in practice, a near-tie that float32 rounding could flip.
PEERS = Peers(NAMES, make_data, hand_loss_and_grad, hand_sgd_step, make_torch, torch_loss_and_grad,
              make_torch_step, torch_params)


def main(argv=None):
    args = peer_parser(__doc__, [1, 64, 256]).parse_args(argv)
    return run_peers(args, SOURCE, "conv 8 - relu - maxpool - conv 16 - relu - dense 10, softmax cross-entropy",
                     PEERS)


if __name__ == "__main__":
    sys.exit(main())
