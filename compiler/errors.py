"""Located, plain-words errors for mistakes in .nn source.

Every user mistake becomes an `NNError` carrying a `Loc`; the CLI prints it as
`file:line:col: error: message`, the source line and a caret, and exits 1.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    file: str
    line: int
    col: int
    text: str = ""  # the whole source line, for the caret display

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class NNError(Exception):
    """A mistake in a .nn program, reported at a source location."""

    def __init__(self, message: str, loc: Loc | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.hint = hint

    def render(self) -> str:
        head = f"{self.loc}: error: {self.message}" if self.loc else f"error: {self.message}"
        lines = [head]
        if self.loc and self.loc.text:
            lines.append("    " + self.loc.text.rstrip("\n").expandtabs(4))
            before = self.loc.text[:self.loc.col - 1].expandtabs(4)
            lines.append("    " + " " * len(before) + "^")
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def did_you_mean(name: str, candidates) -> str:
    """` ; did you mean 'x'?` when a close candidate exists, else ``."""
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
