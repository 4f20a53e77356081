"""The scalar functions of nncc, each in one place: how a formula calls it, and how every
backend writes it.

A printer looks a function up here by its sympy class (as sympy's printers look up
`known_functions`), so adding a function is one entry (and a prelude line if users
should see a layer made of it).  The derivative needs nothing: sympy differentiates the
class.  Stable forms (Sigmoid, Softplus, ClampedLog) are entries too; formulas never call
them, the stabilize pass writes them.

Renderings are format strings over the printed arguments ({0}, {1}); `helper` and
`c_helper` name the runtime helper the numpy or the C rendering calls
(backends/numpy/runtime.py, backends/c/runtime.c), copied into a program's output only
when the program uses it.  C functions come from <tgmath.h>, so they take the precision
of `real`.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Callable

import sympy as sp

from .symbolic import ClampedLog, Sigmoid, Softplus

FLOAT_MAX = sys.float_info.max


@dataclass(frozen=True)
class Primitive:
    name: str  # as a formula writes it
    function: type  # the sympy class of its calls
    numpy: str
    c: str
    latex: str | None = None  # None: sympy's own LaTeX for the class
    helper: str | None = None  # a runtime helper of the numpy module
    c_helper: str | None = None  # a runtime helper of the C (backends/c/runtime.c)
    callable: bool = True  # False: a form only the compiler writes
    numpy_quiet: frozenset = frozenset()  # the floating-point errors its numpy code makes on purpose
    # a constant argument outside the domain: the message, or None
    domain: Callable[[float], str | None] | None = None


def _exp_domain(x: float) -> str | None:
    if x > math.log(FLOAT_MAX):
        return f"exp({x:g}) is too large for a float (the largest is about 1.8e308)"
    return None


def _log_domain(x: float) -> str | None:
    if x <= 0:
        return f"the logarithm of {'zero' if x == 0 else f'a negative number ({x:g})'} is not a real number"
    return None


def _sqrt_domain(x: float) -> str | None:
    if x < 0:
        return f"the square root of a negative number ({x:g}) is not a real number"
    return None


TABLE = (
    Primitive("exp", sp.exp, "np.exp({0})", "exp({0})", domain=_exp_domain),
    Primitive("log", sp.log, "np.log({0})", "log({0})", domain=_log_domain),
    Primitive("tanh", sp.tanh, "np.tanh({0})", "tanh({0})"),
    Primitive("abs", sp.Abs, "np.abs({0})", "fabs({0})"),
    Primitive("erf", sp.erf, "_erf({0})", "erf({0})", helper="erf"),
    # the derivative of abs
    Primitive("sign", sp.sign, "np.sign({0})", "((real)(({0}) > 0) - (real)(({0}) < 0))", callable=False),
    Primitive("sigmoid", Sigmoid, "_sigmoid({0})", "nncc_sigmoid({0})", latex=r"\sigma\left({0}\right)",
              helper="sigmoid", c_helper="sigmoid", callable=False,
              numpy_quiet=frozenset({"over"})),  # exp(-z) is inf below z = -88.7 (float32)
    Primitive("softplus", Softplus, "np.logaddexp(0, {0})", "nncc_softplus({0})",
              latex=r"\operatorname{{softplus}}\left({0}\right)", c_helper="softplus", callable=False),
    Primitive("clamped_log", ClampedLog, "_clamped_log({0}, {1})", "nncc_clamped_log({0}, {1})",
              latex=r"\max\left(\log {0}, {1}\right)", helper="clamped_log", c_helper="clamped_log",
              callable=False),
)

BY_CLASS = {p.function: p for p in TABLE}


# what a formula may call: the table's callable entries, and sqrt, which sympy keeps as
# the power x^(1/2) (printed by each printer's power rule)
CALLABLE: dict[str, Callable] = {p.name: p.function for p in TABLE if p.callable}
CALLABLE["sqrt"] = sp.sqrt
DOMAINS: dict[str, Callable] = {p.name: p.domain for p in TABLE if p.callable and p.domain}
DOMAINS["sqrt"] = _sqrt_domain


def lookup(e) -> Primitive | None:
    """The entry for a call, or None (an operator, a reduction, a number)."""
    return BY_CLASS.get(type(e))
