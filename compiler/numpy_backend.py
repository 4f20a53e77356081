"""Kernel plan -> the values the numpy module template lays out."""
from __future__ import annotations

import ast
from functools import lru_cache
from importlib import resources

from . import __version__
from .lower import Plan
from .naming import var
from .templating import environment

# a runtime helper, and the helpers it calls
_CALLS = {"patches": ("reach",), "unpatches": ("reach",)}


def shape_text(shape) -> str:
    return "(" + "".join(f"{n}, " for n in shape).rstrip(" ") + ")" if len(shape) != 1 else f"({shape[0]},)"


def render(plan: Plan, graph) -> str:
    values = module_values(graph)
    return environment().get_template("numpy_module.py.j2").render(
        name=plan.name, version=__version__,
        forward=plan.forward, output=plan.output, output_name=plan.output,
        loss_forward=plan.loss_forward, loss_value=plan.loss_value, loss_var=None,
        backward=plan.backward, grads=[dict(name=n, var=v) for n, v in plan.grads],
        helper_source=helper_source(plan.helpers), reduce=graph.reduce, flat_params=False, **values)


def helper_source(used) -> str:
    """The source of the runtime helpers `used` and of those they call, in the order of
    compiler/runtime/numpy_helpers.py, copied verbatim."""
    needed = set(used) | {c for u in used for c in _CALLS.get(u, ())}
    helpers = _helpers()
    unknown = needed - set(helpers)
    assert not unknown, f"no runtime helper for {sorted(unknown)}"
    return "".join("\n\n\n" + text for name, text in helpers.items() if name in needed)


@lru_cache(maxsize=None)
def _helpers() -> dict:
    """{name without its underscore: source} of the helpers, read as text: importing the
    file would import numpy into the compiler, which does not need it."""
    text = resources.files("nncc.runtime").joinpath("numpy_helpers.py").read_text(encoding="utf-8")
    return {f.name[1:]: ast.get_source_segment(text, f) for f in ast.parse(text).body
            if isinstance(f, ast.FunctionDef)}


def module_values(graph) -> dict:
    """The values both module templates (numpy and C) share: shapes, inits, signatures."""
    inputs = [dict(name=t.name, var=var(t.name), shape=shape_text(t.shape)) for t in graph.inputs]
    targets = [dict(name=t.name, var=var(t.name), shape=shape_text(t.shape)) for t in graph.targets]
    params = [dict(name=p.name, var=var(p.name), shape=shape_text(p.shape), init=_init(p.init)) for p in graph.params]

    def checks(ts, table):
        return ", ".join(f'"{t["name"]}": ({t["var"]}, {table}["{t["name"]}"])' for t in ts)

    input_checks = checks(inputs, "INPUT_SHAPES")
    all_checks = ", ".join(c for c in (input_checks, checks(targets, "TARGET_SHAPES")) if c)
    return dict(source=graph.source, params=params, inputs=inputs, targets=targets,
                input_args=", ".join(t["var"] for t in inputs),
                all_args=", ".join(t["var"] for t in inputs + targets),
                input_checks=input_checks, all_checks=all_checks)


def _init(init) -> str:
    kind, a, b = init
    return f'("{kind}", {float(a)!r}, {float(b)!r})'
