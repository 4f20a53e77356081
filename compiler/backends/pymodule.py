"""The values both generated Python modules share -- the numpy one and the cffi wrapper of
the C one: shapes, inits and signatures, from the graph."""
from __future__ import annotations

from ..naming import var


def shape_text(shape) -> str:
    """A shape as a Python tuple literal: (3,), (2, 4)."""
    return "(" + "".join(f"{n}, " for n in shape).rstrip(" ") + ")" if len(shape) != 1 else f"({shape[0]},)"


def module_values(graph) -> dict:
    inputs = [dict(name=t.name, var=var(t.name), shape=shape_text(t.shape), batched=_batched(t.shape), classes=0)
              for t in graph.inputs]
    # a target of class indices is one whole number per sample: shape ()
    targets = [dict(name=t.name, var=var(t.name), shape=shape_text(() if t.classes else t.shape),
                    batched=_batched(() if t.classes else t.shape), classes=int(t.shape[0]) if t.classes else 0)
               for t in graph.targets]
    params = [dict(name=p.name, var=var(p.name), shape=shape_text(p.shape), init=_init(p.init)) for p in graph.params]

    def checks(ts, table):
        return ", ".join(f'"{t["name"]}": ({t["var"]}, {table}["{t["name"]}"])' for t in ts)

    input_checks = checks(inputs, "INPUT_SHAPES")
    all_checks = ", ".join(c for c in (input_checks, checks(targets, "TARGET_SHAPES")) if c)
    rule = graph.optimizer
    options = [(n, repr(float(v)) if not isinstance(v, bool) else repr(v)) for n, v in rule.options]
    return dict(source=graph.source, params=params, inputs=inputs, targets=targets,
                trained=[p.name for p in graph.params if p.name in graph.trained()],
                optimizer_name=rule.name, optimizer_options=options, state_names=list(rule.states),
                lr=repr(rule.lr), optimizer_text=rule.name + "(" + ", ".join(f"{n}={v}" for n, v in options if n != "lr") + ")",
                input_args=", ".join(t["var"] for t in inputs),
                all_args=", ".join(t["var"] for t in inputs + targets),
                input_checks=input_checks, all_checks=all_checks)


def _batched(shape) -> str:
    """The shape of a batch of arrays of `shape`, as a tuple expression over `batch`."""
    return "(" + ", ".join(["batch"] + [str(n) for n in shape]) + ("," if not shape else "") + ")"


def _init(init) -> str:
    kind, a, b = init
    return f'("{kind}", {float(a)!r}, {float(b)!r})'
