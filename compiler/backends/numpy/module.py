"""Kernel plan -> the values the numpy module template lays out."""
from __future__ import annotations

import ast
from functools import lru_cache
from importlib import resources

from ...version import __version__
from .buffers import constant_name, name as buffer_name
from .lower import Plan
from ..pymodule import module_values, shape_text
from ...templating import environment

# a runtime helper, and the helpers it calls
_CALLS = {"patches": ("reach",), "unpatches": ("reach",), "im2col": ("patches", "reach", "IM2COL_INDEX"),
          "max_over": ("window_slices", "tiles"), "first_argmax": ("window_slices", "tiles")}


_FUNCTIONS = ("forward", "loss", "loss_and_grad", "sgd_step", "train_step")


def render(plan: Plan, graph) -> str:
    values = module_values(graph)
    table, workspace = [], {}
    for fn in _FUNCTIONS + (("input_grad",) if "input_grad" in plan.bodies else ()):
        _, kept, constants = plan.bodies[fn]
        workspace[fn] = dict(take="", done="")
        if kept or constants:
            names = [buffer_name(k) for k in range(len(kept))] + [constant_name(k) for k in range(len(constants))]
            key = f"{len(table)}, batch, dtype"
            workspace[fn] = dict(take=f"    _w = _workspace({key})\n    {', '.join(names)}{',' if len(names) == 1 else ''} = _w\n",
                                 done=f"    _done({key}, _w)\n")
            table.append(([(shape_text(shape), boolean) for shape, boolean in kept], [_constant_text(c) for c in constants]))
    return environment().get_template("numpy_module.py.j2").render(
        name=plan.name, version=__version__,
        forward=_blocks(plan.bodies["forward"][0]), output=plan.output, output_name=plan.output,
        loss_only=_blocks(plan.bodies["loss"][0]), grad_lines=[_blocks(x) for x in plan.bodies["loss_and_grad"][0]],
        step_lines=[_blocks(x) for x in plan.bodies["sgd_step"][0]], buffer_table=table, workspace=workspace,
        loss_value=plan.loss_value, loss_var=None, grads=[dict(name=n, var=v) for n, v in plan.grads],
        updates=[dict(param=p, grad=g) for p, g in plan.updates], loss_seed=plan.loss_seed,
        step_seed=plan.step_seed, train_lines=[_blocks(x) for x in plan.bodies["train_step"][0]],
        input_grad_lines=[_blocks(x) for x in plan.bodies["input_grad"][0]] if "input_grad" in plan.bodies else None,
        input_grads=[dict(name=n, var=v) for n, v in plan.input_grads],
        states=[dict(var=v, param=p, state=st, shape=shape_text(graph.param(p).shape)) for _, v, p, st in plan.states],
        helper_source=helper_source(plan.helpers), reduce=graph.reduce, flat_params=False, **values)


def _constant_text(c) -> str:
    """A workspace number: a value (a 0-d array), or (value, shape) (an array it fills)."""
    return f"({c[0]!r}, {shape_text(c[1])})" if isinstance(c, tuple) else repr(c)


def _blocks(lines) -> list:
    """Consecutive lines quieting the same floating-point errors, as one block each: one
    `with np.errstate(...)` costs about a microsecond, more than a small layer's step."""
    blocks = []
    for line in lines:
        quiet = ", ".join(f'{kind}="ignore"' for kind in sorted(line.quiet))
        if blocks and blocks[-1]["quiet"] == quiet:
            blocks[-1]["lines"].append(line)
        else:
            blocks.append(dict(quiet=quiet, lines=[line]))
    return blocks


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
    helpers = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef):
            helpers[node.name[1:]] = ast.get_source_segment(text, node)
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):  # a helper's cache
            helpers[node.targets[0].id[1:]] = ast.get_source_segment(text, node)
    return helpers
