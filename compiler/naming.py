"""Every name the generated code uses is decided here.

    tensor t            -> t            (a trailing _ if it is in RESERVED or starts with _)
    parameter "a.b"     -> a_b          read from params["a.b"]
    gradient of X       -> d_X          dL/dX, same shape as X
    temporaries         -> t0, t1, ...  numbered in emission order, skipping taken names
    batch size          -> batch
    C                   -> v_<plain>, dv_<plain>, tmp<k>; header macros <NET>_<PLAIN>_OFFSET/_SIZE
    document anchors    -> fwd-<node>, bwd-<node>-<input or parameter>   (derivations)

RESERVED is the one table of names a user's tensor or parameter may not take as they
are: what the generated modules (numpy and cffi) define at module level, the template
functions' own arguments and locals, and the builtins the generated code calls.  The
builder (build._check_generated_names) checks that no two user names end up as one
generated name, so the trailing `_` can never make `np` and `np_` one variable.
"""
from __future__ import annotations

import keyword

# module level: templates/numpy_module.py.j2, module_tables.py.j2, module_checks.py.j2
_MODULE = {"np", "PARAM_SHAPES", "INPUT_SHAPES", "TARGET_SHAPES", "PARAM_INITS", "init_params", "forward",
           "loss", "loss_and_grad", "sgd_step",
           "init_state", "train_step", "OPTIMIZER", "STATE_NAMES", "TRAINED", "TARGET_CLASSES", "input_grad", "save_params", "load_params",
           "load_state_dict", "to_state_dict"}
# module level in templates/c_module.py.j2 as well (its _-prefixed names are covered below)
_C_MODULE = {"hashlib", "importlib", "os", "re", "shutil", "stat", "sys", "tempfile", "threading", "weakref", "cffi"}
# the template functions' arguments and locals the generated lines could overwrite or read
_LOCALS = {"params", "grads", "batch", "lr", "value", "dtype", "name", "shape", "seed", "rng", "out", "state",
           "step", "max_norm"}
# builtins the generated functions call (a user's `float` would shadow the one they need)
_BUILTINS = {"float", "int", "sum", "max", "min", "abs", "len", "range", "isinstance"}
RESERVED = frozenset(_MODULE | _C_MODULE | _LOCALS | _BUILTINS)
# upper-case header macro names other than the per-array and per-parameter ones:
# <NET>_OUTPUT_SIZE, <NET>_WORKSPACE_SIZE(batch) (and _PARAM_COUNT, _PARAM_BYTES, ...)
C_MACRO_WORDS = frozenset({"OUTPUT", "WORKSPACE"})


def plain(name: str) -> str:
    """A tensor or parameter name with its dot made an underscore: dense_1.weight -> dense_1_weight."""
    return name.replace(".", "_")


def var(name: str) -> str:
    """The Python variable for a tensor or parameter name."""
    v = plain(name)
    if keyword.iskeyword(v) or v in RESERVED or v.startswith("_"):
        v = v + "_"
    return v


def grad_name(name: str) -> str:
    return "d_" + plain(name)


def state_name(param: str, state: str) -> str:
    """The array of optimizer state `state` (exp_avg, say) for a parameter: dense_1.weight's is
    dense_1_weight_exp_avg, a name checked against the user's like every other."""
    return f"{plain(param)}_{state}"


def c_macro(name: str) -> str:
    """The part of a C header macro that names an array or parameter (XOR_<this>_SIZE)."""
    return plain(name).upper()


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
