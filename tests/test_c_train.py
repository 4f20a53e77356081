"""The C backend's train_step against the numpy module's: the same optimizer formulas
rendered by both, over several steps, with clipping, a frozen layer, and a state that is
not the module's own (loaded arrays: copied in and back)."""
from __future__ import annotations

import shutil
import types

import numpy as np
import pytest

import nn_zoo
from conftest import random_data
from nncc.api import compile_source, load_module
from nncc.backends.c.codegen import render_c_module

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")

# (example, optimizer, frozen layers, float64 tolerance: Adam divides by the root of a
# second moment that can be tiny, which magnifies the last bits of a gradient)
CASES = [("nielsen", "adam(lr=0.01)", (), 1e-10),
         ("lenet", "sgd(lr=0.1, momentum=0.9, nesterov=true, weight_decay=0.01)", (), 1e-12),
         ("lenet", "adamw(lr=0.01, weight_decay=0.1)", ("conv2d_1",), 1e-10),
         ("digits", "sgd(lr=0.5)", (), 1e-12)]


def _both(example, optimizer, frozen):
    model = next(m for m in nn_zoo.examples() if m.id == f"example-{example}")
    c = compile_source(model.source, model.file_name, optimizer, frozen)
    module = types.ModuleType(f"c_train_{example}")
    exec(compile(render_c_module(c), f"<c {example}>", "exec"), module.__dict__)
    return model, load_module(model.source, model.file_name, optimizer=optimizer, freeze=frozen), module


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


@pytest.mark.parametrize("example, optimizer, frozen, tol", CASES, ids=[f"{c[0]}-{c[1].split('(')[0]}" for c in CASES])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_c_train_step_agrees_with_numpy(example, optimizer, frozen, tol, dtype):
    model, npm, cm = _both(example, optimizer, frozen)
    assert cm.STATE_NAMES == npm.STATE_NAMES and cm.TRAINED == npm.TRAINED
    tol = tol if dtype == np.float64 else 2e-3
    p = npm.init_params(1, dtype)
    q = cm.init_params(1, dtype)
    for k in p:
        q[k][...] = p[k]
    inputs, targets = random_data(npm, model.domains, 3, seed=1, dtype=dtype)
    s, t = npm.init_state(p), cm.init_state(q)
    for lr, max_norm in ((0.01, None), (0.02, 0.05), (0.01, None), (0.005, 10.0)):
        a = npm.train_step(p, s, *inputs, *targets, lr=lr, max_norm=max_norm)
        b = cm.train_step(q, t, *inputs, *targets, lr=lr, max_norm=max_norm)
        assert abs(a - b) <= tol * max(abs(a), 1e-30)
    assert t["step"] == s["step"] == 4
    for k in p:
        assert _rel(q[k], p[k]) <= tol, k
        assert q[k].dtype == dtype
    for kept in npm.STATE_NAMES:
        for k in npm.TRAINED:
            assert _rel(t[kept][k], s[kept][k]) <= tol, (kept, k)


def test_c_train_step_takes_a_state_of_its_own_arrays():
    """A state assembled from arrays (loaded from a checkpoint, say) is copied in and back."""
    model, npm, cm = _both("nielsen", "adam(lr=0.01)", ())
    p = cm.init_params(0, np.float64)
    inputs, targets = random_data(npm, model.domains, 2, seed=3)
    own = cm.init_state(p)
    cm.train_step(p, own, *inputs, *targets)
    loose = {"step": own["step"], **{k: {n: a.copy() for n, a in own[k].items()} for k in cm.STATE_NAMES}}
    q = {k: v.copy() for k, v in p.items()}
    cm.train_step(p, own, *inputs, *targets)
    cm.train_step(q, loose, *inputs, *targets)
    for k in p:
        np.testing.assert_array_equal(p[k], q[k])
    for kept in cm.STATE_NAMES:
        for n in cm.TRAINED:
            np.testing.assert_array_equal(own[kept][n], loose[kept][n])
    assert loose["step"] == 2
