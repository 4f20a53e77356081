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

import argparse
import sys
from pathlib import Path

import numpy as np

from harness import (EXAMPLES, copy_params, import_torch, limit_threads, load_generated, print_header,
                     print_problems, print_table, rel_err, summarize, time_interleaved)

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


def check(gen, torch, batch_sizes, seed, lr):
    """Same loss, gradients and updated params in float64; float32 stays float32."""
    worst = {}
    tol64, tol32 = 1e-12, 1e-5
    problems = []

    def compare(tag, got, ref, tol):
        e = rel_err(got, ref)
        key = tag.split(", ")[:2]            # (contender vs hand, dtype)
        worst[tuple(key)] = max(worst.get(tuple(key), 0.0), e)
        if not e <= tol:
            problems.append(f"{tag}: relative error {e:.3g} > {tol:g}")

    for batch in sorted(set(batch_sizes) | {1, 7}):
        for dtype, tol in ((np.float64, tol64), (np.float32, tol32)):
            dname = np.dtype(dtype).name
            x, y = make_data(batch, dtype, seed + batch)
            p = gen.init_params(seed, dtype)
            ref_loss, ref_g = hand_loss_and_grad({k: v.copy() for k, v in p.items()}, x, y)
            others = {"generated": gen.loss_and_grad({k: v.copy() for k, v in p.items()}, x, y)}
            if torch is not None:
                model = make_torch(torch, p)
                others["torch"] = torch_loss_and_grad(torch, model, torch.from_numpy(x), torch.from_numpy(y))
            for who, (loss, g) in others.items():
                compare(f"{who} vs hand, {dname}, loss", loss, ref_loss, tol)
                for k in NAMES:
                    compare(f"{who} vs hand, {dname}, grad {k}", g[k], ref_g[k], tol)
                    if g[k].dtype != dtype:
                        problems.append(f"{who} {dname}: gradient {k} came back as {g[k].dtype}")
            # one SGD step from the same params: same returned loss, same new params
            hp = {k: v.copy() for k, v in p.items()}
            gp = {k: v.copy() for k, v in p.items()}
            steps = {"generated": (gen.sgd_step(gp, x, y, lr), gp)}
            if torch is not None:
                model = make_torch(torch, p)
                tl = make_torch_step(torch, model)(torch.from_numpy(x), torch.from_numpy(y), lr)
                steps["torch"] = (tl, torch_params(model))
            hl = hand_sgd_step(hp, x, y, lr)
            for who, (loss, newp) in steps.items():
                compare(f"{who} vs hand, {dname}, step loss", loss, hl, tol)
                for k in NAMES:
                    # compare the increments, not the params (whose size hides errors)
                    compare(f"{who} vs hand, {dname}, step {k}", newp[k] - p[k], hp[k] - p[k], tol)
                    if newp[k].dtype != dtype:
                        problems.append(f"{who} {dname}: parameter {k} became {newp[k].dtype}")
    return worst, problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[10, 64, 256], metavar="N")
    ap.add_argument("--rounds", type=int, default=200, help="interleaved rounds per batch size (default 200)")
    ap.add_argument("--block-ms", type=float, default=2.0,
                    help="target length of one timed block of calls, in ms (default 2)")
    ap.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default 0.1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, metavar="N",
                    help="cap numpy's BLAS (threadpoolctl) and torch.set_num_threads at N; "
                         "default: leave both libraries at their own defaults")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if it is importable")
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the .nn file (default examples/nielsen.nn)")
    args = ap.parse_args(argv)

    torch = import_torch(not args.no_torch)
    gen = load_generated(args.source)
    limiter = limit_threads(args.threads, torch)
    print_header("nncc bench: one SGD step (forward + backward + update), float32, "
                 f"{args.source.name}: 784-30-10 sigmoid, quadratic loss", torch)

    worst, problems = check(gen, torch, args.batch_sizes, args.seed, args.lr)
    if problems:
        print_problems(problems)
        return 1
    print("\ncheck passed: same loss, gradients and SGD increments at batch sizes "
          f"{', '.join(map(str, sorted(set(args.batch_sizes) | {1, 7})))}; "
          "worst max|diff|/max|hand| (tolerance 1e-12 float64, 1e-5 float32):")
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
