"""Numbers in generated code: one rule for every backend.

A constant of a formula is an exact sympy number (0.7978845608028654 is parsed as the
fraction 3989422804014327/5000000000000000).  Generated code holds the double nearest
to it, printed as Python prints it (shortest round-trip), so that numpy and C compute
with the same value; C casts it to its real type, as numpy casts a Python float to the
array's dtype.
"""
from __future__ import annotations

import math

import sympy as sp


class ConstantOutOfRange(NotImplementedError):
    """A constant that no float64 holds (a product of huge numbers, say)."""


def real_literal(value) -> str:
    """The shortest literal that reads back as the double nearest to `value`."""
    v = sp.sympify(value)
    if v.is_Rational:
        try:
            f = v.p / v.q  # Python's int division rounds correctly, however long the digits
        except OverflowError:
            f = math.inf
    else:
        f = float(_digits(v))
    if not math.isfinite(f):
        raise ConstantOutOfRange(f"the constant {_short(v)} is beyond the range of float64")
    return repr(f)


def _digits(v):
    """v to 25 correct digits, enough to round to the nearest double.  A plain
    float(v) evaluates at 15 digits in absolute terms: log(1 + 1e-24) came out 0."""
    try:
        return v.evalf(25, strict=True)
    except (sp.core.evalf.PrecisionExhausted, ValueError):  # an exact zero such as sin(pi)
        return v.evalf(25)


def _short(v) -> str:
    text = str(v)
    return text if len(text) <= 24 else f"{text[:10]}...({len(text)} characters)"


def exact(value):
    """A number a user wrote, as the exact sympy number formula constants are: a float
    becomes the fraction of its shortest decimal (0.1 is 1/10), never a sympy Float,
    whose fixed precision absorbs small terms in sums (d*(1e20*u - 2) lost the 2).
    A sympy expression is returned as it is."""
    if isinstance(value, sp.Basic):
        return value
    if isinstance(value, bool):
        return sp.Integer(int(value))
    if isinstance(value, float):
        return sp.Rational(repr(value))
    return sp.Integer(value)
