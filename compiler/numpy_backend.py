"""Kernel plan -> the values the numpy module template lays out."""
from __future__ import annotations

from . import __version__
from .lower import Plan
from .templating import environment


def shape_text(shape) -> str:
    return "(" + "".join(f"{n}, " for n in shape).rstrip(" ") + ")" if len(shape) != 1 else f"({shape[0]},)"


def render(plan: Plan, reduce: str) -> str:
    values = module_values(plan)
    return environment().get_template("numpy_module.py.j2").render(
        name=plan.name, version=__version__,
        forward=plan.forward, output=plan.output, output_name=plan.output,
        loss_forward=plan.loss_forward, loss_value=plan.loss_value, loss_var=None,
        backward=plan.backward, grads=[dict(name=n, var=v) for n, v in plan.grads],
        helpers=plan.helpers, reduce=reduce, flat_params=False, **values)


def module_values(plan: Plan) -> dict:
    """The values both module templates (numpy and C) share: shapes, inits, signatures."""
    inputs = [dict(name=n, var=v, shape=shape_text(s)) for n, v, s in plan.inputs]
    targets = [dict(name=n, var=v, shape=shape_text(s)) for n, v, s in plan.targets]
    params = [dict(name=n, var=v, shape=shape_text(s), init=_init(i)) for n, v, s, i in plan.params]

    def checks(ts, table):
        return ", ".join(f'"{t["name"]}": ({t["var"]}, {table}["{t["name"]}"])' for t in ts)

    input_checks = checks(inputs, "INPUT_SHAPES")
    all_checks = ", ".join(c for c in (input_checks, checks(targets, "TARGET_SHAPES")) if c)
    return dict(source=plan.source, params=params, inputs=inputs, targets=targets,
                input_args=", ".join(t["var"] for t in inputs),
                all_args=", ".join(t["var"] for t in inputs + targets),
                input_checks=input_checks, all_checks=all_checks)


def _init(init) -> str:
    kind, a, b = init
    return f'("{kind}", {float(a)!r}, {float(b)!r})'
