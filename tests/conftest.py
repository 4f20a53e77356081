"""Shared helpers for the nncc test suite.

- `compile_nn(source, file_name)`: compile .nn text and import the generated module
  (cached by source, so every test file shares one compile per program);
- `lift_inputs(source)`: the same program with every input `x` routed through a
  zero-initialised additive parameter `input_x.shift`, so that its gradient (the
  batch sum of dL/dx) comes out of `loss_and_grad` and perturbing it perturbs the input;
- `random_data(module, domains, batch, seed, dtype)`: inputs and targets drawn per name
  from a domain (nn_zoo.Uniform, OneHot, ...);
- `fd_check(module, params, *arrays)`: central finite differences in float64 along a
  random direction of all parameters together, then of each parameter alone;
- `record_worst(kind, error, label)`: keeps the worst error of each kind and prints the
  table at the end of the run (visible with -q and -s).
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nn_zoo  # noqa: E402
from nncc.api import load_module  # noqa: E402

LIFT_PREFIX = "input_"
_INPUT_DECL = re.compile(r"^([ \t]*)input[ \t]+([A-Za-z_][A-Za-z_0-9]*)[ \t]*:[ \t]*\[([^\]\n]*)\]", re.M)


# ---- compiling -------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def compile_nn(source: str, file_name: str = "<test>.nn"):
    """Compile a .nn source and import the generated numpy module (cached by source)."""
    module_name = "nncc_test_" + re.sub(r"\W", "_", Path(file_name).stem)
    return load_module(source, file_name, module_name)


def lift_inputs(source: str) -> str:
    """Route every input through `y = x + shift` so dL/dx shows up as a parameter gradient.

    `input x: [4]` becomes `input x__in: [4]` followed by
    `x = x__in |> nncc_lift_1(name="input_x")`; the rest of the program is unchanged.
    """
    ranks = set()

    def repl(m):
        indent, name, shape = m.group(1), m.group(2), m.group(3)
        rank = len([s for s in shape.split(",") if s.strip()])
        ranks.add(rank)
        return (f'{indent}input {name}__in: [{shape}]\n'
                f'{indent}{name} = {name}__in |> nncc_lift_{rank}(name="{LIFT_PREFIX}{name}")')

    # put the assignment after the declaration's own trailing comment, if any
    lines = []
    for line in source.splitlines():
        m = _INPUT_DECL.match(line)
        if m:
            decl, assign = repl(m).split("\n")
            lines += [decl + line[m.end():], assign]
        else:
            lines.append(line)
    for rank in sorted(ranks):
        sizes = ", ".join(f"s{k}" for k in range(rank))
        idx = ", ".join(f"i{k}" for k in range(rank))
        lines += ["", f"layer nncc_lift_{rank}(x: [{sizes}]) {{",
                  f"    param shift: [{sizes}] init zeros",
                  f"    y[{idx}] = x[{idx}] + shift[{idx}]",
                  "}"]
    return "\n".join(lines) + "\n"


def base_name(name: str) -> str:
    return name[:-4] if name.endswith("__in") else name


# ---- data ----------------------------------------------------------------------------

def random_data(module, domains=None, batch=5, seed=0, dtype=np.float64):
    """(inputs, targets): lists of batch-first arrays in declaration order."""
    domains = domains or {}
    rng = np.random.default_rng(seed)

    def draw(table, default):
        out = []
        for name, shape in table.items():
            dom = domains.get(base_name(name), default)
            out.append(np.asarray(dom.draw(rng, (batch,) + tuple(shape)), dtype=dtype))
        return out

    return draw(module.INPUT_SHAPES, nn_zoo.DEFAULT_INPUT), draw(module.TARGET_SHAPES, nn_zoo.DEFAULT_TARGET)


def init_params(module, seed=0, dtype=np.float64):
    """init_params, with every lifted input shift at zero (the input is then unchanged)."""
    params = module.init_params(seed, dtype)
    for name in params:
        if name.startswith(LIFT_PREFIX) and name.endswith(".shift"):
            params[name] = np.zeros_like(params[name])
    return params


# ---- finite differences ------------------------------------------------------------------

def rel_error(fd: float, analytic: float, floor: float) -> float:
    """|fd - analytic| relative to the larger of the two, never to less than `floor`."""
    return abs(fd - analytic) / max(abs(fd), abs(analytic), floor)


def fd_check(module, params, *arrays, seed=0, step=1e-5, floor=1e-4):
    """Directional central differences in float64; {what: relative error}.

    For a random unit direction v (over all parameters, then over each parameter alone)
    compares <grad, v> with (L(p + h v) - L(p - h v)) / 2h.  The floor keeps a gradient
    that is truly ~0 from being judged on round-off: errors are relative to
    max(|fd|, |<grad, v>|, floor * (1 + |L|)).
    """
    params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    value, grads = module.loss_and_grad(params, *arrays)
    assert set(grads) == set(module.PARAM_SHAPES), "loss_and_grad must return one gradient per parameter"
    for name, g in grads.items():
        assert g.shape == module.PARAM_SHAPES[name], f"gradient of {name} has shape {g.shape}"
        assert np.all(np.isfinite(g)), f"gradient of {name} is not finite"
    assert np.isfinite(value)
    rng = np.random.default_rng(seed)
    scale = floor * (1 + abs(value))

    def directional(names):
        v = {n: rng.standard_normal(params[n].shape) for n in names}
        norm = np.sqrt(sum(float((d ** 2).sum()) for d in v.values())) or 1.0
        v = {n: d / norm for n, d in v.items()}

        def at(sign):
            moved = dict(params)
            for n, d in v.items():
                moved[n] = params[n] + sign * step * d
            return module.loss(moved, *arrays)

        fd = (at(+1) - at(-1)) / (2 * step)
        analytic = sum(float((grads[n] * d).sum()) for n, d in v.items())
        return rel_error(fd, analytic, scale)

    errors = {"<all parameters and inputs>": directional(sorted(params))}
    for name in sorted(params):
        errors[name] = directional([name])
    return errors


# ---- the C module's build cache: a temporary folder for the whole run ------------------

_CACHE_DIR = None


def pytest_configure(config):
    """Every C module a test builds goes to a private temporary cache, never the user's."""
    global _CACHE_DIR
    _CACHE_DIR = tempfile.mkdtemp(prefix="nncc-test-cache-")
    os.environ["NNCC_CACHE"] = _CACHE_DIR


def pytest_unconfigure(config):
    if _CACHE_DIR:
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)


# ---- worst errors, printed at the end --------------------------------------------------

WORST: dict[str, tuple[float, str]] = {}


def record_worst(kind: str, error: float, label: str) -> None:
    if kind not in WORST or error > WORST[kind][0]:
        WORST[kind] = (float(error), label)


def pytest_terminal_summary(terminalreporter):
    if not WORST:
        return
    terminalreporter.section("nncc: worst relative errors measured")
    for kind in sorted(WORST):
        err, label = WORST[kind]
        terminalreporter.write_line(f"{kind:<40} {err:10.3e}  ({label})")


# ---- fixtures ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return nn_zoo.EXAMPLES


def model_params(models):
    """pytest.param for each zoo model, with its id and marks."""
    return [pytest.param(m, id=m.id, marks=m.marks) for m in models]
