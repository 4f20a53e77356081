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

import argparse
import sys

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from harness import (EXAMPLES, copy_params, import_torch, limit_threads, load_generated, print_header,
                     print_problems, print_table, rel_err, summarize, time_interleaved)

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


def increment_err(new, ref_new, p):
    """max |Δ − Δref| / max |Δref| for the increments Δ = new − p, less one unit in
    the last place of the parameter per element.

    Every contender rounds p − lr·g to the parameters' dtype, so each new parameter
    carries up to half an ulp of p of its own: two of them can differ by an ulp of p
    even when their lr·g agree exactly.  In float32 that ulp is not small next to the
    increment: conv2d_1.weight is ~0.3 (ulp 3e-8) and its increments at lr 0.1 are
    ~1e-3, so the plain relative difference of two correctly rounded steps reaches
    ~3e-5 (measured up to 5e-5 over 8 seeds and batch sizes 1-1024, while the
    gradients themselves agreed within 4e-6).  With the ulp allowed for, the
    increments agree within 3e-6 there, so the 1e-5 tolerance applies unchanged.  In
    float64 the allowance is ~6e-17, far inside the 1e-12 tolerance.
    """
    new, ref_new, p = np.asarray(new), np.asarray(ref_new), np.asarray(p)
    ulp = np.spacing(np.maximum(np.maximum(np.abs(p), np.abs(ref_new)), np.abs(new)))
    d = np.abs(new.astype(np.float64) - ref_new) - ulp
    return float(max(np.max(d), 0.0) / max(float(np.max(np.abs(ref_new.astype(np.float64) - p))), 1e-300))


def check(gen, torch, batch_sizes, seed, lr):
    """Same loss, gradients and SGD increments in float64 and float32; float32 stays float32.

    Gradients at float32: the longest sums are the weight gradients of conv2d_1
    (batch x 64 terms, with cancellation); measured within 4e-6 of each other up to
    batch 1024, so 1e-5 holds.  The data are continuous random numbers, so no
    max-pool window has a tie among positive values (a window that relu zeroed
    passes no gradient whichever element wins), nor, in practice, a near-tie that
    float32 rounding could flip between contenders.
    """
    worst = {}
    tol64, tol32 = 1e-12, 1e-5
    problems = []

    def compare(tag, got, ref, tol, err=None):
        e = rel_err(got, ref) if err is None else err
        key = tuple(tag.split(", ")[:2])     # (contender vs hand, dtype)
        worst[key] = max(worst.get(key, 0.0), e)
        if not e <= tol:
            problems.append(f"{tag}: relative error {e:.3g} > {tol:g}")

    for batch in sorted(set(batch_sizes) | {1, 7}):
        for dtype, tol in ((np.float64, tol64), (np.float32, tol32)):
            dname = np.dtype(dtype).name
            x, y = make_data(batch, dtype, seed + batch)
            p = gen.init_params(seed, dtype)
            ref_loss, ref_g = hand_loss_and_grad(copy_params(p), x, y)
            others = {"generated": gen.loss_and_grad(copy_params(p), x, y)}
            if torch is not None:
                others["torch"] = torch_loss_and_grad(torch, make_torch(torch, p),
                                                      torch.from_numpy(x), torch.from_numpy(y))
            for k in NAMES:
                if ref_g[k].dtype != dtype:
                    problems.append(f"hand {dname}: gradient {k} came back as {ref_g[k].dtype}")
            for who, (loss, g) in others.items():
                compare(f"{who} vs hand, {dname}, loss", loss, ref_loss, tol)
                for k in NAMES:
                    compare(f"{who} vs hand, {dname}, grad {k}", g[k], ref_g[k], tol)
                    if g[k].dtype != dtype:
                        problems.append(f"{who} {dname}: gradient {k} came back as {g[k].dtype}")
            # one SGD step from the same params: same returned loss, same increments
            hp = copy_params(p)
            gp = copy_params(p)
            steps = {"generated": (gen.sgd_step(gp, x, y, lr), gp)}
            if torch is not None:
                tp = make_torch(torch, p)
                tl = make_torch_step(torch, tp)(torch.from_numpy(x), torch.from_numpy(y), lr)
                steps["torch"] = (tl, torch_params(tp))
            hl = hand_sgd_step(hp, x, y, lr)
            for k in NAMES:
                if hp[k].dtype != dtype:
                    problems.append(f"hand {dname}: parameter {k} became {hp[k].dtype}")
            for who, (loss, newp) in steps.items():
                compare(f"{who} vs hand, {dname}, step loss", loss, hl, tol)
                for k in NAMES:
                    # compare the increments, not the params (whose size hides errors)
                    compare(f"{who} vs hand, {dname}, step {k}", None, None, tol,
                            increment_err(newp[k], hp[k], p[k]))
                    if newp[k].dtype != dtype:
                        problems.append(f"{who} {dname}: parameter {k} became {newp[k].dtype}")
    return worst, problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256], metavar="N")
    ap.add_argument("--rounds", type=int, default=200, help="interleaved rounds per batch size (default 200)")
    ap.add_argument("--block-ms", type=float, default=2.0,
                    help="target length of one timed block of calls, in ms (default 2)")
    ap.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default 0.1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, metavar="N",
                    help="cap numpy's BLAS (threadpoolctl) and torch.set_num_threads at N; "
                         "default: leave both libraries at their own defaults")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if it is importable")
    args = ap.parse_args(argv)

    torch = import_torch(not args.no_torch)
    gen = load_generated(SOURCE)
    limiter = limit_threads(args.threads, torch)
    print_header("nncc bench: one SGD step (forward + backward + update), float32, "
                 f"{SOURCE.name}: conv 8 - relu - maxpool - conv 16 - relu - dense 10, "
                 "softmax cross-entropy", torch)

    worst, problems = check(gen, torch, args.batch_sizes, args.seed, args.lr)
    if problems:
        print_problems(problems)
        return 1
    print("\ncheck passed: same loss, gradients and SGD increments at batch sizes "
          f"{', '.join(map(str, sorted(set(args.batch_sizes) | {1, 7})))}; "
          "worst max|diff|/max|hand| (tolerance 1e-12 float64, 1e-5 float32; "
          "increments less one ulp of the parameter):")
    print("  " + "  ".join(f"{who}, {dname}: {e:.1e}" for (who, dname), e in worst.items()))

    rows = []
    for batch in args.batch_sizes:
        x, y = make_data(batch, np.float32, args.seed + 1000 + batch)
        p0 = gen.init_params(args.seed, np.float32)
        gp, hp = copy_params(p0), copy_params(p0)
        lr = args.lr
        contenders = {
            "generated": lambda: gen.sgd_step(gp, x, y, lr),
            "hand": lambda: hand_sgd_step(hp, x, y, lr),
        }
        if torch is not None:
            tstep = make_torch_step(torch, make_torch(torch, p0))
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)
            contenders["torch"] = lambda: tstep(tx, ty, lr)
        samples, numbers = time_interleaved(contenders, args.rounds, args.block_ms / 1e3)
        rows.append((batch, summarize(samples), numbers))

    names = ["generated", "hand"] + (["torch"] if torch is not None else [])
    print_table(rows, names, [("gen/hand", "generated", "hand"), ("gen/torch", "generated", "torch")],
                args.rounds)
    print("ratios > 1 mean the generated module is slower.")
    if limiter is not None:
        limiter.restore_original_limits()
    return 0


if __name__ == "__main__":
    sys.exit(main())
