"""Rewrite derived formulas into forms that cannot overflow, before lowering.

Differentiation works on the plain formulas of the prelude (sigmoid is
1/(1+exp(-z))); evaluation must not.  The rewrites, applied to forward and
backward formulas alike:

  log(1 + exp(a))                     -> Softplus(a)     (logaddexp(0, a))
  1 + exp(a), exp(a), exp(-a)         -> 1/s(-a), s(a)/s(-a), s(-a)/s(a)
                                         with s the stable Sigmoid, then cancel
  where(log a > c, log a, c)          -> ClampedLog(a, c); a condition
  log a > c                           -> a > exp(c)
  1 - s(a), log s(a)                  -> s(-a), -Softplus(-a)

so sigmoid' = s(z) s(-z) and silu' = s(z) + z s(z) s(-z): both tails stay
accurate, and nothing evaluates exp of a large argument.  The last line applies
to a sigmoid held in a buffer too (a node of its own, which the backward pass
reads), where its reader takes its log, divides by it or compares it: the
binary cross-entropy of a sigmoid is then exact where the sigmoid rounds to 1.
"""
from __future__ import annotations

import sympy as sp

from ..ops.symbolic import (ClampedLog, FirstArgmax, LogSumExp, MaxOver, Sigmoid, Softplus, Where, exp_of_one_plus,
                            softplus_form)


def stabilize(e: sp.Expr, sigmoids: dict | None = None) -> sp.Expr:
    """e in stable form; `sigmoids` maps a buffer that holds sigmoid(u) to (its indices, u)."""
    e = _clamped_logs(e)
    e = _sigmoid_reads(e, sigmoids or {})
    e = softplus_form(e)
    e = _sigmoids(e)
    return _sigmoid_forms(e)


def _sigmoid_forms(e):
    """1 - s(t) -> s(-t), log s(t) -> -softplus(-t), max(log s(t), c) likewise: near
    s = 1, 1 - s rounds to a multiple of eps (to 0 beyond t = 37), where s(-t) keeps
    every digit down to 1e-308."""
    def complement(x):
        if not isinstance(x, sp.Add):
            return None
        c, rest = x.as_coeff_Add()
        for term in sp.Add.make_args(rest):
            k, f = term.as_coeff_Mul()
            if isinstance(f, Sigmoid) and c == -k and c != 0:
                return -k * Sigmoid(-f.args[0]) + (rest - term)
        return None

    def rewrite(x):
        if isinstance(x, sp.Add):
            return complement(x) or x
        if isinstance(x, sp.log) and isinstance(x.args[0], Sigmoid):
            return -Softplus(-x.args[0].args[0])
        if isinstance(x, ClampedLog) and isinstance(x.args[0], Sigmoid):
            minus_log, floor = Softplus(-x.args[0].args[0]), x.args[1]
            return Where(minus_log > -floor, floor, -minus_log)  # NaN stays NaN, as max(log a, c)
        return x

    if not e.has(Sigmoid):
        return e
    return e.replace(lambda x: isinstance(x, (sp.Add, sp.log, ClampedLog)), rewrite)


def is_sigmoid(e) -> bool:
    """Whether e is 1/(1 + exp(-u)) as derived, before stabilize."""
    return isinstance(e, sp.Pow) and e.exp == -1 and exp_of_one_plus(e.base) is not None


def careful_reads(e, names: set) -> set:
    """The names in `names` that e reads under a log, a division or a comparison, where
    the rounding of a sigmoid's 1 - s would show."""
    out = set()
    for x in sp.preorder_traversal(e):
        if isinstance(x, (sp.log, ClampedLog, sp.Rel)) or (isinstance(x, sp.Pow) and x.exp.is_negative):
            out |= {r.base.label.name for r in x.atoms(sp.Indexed)} & names
    return out


def _sigmoid_reads(e, sigmoids: dict):
    """e with the sigmoid forms applied to reads of buffers that hold a sigmoid, where
    the statement takes the log of, divides by or compares such a read (a plain
    s (1 - s) is accurate to eps as it is, and cheaper)."""
    reads = {r: Sigmoid(sigmoids[r.base.label.name][1].xreplace(
                 dict(zip(sigmoids[r.base.label.name][0], r.indices))))
             for r in e.atoms(sp.Indexed) if r.base.label.name in sigmoids}
    if not reads:
        return e

    if not careful_reads(e, set(sigmoids)):
        return e
    e = _sigmoid_forms(e.xreplace(reads))
    return e.xreplace({s: r for r, s in reads.items()})


def _sigmoids(e):
    args = []
    for a in sorted(e.atoms(sp.Add), key=sp.default_sort_key):
        ex = exp_of_one_plus(a)
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
