"""The compiler as a library: source text in, generated module text out."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .graph import ir
from .graph.build import compile_graph
from .autodiff.derive import derive_graph
from .backends.numpy.lower import Plan, plan
from .backends.numpy.module import render
from .schedule.program import Program, build


@dataclass(frozen=True)
class Compiled:
    graph: ir.Graph
    program: Program

    @cached_property
    def plan(self) -> Plan:
        """The numpy rendering of the program (made when first asked for)."""
        return plan(self.program)

    def numpy_module(self) -> str:
        return render(self.plan, self.graph)


def compile_source(source: str, file: str = "<string>", optimizer: str | None = None, freeze=(),
                   input_grad: bool = False) -> Compiled:
    """Parse, check, derive and lower a .nn program (raises NNError on a mistake);
    `optimizer` (`"adam(lr=0.001)"`) replaces the program's choice for train_step, `freeze`
    names layers not to train; `input_grad` adds input_grad(): the loss's gradient with
    respect to the inputs (saliency, adversarial examples)."""
    g = compile_graph(source, file, optimizer, freeze)
    derivations = derive_graph(g, g.needs_grad() | (g.input_paths() if input_grad else set()))
    return Compiled(g, build(g, derivations, input_grad))


def load_module(source: str, file: str = "<string>", name: str | None = None, optimizer: str | None = None,
                freeze=(), input_grad: bool = False):
    """Compile and import the generated numpy module (handy in tests and notebooks)."""
    import types
    text = compile_source(source, file, optimizer, freeze, input_grad).numpy_module()
    mod = types.ModuleType(name or "nncc_generated")
    exec(compile(text, f"<nncc {file}>", "exec"), mod.__dict__)
    return mod
