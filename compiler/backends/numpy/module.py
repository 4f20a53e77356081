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

_FUNCTIONS = ("forward", "loss", "loss_and_grad", "sgd_step", "train_step")


def render(plan: Plan, graph) -> str:
    values = module_values(graph)
    table, workspace = [], {}
    for fn in _FUNCTIONS + (("input_grad",) if "input_grad" in plan.bodies else ()):
        _, kept, constants = plan.bodies[fn]
        parts = plan.bodies[fn][0]
        workspace[fn] = dict(take="", done="", quiet=_quiet([parts] if fn in ("forward", "loss") else parts))
        if kept or constants:
            names = [buffer_name(k) for k in range(len(kept))] + [constant_name(k) for k in range(len(constants))]
            key = f"{len(table)}, batch, dtype"
            workspace[fn]["take"] = f"    _w = _KEPT.pop(({key}), None) or _workspace({key})\n" \
                                    f"    {', '.join(names)}{',' if len(names) == 1 else ''} = _w\n"
            workspace[fn]["done"] = f"    _KEPT[{key}] = _w\n"
            table.append(([(shape_text(shape), boolean) for shape, boolean in kept], [_constant_text(c) for c in constants]))
    return environment().get_template("numpy_module.py.j2").render(
        name=plan.name, version=__version__,
        forward=list(plan.bodies["forward"][0]), output=plan.output, output_name=plan.output,
        loss_only=list(plan.bodies["loss"][0]), grad_lines=[list(x) for x in plan.bodies["loss_and_grad"][0]],
        step_lines=[list(x) for x in plan.bodies["sgd_step"][0]], buffer_table=table, workspace=workspace,
        loss_value=plan.loss_value, loss_var=None, grads=[dict(name=n, var=v) for n, v in plan.grads],
        updates=[dict(param=p, grad=g) for p, g in plan.updates], loss_seed=plan.loss_seed,
        step_seed=plan.step_seed, train_lines=[list(x) for x in plan.bodies["train_step"][0]],
        input_grad_lines=[list(x) for x in plan.bodies["input_grad"][0]] if "input_grad" in plan.bodies else None,
        input_grads=[dict(name=n, var=v) for n, v in plan.input_grads],
        states=[dict(var=v, param=p, state=st, shape=shape_text(graph.param(p).shape)) for _, v, p, st in plan.states],
        helper_source=helper_source(plan.helpers), reduce=graph.reduce, flat_params=False, **values)


def _constant_text(c) -> str:
    """A workspace number: a value (a 0-d array), or (value, shape) (an array it fills)."""
    return f"({c[0]!r}, {shape_text(c[1])})" if isinstance(c, tuple) else repr(c)


def _quiet(parts) -> str:
    """The errstate arguments of a function whose body is `parts`: every floating-point error
    one of its lines produces on purpose (one errstate per call, not per line: entering one
    costs about a microsecond, more than a small layer's step)."""
    kinds = sorted({kind for part in parts for line in part for kind in line.quiet})
    return ", ".join(f'{kind}="ignore"' for kind in kinds)


def helper_source(used) -> str:
    """The source of the runtime helpers `used` and of those they call, in the order of
    backends/numpy/runtime.py, copied verbatim."""
    helpers, calls = _helpers()
    unknown = set(used) - set(helpers)
    assert not unknown, f"no runtime helper for {sorted(unknown)}"
    needed, todo = set(), list(used)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(calls[name])
    return "".join("\n\n\n" + text for name, text in helpers.items() if name in needed)


@lru_cache(maxsize=None)
def _helpers() -> tuple:
    """{name without its underscore: source} of the helpers, and {name: the helpers it
    reads}, read as text: importing the file would import numpy into the compiler, which
    does not need it."""
    text = resources.files("nncc.backends.numpy").joinpath("runtime.py").read_text(encoding="utf-8")
    helpers = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef):
            helpers[node.name[1:]] = ast.get_source_segment(text, node)
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):  # a helper's cache
            helpers[node.targets[0].id[1:]] = ast.get_source_segment(text, node)
    calls = {name: {n.id[1:] for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)
                    and n.id.startswith("_") and n.id[1:] in helpers and n.id[1:] != name}
             for name, source in helpers.items()}
    return helpers, calls
