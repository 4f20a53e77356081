"""Formulas as plain text, for the comments beside generated code (every backend)."""
from __future__ import annotations

from sympy.printing.str import StrPrinter

from .autodiff.derive import B


class FormulaText(StrPrinter):
    """A compact, readable formula for code comments."""

    def _print_Indexed(self, e):
        return f"{e.base.label}[{','.join(self._print(i) for i in e.indices)}]"

    def _print_Sum(self, e):
        vs = ",".join(self._print(lim[0]) for lim in e.limits)
        return f"Σ_{vs} {self.parenthesize(e.function, 50)}"

    def _print_LogSumExp(self, e):
        vs = ",".join(self._print(lim[0]) for lim in e.limits)
        return f"logsumexp_{vs}({self._print(e.function)})"

    def _print_MaxOver(self, e):
        vs = ",".join(self._print(lim[0]) for lim in e.limits)
        return f"max_{vs}({self._print(e.function)})"

    def _print_Where(self, e):
        c, a, b = e.args
        return f"where({self._print(c)}, {self._print(a)}, {self._print(b)})"

    def _print_KroneckerDelta(self, e):
        return f"δ({self._print(e.args[0])},{self._print(e.args[1])})"

    def _print_Dummy(self, e):
        return e.name

    def _print_Symbol(self, e):
        return "B" if e == B else e.name


def formula_text(e) -> str:
    return FormulaText({"order": "none"}).doprint(e)
