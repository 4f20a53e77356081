"""Located, plain-words errors for mistakes in .nn source.

Every user mistake becomes an `NNError` carrying a `Loc`; the CLI prints it as
`file:line:col: error: message`, the source line and a caret, and exits 1.
"""
from __future__ import annotations

from contextlib import contextmanager

import difflib
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    file: str
    line: int
    col: int
    text: str = ""  # the whole source line, for the caret display

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def source_lines(source: str) -> list[str]:
    """The lines of a source as the lexer counts them: only \\n (or \\r\\n) ends a line.

    str.splitlines also splits at \\f, \\v, \\x1c-\\x1e, \\x85 and \\u2028, so a message
    would show another line than the one the lexer's line number means."""
    lines = source.split("\n")
    if len(lines) > 1 and lines[-1] == "":  # the newline ending the last line starts none
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def escape(text: str) -> str:
    """text with control and line-separator characters (not tabs) written as escapes,
    so that a NUL or an escape sequence in a source never reaches a terminal raw."""
    return "".join(ch if ch == "\t" or not _invisible(ch) else _escape_char(ch) for ch in text)


def _invisible(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")


def _escape_char(ch: str) -> str:
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def show_char(ch: str) -> str:
    """A character quoted for a message: 'x', or its escape when it is invisible."""
    return f"'{escape(ch)}'"


class NNError(Exception):
    """A mistake in a .nn program, reported at a source location."""

    def __init__(self, message: str, loc: Loc | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.hint = hint

    def render(self) -> str:
        head = f"{self.loc}: error: {self.message}" if self.loc else f"error: {self.message}"
        lines = [escape(head)]
        if self.loc:
            text = self.loc.text.rstrip("\n")
            lines.append("    " + escape(text).expandtabs(4))
            # the caret under column col of the line as displayed (escapes and tabs widen it)
            before = escape(text[:self.loc.col - 1]).expandtabs(4)
            lines.append("    " + " " * len(before) + "^")
        if self.hint:
            lines.append(escape(f"hint: {self.hint}"))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def did_you_mean(name: str, candidates) -> str:
    """` ; did you mean 'x'?` when a close candidate exists, else ``."""
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


@contextmanager
def generating(node, inside=()):
    """A form the code generators cannot lower (a read through two windows, say) reported
    at the node that uses it, in plain words, rather than as an unlocated failure.
    `inside`: the labels of the steps computed within this node's (fused into it)."""
    try:
        yield
    except NNError:
        raise
    except NotImplementedError as exc:
        what = node.label + (f" (with {', '.join(inside)} computed inside it)" if inside else "")
        raise NNError(f"nncc cannot generate code for {what} yet: {exc}", node.loc,
                      "write this step another way (smaller steps, or another form of the same read)") \
            from None
