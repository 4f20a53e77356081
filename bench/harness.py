"""What every benchmark in bench/ shares: loading the modules nncc generates, the
agreement measure, interleaved timing, and the header describing the machine.

Not a test helper: nothing here asserts a speed.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def compile_file(source_path: Path):
    """The nncc compilation of a .nn file (always the current compiler)."""
    from nncc.api import compile_source

    return compile_source(source_path.read_text(), str(source_path))


def import_text(text: str, name: str):
    """Import generated module text from a temporary file."""
    with tempfile.TemporaryDirectory(prefix="nncc_bench_") as tmp:
        path = Path(tmp) / f"{name}.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return mod


def load_generated(source_path: Path, backend: str = "numpy"):
    """Compile a .nn file and import the numpy module, or the cffi module of the C backend."""
    compiled = compile_file(source_path)
    if backend == "numpy":
        text = compiled.numpy_module()
    else:
        from nncc.backends.c.codegen import render_c_module
        text = render_c_module(compiled)
    return import_text(text, f"{source_path.stem}_{backend}")


def copy_params(p):
    return {k: v.copy() for k, v in p.items()}


def rel_err(a, b):
    """max |a − b| / max |b| (max |b| floored at tiny): one number per tensor."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


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
    """({name: per-step seconds of each round}, {name: calls per block}).

    Every round times a block of each contender in turn, the order rotating from
    round to round, so drift on a shared machine hits all of them alike.  The
    garbage collector is off while timing.
    """
    numbers = {name: calibrate(fn, block_s) for name, fn in contenders.items()}
    names = list(contenders)
    samples = {name: [] for name in names}
    perf = time.perf_counter
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                fn, n = contenders[name], numbers[name]
                t0 = perf()
                for _ in range(n):
                    fn()
                samples[name].append((perf() - t0) / n)
    finally:
        gc.enable()
    return samples, numbers


def summarize(samples):
    """{name: (median µs, half the IQR as % of the median)}."""
    out = {}
    for name, s in samples.items():
        q1, med, q3 = np.percentile(np.array(s) * 1e6, [25, 50, 75])
        out[name] = (med, 50 * (q3 - q1) / med)
    return out


def limit_threads(n, torch=None):
    """Cap numpy's BLAS and torch at n threads (None: leave both alone). Returns the limiter."""
    if n is None:
        return None
    import threadpoolctl
    if torch is not None:
        torch.set_num_threads(n)
    return threadpoolctl.threadpool_limits(limits=n, user_api="blas")


def import_torch(wanted=True):
    if not wanted:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


# ---------------------------------------------------------------------------
# the header

def describe_environment(torch=None):
    lines = [f"python {platform.python_version()}  {platform.machine()}  cores: {os.cpu_count()}",
             f"numpy {np.__version__}" + (f"  torch {torch.__version__}" if torch is not None else "")]
    try:
        import nncc
        lines.append(f"nncc {getattr(nncc, '__version__', '?')} from {Path(nncc.__file__).parent}")
    except ImportError:
        pass
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                       "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CC", "CFLAGS") if k in os.environ}
    lines.append("environment: " + (", ".join(f"{k}={v}" for k, v in env.items()) if env else
                                    "no OPENBLAS_*/OMP_*/MKL_*/CC/CFLAGS variables set"))
    try:
        import threadpoolctl
    except ImportError:
        lines.append("threadpoolctl not importable (pip install -e '.[bench]'): BLAS kernel unknown")
    else:
        for info in threadpoolctl.threadpool_info():
            lines.append(f"threadpool: {info.get('user_api')}/{info.get('internal_api')} "
                         f"{info.get('version') or ''}  kernel: {info.get('architecture', '-')}  "
                         f"threads: {info.get('num_threads')}  ({Path(info.get('filepath', '')).name})")
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


def print_header(title, torch=None):
    print(title)
    for line in describe_environment(torch) + [load_note()]:
        print("  " + line)
    sys.stdout.flush()


def print_problems(problems):
    print("\nCHECK FAILED: the contenders do not compute the same thing; not timing.")
    for p in problems:
        print("  " + p)


def print_table(rows, names, ratios, rounds, first="batch"):
    """rows: [(label, {name: (median µs, spread %)}, {name: calls per block})];
    ratios: [(column title, numerator name, denominator name)], skipped where a name is absent
    (a row that lacks a contender shows "-" there)."""
    ratios = [r for r in ratios if r[1] in names and r[2] in names]
    print(f"\nafter timing: {load_note()}")
    print(f"median µs per step over {rounds} interleaved rounds (± half the IQR, % of median)")
    width = max([len(first)] + [len(str(label)) for label, _, _ in rows])
    head = f"{first:>{width}} " + " ".join(f"{n:>16}" for n in names)
    head += "".join(f" {title:>11}" for title, _, _ in ratios)
    print(head)
    print("-" * len(head))
    for label, stats, _ in rows:
        line = f"{label!s:>{width}} " + " ".join(f"{stats[n][0]:>9.1f} ±{stats[n][1]:>4.1f}%" if n in stats
                                                 else f"{'-':>16}" for n in names)
        line += "".join(f" {stats[a][0] / stats[b][0]:>11.2f}" if a in stats and b in stats else f" {'-':>11}"
                        for _, a, b in ratios)
        print(line)
    print("\ncalls per timed block: " + "; ".join(
        f"{label}: " + ", ".join(f"{n} {numbers[n]}" for n in names if n in numbers) for label, _, numbers in rows))
    print("Shared machine: expect run-to-run noise of several percent when it is quiet, far more when "
          "it is busy; compare medians and ratios, not single timings.")


# ---------------------------------------------------------------------------
# generated module against a hand-written step and PyTorch

@dataclass(frozen=True)
class Peers:
    """What a benchmark supplies besides the generated module: data, the hand-written
    step and PyTorch's, all over the parameters named in `names`."""
    names: tuple
    make_data: Callable          # (batch, dtype, seed) -> (x, y)
    hand_loss_and_grad: Callable  # (params, x, y) -> (loss, grads)
    hand_sgd_step: Callable       # (params, x, y, lr) -> loss, params updated in place
    make_torch: Callable          # (torch, params) -> a torch model holding copies
    torch_loss_and_grad: Callable  # (torch, model, tx, ty) -> (loss, grads as numpy)
    make_torch_step: Callable     # (torch, model) -> step(tx, ty, lr) -> loss
    torch_params: Callable        # model -> {name: numpy array}


def increment_err(new, ref_new, p):
    """max |Δ − Δref| / max |Δref| for the increments Δ = new − p, less one unit in
    the last place of the parameter per element.

    Every contender rounds p − lr·g to the parameters' dtype, so each new parameter
    carries up to half an ulp of p of its own: two of them can differ by an ulp of p
    even when their lr·g agree exactly.  In float32 that ulp is not small next to the
    increment: in the LeNet benchmark conv2d_1.weight is ~0.3 (ulp 3e-8) and its increments at lr 0.1 are
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


def check_peers(peers, gen, torch, batch_sizes, seed, lr):
    """Same loss, gradients and SGD increments from the same parameters, in float64
    (1e-12 relative) and float32 (1e-5), at batch 1, 7 and every benchmarked size;
    float32 in stays float32.  Returns ({(contender, dtype): worst error}, [problems])."""
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
            x, y = peers.make_data(batch, dtype, seed + batch)
            p = gen.init_params(seed, dtype)
            ref_loss, ref_g = peers.hand_loss_and_grad(copy_params(p), x, y)
            others = {"generated": gen.loss_and_grad(copy_params(p), x, y)}
            if torch is not None:
                others["torch"] = peers.torch_loss_and_grad(torch, peers.make_torch(torch, p),
                                                            torch.from_numpy(x), torch.from_numpy(y))
            for k in peers.names:
                if ref_g[k].dtype != dtype:
                    problems.append(f"hand {dname}: gradient {k} came back as {ref_g[k].dtype}")
            for who, (loss, g) in others.items():
                compare(f"{who} vs hand, {dname}, loss", loss, ref_loss, tol)
                for k in peers.names:
                    compare(f"{who} vs hand, {dname}, grad {k}", g[k], ref_g[k], tol)
                    if g[k].dtype != dtype:
                        problems.append(f"{who} {dname}: gradient {k} came back as {g[k].dtype}")
            # one SGD step from the same params: same returned loss, same increments
            hp = copy_params(p)
            gp = copy_params(p)
            steps = {"generated": (gen.sgd_step(gp, x, y, lr), gp)}
            if torch is not None:
                tp = peers.make_torch(torch, p)
                tl = peers.make_torch_step(torch, tp)(torch.from_numpy(x), torch.from_numpy(y), lr)
                steps["torch"] = (tl, peers.torch_params(tp))
            hl = peers.hand_sgd_step(hp, x, y, lr)
            for k in peers.names:
                if hp[k].dtype != dtype:
                    problems.append(f"hand {dname}: parameter {k} became {hp[k].dtype}")
            for who, (loss, newp) in steps.items():
                compare(f"{who} vs hand, {dname}, step loss", loss, hl, tol)
                for k in peers.names:
                    # compare the increments, not the params (whose size hides errors)
                    compare(f"{who} vs hand, {dname}, step {k}", None, None, tol,
                            increment_err(newp[k], hp[k], p[k]))
                    if newp[k].dtype != dtype:
                        problems.append(f"{who} {dname}: parameter {k} became {newp[k].dtype}")
    return worst, problems


def peer_parser(doc, batch_sizes, lr=0.1):
    """The command line every generated-vs-hand-vs-torch benchmark takes."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=batch_sizes, metavar="N")
    ap.add_argument("--rounds", type=int, default=200, help="interleaved rounds per batch size (default 200)")
    ap.add_argument("--block-ms", type=float, default=2.0,
                    help="target length of one timed block of calls, in ms (default 2)")
    ap.add_argument("--lr", type=float, default=lr, help=f"SGD learning rate (default {lr})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, metavar="N",
                    help="cap numpy's BLAS (threadpoolctl) and torch.set_num_threads at N; "
                         "default: leave both libraries at their own defaults")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if it is importable")
    return ap


def time_peers(args, gen, torch, peers):
    """Time gen.sgd_step, the hand-written step and PyTorch's at every batch size; print the table."""
    rows = []
    for batch in args.batch_sizes:
        x, y = peers.make_data(batch, np.float32, args.seed + 1000 + batch)
        p0 = gen.init_params(args.seed, np.float32)
        gp, hp = copy_params(p0), copy_params(p0)
        lr = args.lr
        contenders = {
            "generated": lambda: gen.sgd_step(gp, x, y, lr),
            "hand": lambda: peers.hand_sgd_step(hp, x, y, lr),
        }
        if torch is not None:
            tstep = peers.make_torch_step(torch, peers.make_torch(torch, p0))
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)
            contenders["torch"] = lambda: tstep(tx, ty, lr)
        samples, numbers = time_interleaved(contenders, args.rounds, args.block_ms / 1e3)
        rows.append((batch, summarize(samples), numbers))

    names = ["generated", "hand"] + (["torch"] if torch is not None else [])
    print_table(rows, names, [("gen/hand", "generated", "hand"), ("gen/torch", "generated", "torch")],
                args.rounds)
    print("ratios > 1 mean the generated module is slower.")


def run_peers(args, source, title, peers):
    """A whole benchmark: load, check, time, print. Returns the exit status."""
    torch = import_torch(not args.no_torch)
    gen = load_generated(source)
    limiter = limit_threads(args.threads, torch)
    print_header(f"nncc bench: one SGD step (forward + backward + update), float32, {source.name}: {title}",
                 torch)
    worst, problems = check_peers(peers, gen, torch, args.batch_sizes, args.seed, args.lr)
    if problems:
        print_problems(problems)
        return 1
    print("\ncheck passed: same loss, gradients and SGD increments at batch sizes "
          f"{', '.join(map(str, sorted(set(args.batch_sizes) | {1, 7})))}; "
          "worst max|diff|/max|hand| (tolerance 1e-12 float64, 1e-5 float32; "
          "increments less one ulp of the parameter):")
    print("  " + "  ".join(f"{who}, {dname}: {e:.1e}" for (who, dname), e in worst.items()))
    time_peers(args, gen, torch, peers)
    if limiter is not None:
        limiter.restore_original_limits()
    return 0
