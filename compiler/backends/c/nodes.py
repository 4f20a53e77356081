"""C statements as a tree: a loop or a block holds its body, so nesting is structure and
indentation is printed from it, never counted by hand."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Stmt:
    text: str  # one C statement, declaration or comment


@dataclass
class Loop:
    var: str
    start: str
    stop: str
    body: list = field(default_factory=list)
    type: str = "int"
    step: int = 1  # > 1: whole steps only, var + step <= stop


@dataclass
class Block:
    """A compound statement: its declarations stay local to it."""
    body: list = field(default_factory=list)


def render(nodes: list, depth: int = 1) -> list[str]:
    """The nodes as lines of C, indented four spaces a level from `depth`."""
    pad, out = "    " * depth, []
    for n in nodes:
        if isinstance(n, Stmt):
            out.append(pad + n.text)
        elif isinstance(n, Loop):
            if n.step == 1:
                out.append(f"{pad}for ({n.type} {n.var} = {n.start}; {n.var} < {n.stop}; {n.var}++) {{")
            else:
                out.append(f"{pad}for ({n.type} {n.var} = {n.start}; {n.var} + {n.step} <= {n.stop}; "
                           f"{n.var} += {n.step}) {{")
            out += render(n.body, depth + 1)
            out.append(pad + "}")
        else:
            out.append(pad + "{")
            out += render(n.body, depth + 1)
            out.append(pad + "}")
    return out
