"""Kernel plan -> the values the numpy module template lays out."""
from __future__ import annotations

import ast
from functools import lru_cache
from importlib import resources

from ...version import __version__
from .lower import Plan
from ..pymodule import module_values
from ...templating import environment

# a runtime helper, and the helpers it calls
_CALLS = {"patches": ("reach",), "unpatches": ("reach",)}


def render(plan: Plan, graph) -> str:
    values = module_values(graph)
    return environment().get_template("numpy_module.py.j2").render(
        name=plan.name, version=__version__,
        forward=plan.forward, output=plan.output, output_name=plan.output,
        loss_forward=plan.loss_forward, loss_value=plan.loss_value, loss_var=None,
        backward=plan.backward, grads=[dict(name=n, var=v) for n, v in plan.grads],
        updates=[dict(param=p, grad=g) for p, g in plan.updates], loss_seed=plan.loss_seed,
        step_seed=plan.step_seed,
        helper_source=helper_source(plan.helpers), reduce=graph.reduce, flat_params=False, **values)


def helper_source(used) -> str:
    """The source of the runtime helpers `used` and of those they call, in the order of
    backends/numpy/runtime.py, copied verbatim."""
    needed = set(used) | {c for u in used for c in _CALLS.get(u, ())}
    helpers = _helpers()
    unknown = needed - set(helpers)
    assert not unknown, f"no runtime helper for {sorted(unknown)}"
    return "".join("\n\n\n" + text for name, text in helpers.items() if name in needed)


@lru_cache(maxsize=None)
def _helpers() -> dict:
    """{name without its underscore: source} of the helpers, read as text: importing the
    file would import numpy into the compiler, which does not need it."""
    text = resources.files("nncc.backends.numpy").joinpath("runtime.py").read_text(encoding="utf-8")
    return {f.name[1:]: ast.get_source_segment(text, f) for f in ast.parse(text).body
            if isinstance(f, ast.FunctionDef)}
