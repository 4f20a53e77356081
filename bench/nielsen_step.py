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
import gc
import importlib.util
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT / "examples" / "nielsen.nn"
NAMES = ("dense_1.weight", "dense_1.bias", "dense_2.weight", "dense_2.bias")


# ---------------------------------------------------------------------------
# (a) the generated module

def load_generated(source_path: Path):
    """Compile the .nn file with the nncc Python API and import the module text."""
    from nncc.api import compile_source

    text = compile_source(source_path.read_text(), str(source_path)).numpy_module()
    with tempfile.TemporaryDirectory(prefix="nncc_bench_") as tmp:
        path = Path(tmp) / "nielsen_generated.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location("nielsen_generated", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return mod


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


def rel_err(a, b):
    """max |a − b| / max |b| (max |b| floored at tiny): one number per tensor."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


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


# ---------------------------------------------------------------------------
# timing

def calibrate(fn, block_s):
    """Calls per timed block so that one block takes about block_s seconds."""
    for _ in range(3):
        fn()
    n, t = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
        if t >= block_s / 4 or n >= 1 << 16:
            break
        n *= 2
    return max(1, round(n * block_s / max(t, 1e-9)))


def time_interleaved(contenders, rounds, block_s):
    """{name: per-step seconds of each round}, rounds interleaved, order rotating."""
    numbers = {name: calibrate(fn, block_s) for name, fn in contenders.items()}
    names = list(contenders)
    samples = {name: [] for name in names}
    perf = time.perf_counter
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, n = contenders[name], numbers[name]
            t0 = perf()
            for _ in range(n):
                fn()
            samples[name].append((perf() - t0) / n)
    return samples, numbers


# ---------------------------------------------------------------------------

def describe_environment(torch):
    import threadpoolctl

    lines = [f"python {platform.python_version()}  {platform.machine()}  cores: {os.cpu_count()}",
             f"numpy {np.__version__}" + (f"  torch {torch.__version__}" if torch is not None else "  torch: not importable")]
    try:
        import nncc
        lines.append(f"nncc {getattr(nncc, '__version__', '?')} from {Path(nncc.__file__).parent}")
    except Exception:  # noqa: BLE001 - informational only
        pass
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                       "OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    lines.append("environment: " + (", ".join(f"{k}={v}" for k, v in env.items()) if env else
                                    "no OPENBLAS_*/OMP_*/MKL_* thread or core-type variables set"))
    for info in threadpoolctl.threadpool_info():
        lines.append(f"threadpool: {info.get('user_api')}/{info.get('internal_api')} {info.get('version') or ''}"
                     f"  kernel: {info.get('architecture', '-')}  threads: {info.get('num_threads')}"
                     f"  ({Path(info.get('filepath', '')).name})")
    if torch is not None:
        blas = "mkl" if "BLAS_INFO=mkl" in torch.__config__.show() else "see torch.__config__.show()"
        lines.append(f"torch: BLAS {blas} (linked into torch, not listed by threadpoolctl), "
                     f"intra-op threads {torch.get_num_threads()}")
    return lines


def load_note():
    """The 1-minute load average against the core count: other work skews the timings."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return "load average: unavailable"
    note = f"load average (1 min): {load:.2f} on {os.cpu_count()} cores"
    if load > 0.5:
        note += ("  -- WARNING: the machine is busy; multithreaded BLAS/OpenMP timings will be erratic "
                 "(--threads 1 is steadier)")
    return note


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

    torch = None
    if not args.no_torch:
        try:
            import torch  # noqa: F811
        except ImportError:
            torch = None

    gen = load_generated(args.source)
    limiter = None
    if args.threads is not None:
        import threadpoolctl
        limiter = threadpoolctl.threadpool_limits(limits=args.threads, user_api="blas")
        if torch is not None:
            torch.set_num_threads(args.threads)
    print("nncc bench: one SGD step (forward + backward + update), float32, "
          f"{args.source.name}: 784-30-10 sigmoid, quadratic loss")
    for line in describe_environment(torch) + [load_note()]:
        print("  " + line)

    worst, problems = check(gen, torch, args.batch_sizes, args.seed, args.lr)
    if problems:
        print("\nCHECK FAILED: the contenders do not compute the same thing; not timing.")
        for p in problems:
            print("  " + p)
        return 1
    print("\ncheck passed: same loss, gradients and SGD increments at batch sizes "
          f"{', '.join(map(str, sorted(set(args.batch_sizes) | {1, 7})))}; "
          "worst max|diff|/max|hand| (tolerance 1e-12 float64, 1e-5 float32):")
    print("  " + "  ".join(f"{who}, {dname}: {e:.1e}" for (who, dname), e in worst.items()))

    rows = []
    for batch in args.batch_sizes:
        x, y = make_data(batch, np.float32, args.seed + 1000 + batch)
        p0 = gen.init_params(args.seed, np.float32)
        gp = {k: v.copy() for k, v in p0.items()}
        hp = {k: v.copy() for k, v in p0.items()}
        lr = args.lr
        contenders = {
            "generated": lambda: gen.sgd_step(gp, x, y, lr),
            "hand": lambda: hand_sgd_step(hp, x, y, lr),
        }
        if torch is not None:
            tstep = make_torch_step(torch, make_torch(torch, p0))
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)
            contenders["torch"] = lambda: tstep(tx, ty, lr)
        gc.collect()
        gc.disable()
        try:
            samples, numbers = time_interleaved(contenders, args.rounds, args.block_ms / 1e3)
        finally:
            gc.enable()
        stats = {}
        for name, s in samples.items():
            q1, med, q3 = np.percentile(np.array(s) * 1e6, [25, 50, 75])
            stats[name] = (med, 50 * (q3 - q1) / med, numbers[name])
        rows.append((batch, stats))

    names = ["generated", "hand"] + (["torch"] if torch is not None else [])
    print(f"\nafter timing: {load_note()}")
    print(f"median µs per step over {args.rounds} interleaved rounds (± half the IQR, % of median)")
    head = f"{'batch':>6} " + " ".join(f"{n:>16}" for n in names) + f" {'gen/hand':>9}"
    head += f" {'gen/torch':>10}" if torch is not None else ""
    print(head)
    print("-" * len(head))
    for batch, stats in rows:
        line = f"{batch:>6} " + " ".join(f"{stats[n][0]:>9.1f} ±{stats[n][1]:>4.1f}%" for n in names)
        line += f" {stats['generated'][0] / stats['hand'][0]:>9.2f}"
        if torch is not None:
            line += f" {stats['generated'][0] / stats['torch'][0]:>10.2f}"
        print(line)
    print("\ncalls per timed block: " + "; ".join(
        f"batch {b}: " + ", ".join(f"{n} {s[n][2]}" for n in names) for b, s in rows))
    print("ratios > 1 mean the generated module is slower.  Shared machine: expect run-to-run noise of "
          "several percent when it is quiet, far more when it is busy; compare medians and ratios, "
          "not single timings.")
    if limiter is not None:
        limiter.restore_original_limits()
    return 0


if __name__ == "__main__":
    sys.exit(main())
