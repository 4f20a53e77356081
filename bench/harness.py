"""What every benchmark in bench/ shares: loading the modules nncc generates, the
agreement measure, interleaved timing, and the header describing the machine.

Not a test helper: nothing here asserts a speed.
"""
from __future__ import annotations

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
        from nncc.c_backend import render_c_module
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
    ratios: [(column title, numerator name, denominator name)], skipped where a name is absent."""
    ratios = [r for r in ratios if r[1] in names and r[2] in names]
    print(f"\nafter timing: {load_note()}")
    print(f"median µs per step over {rounds} interleaved rounds (± half the IQR, % of median)")
    width = max([len(first)] + [len(str(label)) for label, _, _ in rows])
    head = f"{first:>{width}} " + " ".join(f"{n:>16}" for n in names)
    head += "".join(f" {title:>11}" for title, _, _ in ratios)
    print(head)
    print("-" * len(head))
    for label, stats, _ in rows:
        line = f"{label!s:>{width}} " + " ".join(f"{stats[n][0]:>9.1f} ±{stats[n][1]:>4.1f}%" for n in names)
        line += "".join(f" {stats[a][0] / stats[b][0]:>11.2f}" for _, a, b in ratios)
        print(line)
    print("\ncalls per timed block: " + "; ".join(
        f"{label}: " + ", ".join(f"{n} {numbers[n]}" for n in names) for label, _, numbers in rows))
    print("Shared machine: expect run-to-run noise of several percent when it is quiet, far more when "
          "it is busy; compare medians and ratios, not single timings.")
