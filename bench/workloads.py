"""One SGD step of five workloads (bench/workloads/w1.nn ... w5.nn): nncc's numpy module,
its C module, the C module built with --blas, hand-tuned numpy, PyTorch eager, and LIMIT
(the step's matrix products alone).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/workloads.py
    ... python bench/workloads.py --workloads W2_b64 W5 --rounds 9

| workload | network | batch |
| W3_b1, W3_b4 | XOR 2-4-1, sigmoid, quadratic | 1, 4 |
| W1, W1_b64 | 784-30-10, sigmoid, quadratic | 10, 64 |
| W2_b64, W2_b256 | 784-512-256-10, relu, softmax cross-entropy | 64, 256 |
| W4 | conv 1->8 3x3 pad 1, relu, maxpool 2, dense 10, softmax cross-entropy | 64 |
| W5 | 1024-4096-4096-10, relu, softmax cross-entropy | 256 |

Contenders, float32, each doing forward, loss, every gradient and the in-place update:
  numpy       the generated numpy module's sgd_step
  c           the cffi module of `nncc --backend c`, on its own init_params (one flat
              array the C updates in place)
  c-blas      the same, built with --blas (needs scipy-openblas32; skipped without)
  tuned       hand-written numpy for the dense networks: buffers allocated once per batch
              size, out= everywhere, sigmoid through tanh, -lr/B folded into the output
              delta so that each weight's product is its update (not for W4: see
              lenet_step.py for a hand-written convolutional step)
  torch       PyTorch eager, the same network and loss, autograd, p.sub_(lr * p.grad)
  LIMIT       only the step's matrix products, into buffers allocated once (dense
              networks): what no implementation of the step can beat on this BLAS
Before timing, every contender's SGD increments (and loss) are checked against the
numpy module's in float64 from the same parameters: 1e-4 relative (less one unit in the
last place of the parameter), or four times the numpy module's own float32 error.  Ratios are of medians over interleaved rounds.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

from harness import (copy_params, import_text, import_torch, increment_err, limit_threads, print_header,
                     print_problems, print_table, rel_err, summarize, time_interleaved)

HERE = Path(__file__).resolve().parent
WORKLOADS = {"W3_b1": ("w3", 1), "W3_b4": ("w3", 4), "W1": ("w1", 10), "W1_b64": ("w1", 64),
             "W2_b64": ("w2", 64), "W2_b256": ("w2", 256), "W4": ("w4", 64), "W5": ("w5", 256)}
# each dense network: its activations and loss (the .nn files say the same)
DENSE = {"w1": (("sigmoid", "sigmoid"), "quadratic"), "w2": (("relu", "relu", "none"), "softmax_ce"),
         "w3": (("sigmoid", "sigmoid"), "quadratic"), "w5": (("relu", "relu", "none"), "softmax_ce")}


def modules(stem):
    """{contender: module} compiled from bench/workloads/STEM.nn by the current compiler."""
    from nncc.api import compile_source
    from nncc.backends.c.codegen import render_c_module
    source = HERE / "workloads" / f"{stem}.nn"
    compiled = compile_source(source.read_text(), str(source))
    out = {"numpy": import_text(compiled.numpy_module(), f"{stem}_numpy"),
           "c": import_text(render_c_module(compiled), f"{stem}_c")}
    if importlib.util.find_spec("scipy_openblas32") is None:
        print(f"  {stem}: c-blas skipped (pip install scipy-openblas32)")
    else:
        out["c-blas"] = import_text(render_c_module(compiled, blas=True), f"{stem}_cblas")
    return out


def make_data(mod, batch, seed):
    rng = np.random.default_rng(seed)
    (x_shape,) = mod.INPUT_SHAPES.values()
    (y_shape,) = mod.TARGET_SHAPES.values()
    x = rng.random((batch,) + tuple(x_shape), dtype=np.float32)
    y = np.zeros((batch,) + tuple(y_shape), np.float32)
    y.reshape(batch, -1)[np.arange(batch), rng.integers(0, y[0].size, batch)] = 1
    return x, y


# ---- hand-tuned numpy, for the dense networks ------------------------------------------

class Tuned:
    """One SGD step of a dense network, batch-first, with every buffer allocated once."""

    def __init__(self, names, activations, loss, batch, sizes):
        self.names, self.activations, self.loss = names, activations, loss
        self.z = [np.empty((batch, n), np.float32) for n in sizes[1:]]  # pre-activations, then δ
        self.a = [np.empty((batch, n), np.float32) for n in sizes[1:]]
        self.g = [np.empty((n, m), np.float32) for m, n in zip(sizes, sizes[1:])]
        self.m = [np.empty((batch, n), np.float32) for n in sizes[1:]]  # masks, derivatives
        self.row = np.empty((batch, 1), np.float32)

    def _act(self, kind, z, a):
        if kind == "relu":
            np.maximum(z, 0, out=a)
        elif kind == "sigmoid":  # σ(z) = (1 + tanh(z/2)) / 2: one transcendental, no overflow
            np.multiply(z, 0.5, out=a)
            np.tanh(a, out=a)
            np.multiply(a, 0.5, out=a)
            np.add(a, 0.5, out=a)
        else:
            a[...] = z

    def step(self, p, x, y, lr):
        W = [p[n] for n in self.names[0::2]]
        b = [p[n] for n in self.names[1::2]]
        batch, prev = x.shape[0], x
        for k, (w, bias, kind) in enumerate(zip(W, b, self.activations)):
            np.matmul(prev, w.T, out=self.z[k])
            self.z[k] += bias
            self._act(kind, self.z[k], self.a[k])
            prev = self.a[k]
        out, d = self.a[-1], self.z[-1]
        scale = np.float32(-lr / batch)
        if self.loss == "quadratic":  # ½‖a − y‖², δ = (a − y) a (1 − a)
            np.subtract(out, y, out=d)
            loss = 0.5 * float(np.vdot(d, d)) / batch
            np.subtract(1, out, out=self.m[-1])
            self.m[-1] *= out
            d *= self.m[-1]
        else:  # softmax cross-entropy against probabilities y: δ = softmax(z) − y
            np.max(out, axis=1, keepdims=True, out=self.row)
            np.subtract(out, self.row, out=d)
            np.exp(d, out=self.m[-1])
            np.sum(self.m[-1], axis=1, keepdims=True, out=self.row)
            np.log(self.row, out=self.row)
            d -= self.row  # log-softmax
            loss = -float(np.vdot(d, y)) / batch
            np.exp(d, out=d)
            d -= y
        d *= scale  # -lr/B: every product below is an increment
        for k in range(len(W) - 1, -1, -1):
            d = self.z[k]
            below = self.a[k - 1] if k else x
            if k:  # δ below, through the old weights
                np.matmul(d, W[k], out=self.z[k - 1])
                if self.activations[k - 1] == "relu":
                    np.greater(below, 0, out=self.m[k - 1])
                else:
                    np.subtract(1, below, out=self.m[k - 1])
                    self.m[k - 1] *= below
                self.z[k - 1] *= self.m[k - 1]
            np.matmul(d.T, below, out=self.g[k])
            W[k] += self.g[k]
            b[k] += d.sum(axis=0)
        return loss


class Limit:
    """The step's matrix products alone: forward, δ below, each weight's product."""

    def __init__(self, names, batch, sizes):
        self.a = [np.empty((batch, n), np.float32) for n in sizes[1:]]
        self.d = [np.empty((batch, n), np.float32) for n in sizes[:-1]]
        self.g = [np.empty((n, m), np.float32) for m, n in zip(sizes, sizes[1:])]
        self.names = names

    def step(self, p, x, y, lr):
        W = [p[n] for n in self.names[0::2]]
        prev = x
        for k, w in enumerate(W):
            np.matmul(prev, w.T, out=self.a[k])
            prev = self.a[k]
        for k in range(len(W) - 1, -1, -1):
            if k:
                np.matmul(self.a[k], W[k], out=self.d[k])
            np.matmul(self.a[k].T, self.a[k - 1] if k else x, out=self.g[k])
        return 0.0


def torch_step(torch, p, activations, loss):
    """PyTorch eager: its own copies of the parameters; step(x, y, lr) -> loss."""
    names = list(p)
    tp = {n: torch.tensor(v, requires_grad=True) for n, v in p.items()}
    F = torch.nn.functional

    def step(x, y, lr):
        h = x
        for k, kind in enumerate(activations):
            h = F.linear(h, tp[names[2 * k]], tp[names[2 * k + 1]])
            h = torch.relu(h) if kind == "relu" else torch.sigmoid(h) if kind == "sigmoid" else h
        if loss == "quadratic":
            value = 0.5 * ((h - y) ** 2).sum() / x.shape[0]
        else:
            value = -(y * F.log_softmax(h, dim=1)).sum() / x.shape[0]
        value.backward()
        with torch.no_grad():
            for t in tp.values():
                t.sub_(lr * t.grad)
                t.grad = None
        return float(value)
    step.params = tp
    return step


def check(stem, mods, batch, lr, seed, torch):
    """Every contender's increments and loss against the numpy module's in float64, from the
    same float32 parameters and data; [problems].  A contender may stray from it by 1e-4
    relative, or by up to four times what the numpy module itself strays in float32: a
    first layer's gradient behind two 4096-wide layers (W5) is that ill-conditioned in
    float32 (ReLU masks flip with the rounding of the products), and the numpy module is
    not the truth either."""
    ref = mods["numpy"]
    x, y = make_data(ref, batch, seed)
    p = ref.init_params(seed, np.float32)
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    want_p = copy_params(p64)
    want = ref.sgd_step(want_p, x.astype(np.float64), y.astype(np.float64), lr)
    got = {}
    for name, mod in mods.items():
        q = mod.init_params(seed, np.float32)
        for k in q:
            q[k][...] = p[k]
        got[name] = (mod.sgd_step(q, x, y, lr), q)
    if stem in DENSE:
        acts, loss = DENSE[stem]
        sizes = [x.shape[1]] + [p[n].shape[0] for n in list(p)[0::2]]
        q = copy_params(p)
        got["tuned"] = (Tuned(list(p), acts, loss, batch, sizes).step(q, x, y, lr), q)
        if torch is not None:
            step = torch_step(torch, p, acts, loss)
            value = step(torch.from_numpy(x), torch.from_numpy(y), lr)
            got["torch"] = (value, {k: t.detach().numpy() for k, t in step.params.items()})
    errors = {name: (rel_err(value, want), {k: increment_err(q[k], want_p[k], p64[k]) for k in p})
              for name, (value, q) in got.items()}
    own_loss, own = errors["numpy"]
    problems = []
    for name, (e_loss, e) in errors.items():
        if e_loss > max(1e-4, 4 * own_loss):
            problems.append(f"{stem} b{batch} {name}: loss {got[name][0]} vs {want} in float64")
        for k in p:
            if e[k] > max(1e-4, 4 * own[k]):
                problems.append(f"{stem} b{batch} {name}: step {k} differs from float64 by {e[k]:.3g} "
                                f"(relative; the numpy module's own float32 error is {own[k]:.3g})")
    return problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds per workload (default 15)")
    ap.add_argument("--block-ms", type=float, default=20.0, help="length of one timed block, ms (default 20)")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, metavar="N",
                    help="numpy's BLAS and torch at N threads (default 2)")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    torch = import_torch(not args.no_torch)
    limiter = limit_threads(args.threads, torch)
    print_header("nncc bench: one SGD step of five workloads, float32: generated numpy and C against "
                 "hand-tuned numpy, PyTorch and the products alone", torch)
    compiled, rows, problems = {}, [], []
    for label in args.workloads:
        stem, batch = WORKLOADS[label]
        if stem not in compiled:
            compiled[stem] = modules(stem)
        problems += check(stem, compiled[stem], batch, args.lr, args.seed, torch)
    if problems:
        print_problems(problems)
        return 1
    print("check passed: every contender's loss and SGD increments agree with the numpy module's in float64")
    names = ["numpy", "c", "c-blas", "tuned", "torch", "LIMIT"]
    for label in args.workloads:
        stem, batch = WORKLOADS[label]
        mods = compiled[stem]
        x, y = make_data(mods["numpy"], batch, args.seed + 1)
        p0 = mods["numpy"].init_params(args.seed, np.float32)
        contenders = {}
        for name, mod in mods.items():
            q = mod.init_params(args.seed, np.float32)
            for k in q:
                q[k][...] = p0[k]
            contenders[name] = (lambda m, q: lambda: m.sgd_step(q, x, y, args.lr))(mod, q)
        if stem in DENSE:
            acts, loss = DENSE[stem]
            sizes = [x.shape[1]] + [p0[n].shape[0] for n in list(p0)[0::2]]
            tuned, limit, qt, ql = (Tuned(list(p0), acts, loss, batch, sizes), Limit(list(p0), batch, sizes),
                                    copy_params(p0), copy_params(p0))
            contenders["tuned"] = lambda: tuned.step(qt, x, y, args.lr)
            contenders["LIMIT"] = lambda: limit.step(ql, x, y, args.lr)
            if torch is not None:
                tstep, tx, ty = torch_step(torch, p0, acts, loss), torch.from_numpy(x), torch.from_numpy(y)
                contenders["torch"] = lambda: tstep(tx, ty, args.lr)
        samples, numbers = time_interleaved(contenders, args.rounds, args.block_ms / 1e3)
        rows.append((label, summarize(samples), numbers))
        print(f"  timed {label}", flush=True)
    print_table(rows, [n for n in names if any(n in r[1] for r in rows)],
                [("numpy/tuned", "numpy", "tuned"), ("c/tuned", "c", "tuned"), ("c-blas/tuned", "c-blas", "tuned"),
                 ("numpy/LIMIT", "numpy", "LIMIT")], args.rounds, first="workload")
    print("ratios above 1 mean the generated code is slower than the hand-tuned step (or the products alone).")
    if limiter is not None:
        limiter.restore_original_limits()
    return 0


if __name__ == "__main__":
    sys.exit(main())
