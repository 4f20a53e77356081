"""The few sympy objects nncc adds to sympy's own: reductions and stable forms.

`LogSumExp` and `MaxOver` are reductions over bound indices, like `sum`.
Their derivatives are the definitions of the primitives themselves
(d logsumexp = softmax weights, d max = indicator of the first maximum), the
same role sympy's exp and log play for scalars.  `Sigmoid`, `Softplus` and
`ClampedLog` are evaluation forms only: the stabilize pass introduces them
after differentiation so the generated code never overflows.
"""
from __future__ import annotations

from functools import lru_cache

import sympy as sp
from sympy.concrete.expr_with_limits import ExprWithLimits


@lru_cache(maxsize=None)
def index_symbol(name: str) -> sp.Symbol:
    return sp.Symbol(name, integer=True)


@lru_cache(maxsize=None)
def real_base(name: str) -> sp.IndexedBase:
    return sp.IndexedBase(name, real=True)


def _rebind(red):
    """The body and limits of a reduction with fresh bound indices, so the sum its
    derivative introduces cannot capture the reduction's own bound names."""
    fresh = {lim[0]: sp.Dummy(lim[0].name, integer=True) for lim in red.limits}
    limits = [(fresh[lim[0]], *lim[1:]) for lim in red.limits]
    return red.function.xreplace(fresh), limits


class LogSumExp(ExprWithLimits):
    """log sum_K exp(f): a reduction evaluated as m + log(sum exp(f - m))."""

    __slots__ = ()

    def _eval_derivative(self, s):
        f, limits = _rebind(self)
        # the weight exp(f - lse) is a softmax, at most 1; sympy's exp pulls a c*log(x) term
        # out of its argument as x**c, which overflows for large c (softplus(a) / 1e-3), so
        # a softplus enters it as one opaque function
        weight = sp.exp(softplus_form(f) - self)
        return sp.Sum(weight * f.diff(s), *limits)

    def _eval_is_real(self):
        return True

    def _latex(self, printer):
        idx = ",".join(printer._print(lim[0]) for lim in self.limits)
        return r"\log \sum_{%s} e^{%s}" % (idx, printer._print(self.function))


class FirstArgmax(ExprWithLimits):
    """1 where the bound indices pick the first maximum of f (row-major), else 0.

    Its indices are open: FirstArgmax(f, j) is compared with the j of the sum around it,
    so they count as free symbols (sympy would otherwise move it out of that sum)."""

    __slots__ = ()

    @property
    def free_symbols(self):
        return super().free_symbols | {lim[0] for lim in self.limits}

    def _eval_derivative(self, s):
        return sp.Integer(0)

    def _eval_is_real(self):
        return True


class MaxOver(ExprWithLimits):
    """max over the bound indices of f; its gradient goes to the first maximum."""

    __slots__ = ()

    def _eval_derivative(self, s):
        f, limits = _rebind(self)
        return sp.Sum(FirstArgmax(self.function, *self.limits).xreplace(
            {a[0]: b[0] for a, b in zip(self.limits, limits)}) * f.diff(s), *limits)

    def _eval_is_real(self):
        return True


class _RealFunction(sp.Function):
    """A real function of a real argument whose value at a number sympy can compute
    (so that a constant such as sigmoid(1e-30) is folded into one literal)."""

    def _eval_is_real(self):
        return all(a.is_real for a in self.args) or None

    def _eval_evalf(self, prec):
        if all(a.is_number for a in self.args):
            return self.plain()._eval_evalf(prec)
        return None


class Sigmoid(_RealFunction):
    """1 / (1 + exp(-x)), evaluated without overflow."""

    def plain(self):
        return 1 / (1 + sp.exp(-self.args[0]))

    def _latex(self, printer, exp=None):
        tex = r"\sigma\left(%s\right)" % printer._print(self.args[0])
        return tex if exp is None else r"%s^{%s}" % (tex, exp)


class Softplus(_RealFunction):
    """log(1 + exp(x)), evaluated as logaddexp(0, x)."""

    def plain(self):
        return sp.log(1 + sp.exp(self.args[0]))

    def _latex(self, printer, exp=None):
        tex = r"\log\left(1 + e^{%s}\right)" % printer._print(self.args[0])
        return tex if exp is None else r"\left(%s\right)^{%s}" % (tex, exp)


def exp_of_one_plus(a):
    """exp(t) if a == 1 + exp(t), else None."""
    if isinstance(a, sp.Add) and len(a.args) == 2 and sp.S.One in a.args:
        other = a.args[0] if a.args[1] == 1 else a.args[1]
        if isinstance(other, sp.exp):
            return other
    return None


def softplus_form(e):
    """e with each log(1 + exp(t)) written Softplus(t)."""
    return e.replace(lambda x: isinstance(x, sp.log) and exp_of_one_plus(x.args[0]) is not None,
                     lambda x: Softplus(exp_of_one_plus(x.args[0]).args[0]))


class ClampedLog(_RealFunction):
    """max(log(x), floor), with log(0) = -inf clamped silently (as PyTorch's BCE)."""

    def _eval_is_real(self):
        return None  # log of a negative number is not

    def plain(self):
        return sp.Max(sp.log(self.args[0]), self.args[1])

    def _latex(self, printer, exp=None):
        return r"\max\left(\log %s, %s\right)" % (printer._print(self.args[0]), printer._print(self.args[1]))


class Where(sp.Function):
    """where(c, a, b): a where c holds, else b.

    Its own class rather than sympy's Piecewise, which sympy folds out of sums
    (moving bound indices out of scope) and differentiates into Heaviside
    (1/2 at a kink).  The derivative selects the branches' derivatives.
    """

    nargs = 3

    @classmethod
    def eval(cls, c, a, b):
        if c == sp.true:
            return a
        if c == sp.false:
            return b
        if a == b:
            return a
        return None

    def _eval_derivative(self, s):
        c, a, b = self.args
        return Where(c, a.diff(s), b.diff(s))

    def _eval_is_real(self):
        return self.args[1].is_real and self.args[2].is_real

    def _latex(self, printer, exp=None):
        c, a, b = (printer._print(x) for x in self.args)
        tex = r"\begin{cases} %s & \text{if } %s \\ %s & \text{otherwise} \end{cases}" % (a, c, b)
        return tex if exp is None else r"\left(%s\right)^{%s}" % (tex, exp)


def factored_sum(e: sp.Add) -> sp.Expr:
    """e with the terms that share a numeric coefficient other than ±1 written as one
    product, unevaluated: c - c*tanh(z)**2 + h prints as c*(1 - tanh(z)**2) + h.

    sympy multiplies a number into a sum (2-argument Mul), so a derivative such as
    1e14*(1 - tanh(z)**2) reaches the printer as 1e14 - 1e14*tanh(z)**2, and the float
    sum of its terms with small ones around loses the small ones to the spacing of
    1e14.  Only for printing: sympy would distribute the product again on any rebuild."""
    groups: dict = {}
    for t in e.args:
        c, rest = t.as_coeff_Mul()
        # a Float too (an option's value): its 1.0 is not sympy's 1, so compare as floats
        key = ("c", abs(c)) if c.is_Number and abs(float(c)) != 1.0 else ("t", t)
        groups.setdefault(key, []).append((c, rest))
    _split_folded_constant(groups)
    if all(len(parts) == 1 for parts in groups.values()):
        return e
    terms = []
    for key, parts in groups.items():
        if len(parts) == 1:
            terms.append(parts[0][0] * parts[0][1])
            continue
        # the factor is the shared magnitude, positive unless every term is negative: inside,
        # each term keeps only its sign (no division, which would leave a Float 1.0 behind)
        sign = 1 if any(c > 0 for c, _ in parts) else -1
        inner = sp.Add(*[rest if (c > 0) == (sign > 0) else -rest for c, rest in parts])
        terms.append(sp.Mul(sign * key[1], inner, evaluate=False))
    return sp.Add(*terms, evaluate=False)


def _split_folded_constant(groups: dict) -> None:
    """The number term of a sum, when it is a group's coefficient plus a much smaller rest,
    taken apart again: 1 + 2e30*(1 - tanh(z)**2) reaches the printer as
    (2e30 + 1) - 2e30*tanh(z)**2, the 1 folded into the 2e30 where no float keeps it."""
    numbers = [key for key, parts in groups.items() if len(parts) == 1 and parts[0][1] == 1]
    if len(numbers) != 1:
        return
    k = groups[numbers[0]][0][0]
    for key, parts in groups.items():
        if key[0] != "c" or key == numbers[0] or all(rest == 1 for _, rest in parts):
            continue
        c = key[1]
        for sign in (1, -1):
            rest = k - sign * c
            if rest != 0 and abs(float(rest)) <= abs(float(c)) * 2.0 ** -20:
                del groups[numbers[0]]
                parts.append((sign * c, sp.S.One))
                groups[("t", rest)] = [(rest, sp.S.One)]
                return


def read_name(x) -> str:
    """The name of an array read or a symbol."""
    return x.base.label.name if isinstance(x, sp.Indexed) else x.name


def index_symbols(e, ranges) -> set:
    """The indices (keys of ranges) e varies along; a first-argmax's bound indices are
    axes of its value too."""
    out = {s for s in e.free_symbols if s in ranges}
    for a in e.atoms(FirstArgmax):
        out |= {lim[0] for lim in a.limits}
    return out


def join_signed(texts) -> str:
    """Printed terms as one sum, a term printed with a leading minus subtracted: a - b + c."""
    return "".join(t if k == 0 else f" - {t[1:]}" if t.startswith("-") else f" + {t}" for k, t in enumerate(texts))


def sum_terms(e: sp.Add, reads, late_max: set, late_log: set):
    """How to print the sum e: e with the terms that share a coefficient as one product
    (factored_sum), a sympy expression to print as usual; or, where e reads (`reads(term)`,
    a set of names) a logsumexp's max or log-sum, its terms in the order to print them,
    those two last, so that x - max - logsum does not round x to the spacing of the max."""
    grouped = factored_sum(e)
    if not grouped.is_Add or not reads(e) & (late_max | late_log):
        return grouped
    terms = e.as_ordered_terms() if grouped is e else list(grouped.args)
    return sorted(terms, key=lambda t: (bool(reads(t) & late_log), bool(reads(t) & late_max)))


class IsClass(sp.Function):
    """is_class(c, i): 1 where the class index c equals i, else 0 -- how a formula reads a
    target of class indices (`target y: class[10]`) as the one-hot row it stands for,
    with no one-hot array made.  A target has no gradient."""

    nargs = 2
    is_real = True

    def fdiff(self, argindex=1):
        return sp.Integer(0)

    def _latex(self, printer, exp=None):
        c, i = (printer._print(x) for x in self.args)
        tex = r"[%s = %s]" % (c, i)
        return tex if exp is None else r"%s^{%s}" % (tex, exp)
