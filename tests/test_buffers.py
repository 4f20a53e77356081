"""The numpy module's kept buffers (backends/numpy/buffers.py): the same bits as the
plain lines, where every value is a fresh array; values handed to the caller never
overwritten by a later call; no big array made anew on each step.
"""
import dataclasses
import random
import sys
import tracemalloc
import types
from pathlib import Path

import numpy as np
import pytest

from nncc.api import compile_source
from nncc.backends.numpy.module import render
from nncc.errors import NNError

sys.path.insert(0, str(Path(__file__).resolve().parent))

from program_generator import generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.nn"))
FUNCTIONS = ("forward", "loss", "loss_and_grad", "sgd_step", "train_step")


def _load(text, name):
    module = types.ModuleType(name)
    exec(compile(text, f"<{name}>", "exec"), module.__dict__)
    return module


def _both(source, file):
    """(the module as generated, the same module computing every value as a fresh array)."""
    c = compile_source(source, file)
    plain = c.plan
    bodies = {"forward": (plain.forward, (), ()), "loss": (plain.loss_forward, (), ())}
    for fn in ("loss_and_grad", "sgd_step"):
        bodies[fn] = ((plain.loss_forward, plain.backward), (), ())
    # an update written into its array by copying a fresh one
    update = tuple(dataclasses.replace(x, code=f"np.copyto({x.target}, {x.code})") if x.into else x
                   for x in plain.update)
    bodies["train_step"] = ((plain.loss_forward, plain.backward, update), (), ())
    fresh = render(dataclasses.replace(plain, bodies=bodies), c.graph)
    assert "_workspace(" not in fresh
    return _load(c.numpy_module(), "kept"), _load(fresh, "fresh")


def _arrays(module, dtype, batch, seed):
    rng = np.random.default_rng(seed)
    shapes = list(module.INPUT_SHAPES.values()) + list(module.TARGET_SHAPES.values())
    return [rng.uniform(-1, 1, (batch,) + s).astype(dtype) for s in shapes]


def _largest(b) -> float:
    finite = np.abs(b[np.isfinite(b)])
    return float(finite.max(initial=0.0))


def _same(a, b, rel, scale=None):
    """a and b the same bits, or within rel of the largest value of the array (of all the
    arrays of a dict: a gradient that sums to about zero is as exact as its terms, whose
    size its neighbours show, not as its own)."""
    if isinstance(a, dict):
        scale = max((_largest(v) for v in b.values() if isinstance(v, np.ndarray)), default=None)
        return a.keys() == b.keys() and all(_same(a[k], b[k], rel, scale) for k in a)
    if isinstance(a, tuple):
        return all(_same(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        scale = max(scale or 0.0, _largest(b))
        return a.dtype == b.dtype and a.shape == b.shape and (
            np.array_equal(a, b, equal_nan=True) or np.allclose(a, b, rtol=0, atol=rel * scale, equal_nan=True))
    return a == b or (a != a and b != b) or abs(a - b) <= rel * abs(b)


def _agree(kept, fresh, dtype, rel=0.0):
    """Every function of both modules, at batch sizes 3, 1 and 3 again (the buffers of the
    first call reused), gives the same bits (or within `rel` of each array's largest
    value) and updates the parameters alike."""
    for batch, seed in ((3, 0), (1, 1), (3, 2)):
        params = {k: v + np.asarray(0.01, dtype) for k, v in kept.init_params(seed, dtype).items()}
        arrays = _arrays(kept, dtype, batch, seed)
        for fn in FUNCTIONS:
            p, q = ({k: v.copy() for k, v in params.items()} for _ in range(2))
            args = arrays[:len(kept.INPUT_SHAPES)] if fn == "forward" else arrays
            extra = (0.25,) if fn == "sgd_step" else ()
            if fn == "train_step":  # two steps, the second with the first's state
                states = kept.init_state(p), fresh.init_state(q)
                for lr in (0.25, 0.125):
                    got = kept.train_step(p, states[0], *args, lr=lr, max_norm=1.0)
                    want = fresh.train_step(q, states[1], *args, lr=lr, max_norm=1.0)
                    assert _same(got, want, rel) and _same(states[0], states[1], rel), (fn, batch, dtype)
            else:
                got, want = getattr(kept, fn)(p, *args, *extra), getattr(fresh, fn)(q, *args, *extra)
            assert _same(got, want, rel), (fn, batch, dtype)
            assert _same(p, q, rel), (fn, batch, dtype)


@pytest.mark.parametrize("example", EXAMPLES)
def test_kept_buffers_give_the_bits_of_fresh_arrays_on_the_examples(example):
    kept, fresh = _both((ROOT / "examples" / example).read_text(), example)
    for dtype in (np.float32, np.float64):
        # a sum over one axis of a matrix is a BLAS product with ones there, numpy's
        # reduction here: the same terms added in another order, a few ulps apart
        _agree(kept, fresh, dtype, rel=256 * float(np.finfo(dtype).eps))


@pytest.mark.parametrize("seed", range(30_000, 30_040))
def test_kept_buffers_give_the_bits_of_fresh_arrays_on_generated_programs(seed):
    source = generate(random.Random(seed), f"g{seed}")
    try:
        kept, fresh = _both(source, f"g{seed}.nn")
    except NNError as exc:  # a program the compiler refuses says so in plain words
        pytest.skip(f"refused: {exc}")
    # a sum over a buffer may add in another order than over a fresh array, which numpy
    # lays out as the strided views it came from: rounding apart, no more
    with np.errstate(all="ignore"):
        _agree(kept, fresh, np.float64, rel=1e-13)


def test_a_view_of_a_temporary_keeps_it_until_the_view_dies():
    # h4 = (c*h1).reshape(...) is a view of the buffer the product went into: the next line
    # must not take that buffer while h4 lives (it did: the loss came out wrong)
    source = "layer flat2(x: [c, n]) {\n    y[ch*n + i] = x[ch, i]\n}\n" \
             "layer rows(x: [n]) {\n    y[0, i] = x[i] for i < n\n}\n" \
             "input u0: [2]\ntarget y0: [2]\n" \
             "h1 = u0 |> dense(2) |> rows\nh4 = (h1 - 1.4142135623730951 * h1) |> flat2\n" \
             "h6 = silu(h1) |> flat2\nloss = mse(h4, y0) + mse(h6, y0)\n"
    kept, fresh = _both(source, "view.nn")
    _agree(kept, fresh, np.float64)


def test_values_handed_out_are_never_overwritten_by_a_later_call():
    source = (ROOT / "examples" / "lenet.nn").read_text()
    kept, _ = _both(source, "lenet.nn")
    params = kept.init_params(0, np.float32)
    first = _arrays(kept, np.float32, 4, 0)
    out = kept.forward(params, *first[:1])
    value, grads = kept.loss_and_grad(params, *first)
    saved = out.copy(), {k: g.copy() for k, g in grads.items()}
    for seed in range(1, 4):
        again = _arrays(kept, np.float32, 4, seed)
        kept.forward(params, *again[:1])
        kept.loss_and_grad(params, *again)
        kept.sgd_step({k: v.copy() for k, v in params.items()}, *again, lr=0.1)
    assert np.array_equal(out, saved[0])
    assert all(np.array_equal(grads[k], saved[1][k]) for k in grads)
    arrays = [out] + list(grads.values())
    assert not any(np.shares_memory(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1:])


def test_an_sgd_step_of_a_wide_network_makes_no_big_array():
    # each gradient of a 256-256 layer is 512 KB in float64: made anew on every step, it
    # is mapped page by page; kept, it is written in place
    source = "input x: [256]\ntarget y: [10]\nz = x |> dense(256) |> relu |> dense(256) |> tanh |> dense(10)\n" \
             "loss = softmax_cross_entropy(z, y)\n"
    kept, fresh = _both(source, "wide.nn")
    peaks = {}
    for name, module in (("kept", kept), ("fresh", fresh)):
        params = module.init_params(0, np.float64)
        arrays = _arrays(module, np.float64, 64, 0)
        module.sgd_step(params, *arrays, lr=0.01)  # the first call makes the buffers
        tracemalloc.start()
        try:
            module.sgd_step(params, *arrays, lr=0.01)
            peaks[name] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peaks["fresh"] > 256 * 256 * 8  # the measure sees numpy's arrays
    # what is left is numpy's own casting buffer (8192 elements: the relu mask, boolean,
    # multiplied into a float array), far below one activation (64 x 256 x 8 = 128 KB)
    assert peaks["kept"] < 96 * 1024, peaks


def test_many_batch_sizes_keep_a_bounded_set_of_buffers():
    kept, fresh = _both((ROOT / "examples" / "nielsen.nn").read_text(), "nielsen.nn")
    params = kept.init_params(0, np.float64)
    for batch in range(1, 30):
        arrays = _arrays(kept, np.float64, batch, batch)
        assert kept.loss(params, *arrays) == fresh.loss(params, *arrays)
    assert len(kept._KEPT) <= 8
