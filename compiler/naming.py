"""Every name the generated code uses is decided here.

    tensor t            -> t            (a trailing _ if it clashes with a reserved name)
    parameter "a.b"     -> a_b          read from params["a.b"]
    gradient of X       -> d_X          dL/dX, same shape as X
    temporaries         -> t0, t1, ...  numbered in emission order
    batch size          -> batch
    document anchors    -> fwd-<node>, bwd-<node>-<input or parameter>   (derivations)
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


def forward_anchor(label: str) -> str:
    """The id of a node's forward formula in the derivation document."""
    return f"fwd-{label}"


def backward_anchor(label: str, wrt: str) -> str:
    """The id of the backward formula of node `label` for the tensor or parameter `wrt`."""
    if wrt.startswith(label + "."):
        wrt = wrt[len(label) + 1:]
    return f"bwd-{label}-{wrt.replace('.', '-')}"


def temp(k: int) -> str:
    return f"t{k}"
