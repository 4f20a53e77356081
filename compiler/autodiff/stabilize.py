"""Rewrite derived formulas into forms that cannot overflow, before lowering.

Differentiation works on the plain formulas of the prelude (sigmoid is
1/(1+exp(-z))); evaluation must not.  Three rewrites, applied to forward and
backward formulas alike:

  log(1 + exp(a))                     -> Softplus(a)     (logaddexp(0, a))
  1 + exp(a), exp(a), exp(-a)         -> 1/s(-a), s(a)/s(-a), s(-a)/s(a)
                                         with s the stable Sigmoid, then cancel
  where(log a > c, log a, c)          -> ClampedLog(a, c); a condition
  log a > c                           -> a > exp(c)

so sigmoid' = s(z) s(-z) and silu' = s(z) + z s(z) s(-z): both tails stay
accurate, and nothing evaluates exp of a large argument.
"""
from __future__ import annotations

import sympy as sp

from ..ops.symbolic import ClampedLog, FirstArgmax, LogSumExp, MaxOver, Sigmoid, Softplus, Where


def stabilize(e: sp.Expr) -> sp.Expr:
    e = _clamped_logs(e)
    e = e.replace(_is_log1p_exp, lambda x: Softplus(_exp_of_one_plus(x.args[0]).args[0]))
    e = _sigmoids(e)
    return e


def _exp_of_one_plus(a):
    """exp(t) if a == 1 + exp(t), else None."""
    if isinstance(a, sp.Add) and len(a.args) == 2 and sp.S.One in a.args:
        other = a.args[0] if a.args[1] == 1 else a.args[1]
        if isinstance(other, sp.exp):
            return other
    return None


def _is_log1p_exp(x):
    return isinstance(x, sp.log) and _exp_of_one_plus(x.args[0]) is not None


def _sigmoids(e):
    args = []
    for a in sorted(e.atoms(sp.Add), key=sp.default_sort_key):
        ex = _exp_of_one_plus(a)
        if ex is not None and ex.args[0] not in args:
            args.append(ex.args[0])
    if not args:
        return e
    for t in args:
        pos, neg = Sigmoid(t), Sigmoid(-t)
        e = e.xreplace({1 + sp.exp(t): 1 / neg})
        e = e.replace(lambda x: isinstance(x, sp.exp) and x.args[0] == t, lambda x: pos / neg)
        e = e.replace(lambda x: isinstance(x, sp.exp) and x.args[0] == -t, lambda x: neg / pos)
    return _cancel_outside_reductions(e)


def _cancel_outside_reductions(e):
    """cancel() each largest piece that holds sigmoids but no reduction or branch."""
    if not e.has(Sigmoid):
        return e
    if not e.has(sp.Sum, LogSumExp, MaxOver, Where):
        # what cancel must not take apart stays whole: a constant such as log(1 + 1e-24)
        # (log(10**24 + 1) - 24*log(10), two terms of 55 whose difference is lost), and an
        # exp of a sum (exp(a + h - lse) as exp(a)*exp(h)*exp(-lse): inf * 0 for large h)
        named = {c: sp.Dummy("c", real=True) for c in sorted(_opaque(e), key=sp.default_sort_key)}
        return sp.factor_terms(sp.cancel(e.xreplace(named))).xreplace({d: c for c, d in named.items()})
    if e.is_Atom or isinstance(e, sp.Indexed):
        return e
    return e.func(*[_cancel_outside_reductions(a) for a in e.args])


def _opaque(e) -> set:
    """The largest subexpressions of e that cancel must keep whole: numbers but not
    fractions (log(3/2), sqrt(5)), exps (the sigmoids' own are gone by now; one of a
    sigmoid stays as it is), and sums and products without a sigmoid, which cancel would
    multiply out ((1 - y^2)(y - t) as y - t - y^3 + y^2 t loses everything where y = 1)."""
    if e.is_Rational:
        return set()
    if e.is_number or isinstance(e, (sp.exp, FirstArgmax)):  # a first-argmax: an indicator, whole
        return {e}
    if not e.has(Sigmoid) and not e.is_Atom and not isinstance(e, sp.Indexed):
        return {e}
    out = set()
    for a in e.args:
        out |= _opaque(a)
    return out


def _clamped_logs(e):
    def is_clamp(p):
        if not isinstance(p, Where):
            return False
        c, v, floor = p.args
        return (isinstance(v, sp.log) and floor.is_number
                and isinstance(c, (sp.StrictGreaterThan, sp.GreaterThan)) and c.lhs == v and c.rhs == floor)

    e = e.replace(is_clamp, lambda p: ClampedLog(p.args[1].args[0], p.args[2]))

    def is_log_cond(r):
        return (isinstance(r, (sp.StrictGreaterThan, sp.GreaterThan)) and isinstance(r.lhs, sp.log)
                and r.rhs.is_number)

    return e.replace(is_log_cond, lambda r: r.func(r.lhs.args[0], sp.exp(r.rhs)))
