"""Every name the generated code uses is decided here.

    tensor t            -> t            (a trailing _ if it clashes with a reserved name)
    parameter "a.b"     -> a_b          read from params["a.b"]
    gradient of X       -> d_X          dL/dX, same shape as X
    temporaries         -> t0, t1, ...  numbered in emission order
    batch size          -> batch
"""
from __future__ import annotations

import keyword

RESERVED = {"np", "params", "grads", "batch", "lr", "value", "dtype", "name", "shape", "seed",
            "rng", "out", "float", "int", "sum", "max", "min", "abs", "len", "range"}


def var(name: str) -> str:
    """The Python variable for a tensor or parameter name."""
    v = name.replace(".", "_")
    if keyword.iskeyword(v) or v in RESERVED or v.startswith("_"):
        v = v + "_"
    return v


def grad_name(name: str) -> str:
    return "d_" + name.replace(".", "_")


def temp(k: int) -> str:
    return f"t{k}"
