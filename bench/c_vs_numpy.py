"""One SGD step of nncc's C backend against its numpy backend, for XOR, Nielsen's
784-30-10 network and the LeNet-style digits CNN, at batch 1 and 64.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/c_vs_numpy.py --threads 1

Three contenders per network, float32, each doing forward, loss, every gradient and
the in-place update:
  numpy     the generated numpy module's sgd_step(params, x, y, lr)
  c-module  the cffi module of `nncc --backend c -o OUT.py`: the same API (a dict of
            arrays in and out), so it packs the parameters into one flat array and
            back on every call
  c-kernel  the generated C function <name>_f32_sgd_step called through cffi on buffers
            prepared once: what a C program embedding the two generated files pays
Before timing, the C module's loss, gradients and SGD increments are checked against
the numpy module's in float64 (1e-12 relative) and float32 (1e-5).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from harness import (EXAMPLES, copy_params, limit_threads, load_generated, print_header, print_problems,
                     print_table, rel_err, summarize, time_interleaved)

NETWORKS = ("xor", "nielsen", "lenet")


def make_data(mod, batch, dtype, seed):
    """Inputs in [0, 1) shaped as the module wants them, one-hot (or 0/1) targets."""
    rng = np.random.default_rng(seed)
    (x_shape,) = mod.INPUT_SHAPES.values()
    (y_shape,) = mod.TARGET_SHAPES.values()
    x = rng.random((batch,) + tuple(x_shape)).astype(dtype)
    y = np.zeros((batch,) + tuple(y_shape), dtype)
    y.reshape(batch, -1)[np.arange(batch), rng.integers(0, y[0].size, batch)] = 1
    return x, y


def check(numpy_mod, c_mod, batch_sizes, seed, lr):
    worst, problems = {}, []
    for batch in sorted(set(batch_sizes) | {7}):
        for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
            x, y = make_data(numpy_mod, batch, dtype, seed + batch)
            p = numpy_mod.init_params(seed, dtype)
            ref_loss, ref = numpy_mod.loss_and_grad(p, x, y)
            loss, got = c_mod.loss_and_grad(p, x, y)
            # the C module's own init_params: views of one flat array, updated in place
            pn, pc = copy_params(p), c_mod.init_params(seed, dtype)
            step_n, step_c = numpy_mod.sgd_step(pn, x, y, lr), c_mod.sgd_step(pc, x, y, lr)
            pairs = [("loss", loss, ref_loss), ("step loss", step_c, step_n)]
            pairs += [(f"grad {k}", got[k], ref[k]) for k in ref]
            # float64: the increments, as the parameters' size would hide an error; float32:
            # the new parameters, as p_new - p cancels to the float32 spacing of p
            pairs += [(f"step {k}", pc[k] - p[k], pn[k] - p[k]) if dtype == np.float64 else
                      (f"step {k}", pc[k], pn[k]) for k in ref]
            for what, a, b in pairs:
                e = rel_err(a, b)
                key = np.dtype(dtype).name
                worst[key] = max(worst.get(key, 0.0), e)
                if not e <= tol:
                    problems.append(f"batch {batch}, {key}, {what}: C vs numpy {e:.3g} > {tol:g}")
            if any(v.dtype != dtype for v in list(got.values()) + list(pc.values())):
                problems.append(f"batch {batch}: the C module does not keep {np.dtype(dtype).name}")
    return worst, problems


def kernel_step(c_mod, params, x, y, lr):
    """sgd_step of the C code on buffers made once, as a C program would call it."""
    ffi = c_mod._ffi
    ctype, *fns = c_mod._C[np.dtype(np.float32)]
    per, const = c_mod._WORKSPACE[np.dtype(np.float32)]
    batch = x.shape[0]
    keep = {"flat": c_mod._flat(params, np.float32)[0], "x": np.ascontiguousarray(x),
            "y": np.ascontiguousarray(y)}
    keep["work"] = np.empty(max(1, per * batch + const), np.float32)
    ptr = {k: ffi.from_buffer(ctype + "[]", v) for k, v in keep.items()}
    step = fns[3]

    def run():
        return step(ptr["flat"], ptr["x"], ptr["y"], batch, lr, ptr["work"])
    run.keep = keep  # the buffers live as long as the closure
    return run


def sizes(c_mod, batch_sizes):
    """Parameter and workspace bytes of the float32 C code, as the header defines them."""
    count = sum(int(np.prod(s)) for s in c_mod.PARAM_SHAPES.values())
    per, const = c_mod._WORKSPACE[np.dtype(np.float32)]
    work = ", ".join(f"batch {b}: {(per * b + const) * 4:,} B" for b in batch_sizes)
    return (f"parameters {count:,} floats = {count * 4:,} B; workspace {per:,} floats per sample "
            f"+ {const:,} ({work})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], metavar="N")
    ap.add_argument("--rounds", type=int, default=100, help="interleaved rounds per case (default 100)")
    ap.add_argument("--block-ms", type=float, default=2.0, help="length of one timed block, ms (default 2)")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, metavar="N",
                    help="cap numpy's BLAS at N threads (default: leave it alone)")
    args = ap.parse_args(argv)

    limiter = limit_threads(args.threads)
    print_header("nncc bench: one SGD step (forward + backward + update), float32, "
                 "C backend against numpy backend")
    modules = {}
    for name in args.networks:
        source = EXAMPLES / f"{name}.nn"
        modules[name] = load_generated(source), load_generated(source, backend="c")
        print(f"  {name}: {sizes(modules[name][1], args.batch_sizes)}")

    failed = False
    for name, (numpy_mod, c_mod) in modules.items():
        worst, problems = check(numpy_mod, c_mod, args.batch_sizes, args.seed, args.lr)
        if problems:
            print(f"\n{name}:")
            print_problems(problems)
            failed = True
        else:
            print(f"check passed, {name}: C module vs numpy module, loss, gradients and SGD increments, worst "
                  + ", ".join(f"{d} {e:.1e}" for d, e in worst.items()) + " (tolerance 1e-12, 1e-5)")
    if failed:
        return 1

    rows = []
    for name, (numpy_mod, c_mod) in modules.items():
        for batch in args.batch_sizes:
            x, y = make_data(numpy_mod, batch, np.float32, args.seed + 1000 + batch)
            p0 = numpy_mod.init_params(args.seed, np.float32)
            pn, pc, pk = copy_params(p0), c_mod.init_params(args.seed, np.float32), copy_params(p0)
            lr = args.lr
            contenders = {
                "numpy": lambda: numpy_mod.sgd_step(pn, x, y, lr),
                "c-module": lambda: c_mod.sgd_step(pc, x, y, lr),
                "c-kernel": kernel_step(c_mod, pk, x, y, lr),
            }
            samples, numbers = time_interleaved(contenders, args.rounds, args.block_ms / 1e3)
            rows.append((f"{name} b{batch}", summarize(samples), numbers))

    print_table(rows, ["numpy", "c-module", "c-kernel"],
                [("numpy/c-mod", "numpy", "c-module"), ("numpy/c-kern", "numpy", "c-kernel")],
                args.rounds, first="case")
    print("ratios > 1 mean the C code is faster than the numpy module.")
    if limiter is not None:
        limiter.restore_original_limits()
    return 0


if __name__ == "__main__":
    sys.exit(main())
