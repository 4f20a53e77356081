"""The network graph: plain frozen data that every later stage trusts.

    Graph   := name, inputs, targets, tensors, params, nodes, output, loss, reduce
    Tensor  := name, shape (per sample, ints), role (input|target|value), loc
    Param   := name ("dense_1.weight"), shape, init (kind, a, b), loc
    Node    := label ("dense_1"), op (ops.OpDef), args (tensor names), options,
               params ({local name: Param name}), output (tensor name), loc, sizes

Nodes are in topological (source) order.  `verify` checks the invariants.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Loc


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple
    role: str  # "input" | "target" | "value"
    loc: Loc
    classes: bool = False  # a target of class indices: an integer per sample, read as one-hot of `shape`


@dataclass(frozen=True)
class Param:
    name: str
    shape: tuple
    init: tuple  # ("uniform", lo, hi) | ("normal", mean, std) | ("zeros", 0, 0)
    loc: Loc


@dataclass(frozen=True)
class Node:
    label: str
    op: object  # ops.OpDef
    args: tuple  # tensor names, in the op's tensor-argument order
    options: tuple  # ((name, value), ...)
    params: tuple  # ((local name, Param name), ...)
    output: str
    loc: Loc
    sizes: tuple = ()  # ((size pattern symbol, int), ...): the sizes its arguments bind

    @property
    def option_dict(self) -> dict:
        return dict(self.options)


@dataclass(frozen=True)
class Graph:
    name: str
    source: str  # file name, for the generated docstring
    inputs: tuple  # Tensor
    targets: tuple  # Tensor
    tensors: dict = field(hash=False)  # name -> Tensor
    params: tuple = ()  # Param, in creation order
    nodes: tuple = ()  # Node, topological
    output: str = ""
    loss: str = ""  # the per-sample loss tensor (shape ())
    reduce: str = "mean"  # how `loss =` combines samples: "mean" | "sum"
    optimizer: object = None  # ops.optimizers.Rule: what train_step does with the gradients
    frozen: frozenset = frozenset()  # parameters not trained: no gradient, no update

    def producer(self, tensor: str):
        for n in self.nodes:
            if n.output == tensor:
                return n
        return None

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def ancestors(self, tensor: str) -> set:
        """The tensors `tensor` is computed from, itself included."""
        need = {tensor}
        for n in reversed(self.nodes):
            if n.output in need:
                need.update(n.args)
        return need

    def input_paths(self) -> set:
        """Inputs and the tensors on a path from an input to the loss: what the gradient
        with respect to the inputs passes through."""
        feeds_loss = self.ancestors(self.loss)
        depends = {t.name for t in self.inputs}
        for n in self.nodes:
            if any(a in depends for a in n.args):
                depends.add(n.output)
        return {t for t in depends if t in feeds_loss}

    def trained(self) -> set:
        """The parameters a training step updates: not frozen, and read by the loss."""
        return {p.name for p in self.params} & self.needs_grad()

    def needs_grad(self) -> set:
        """Tensors and params on a path from a trained (not frozen) parameter to the loss."""
        feeds_loss = self.ancestors(self.loss)
        depends = set()
        for n in self.nodes:
            trained = [p for _, p in n.params if p not in self.frozen]
            if n.output in feeds_loss and trained:
                depends.update(trained)
            if any(a in depends for a in n.args) or trained:
                depends.add(n.output)
        return {t for t in depends if t in feeds_loss or t in {p.name for p in self.params}}


def verify(g: Graph) -> None:
    """Invariants later stages rely on; a failure here is a compiler bug."""
    defined = {t.name for t in g.inputs} | {t.name for t in g.targets}
    pnames = {p.name for p in g.params}
    for n in g.nodes:
        for a in n.args:
            assert a in defined, f"{n.label} reads {a} before it is defined"
        for _, p in n.params:
            assert p in pnames, f"{n.label} uses unknown param {p}"
        assert n.output not in defined, f"{n.output} defined twice"
        defined.add(n.output)
    assert g.output in defined and g.loss in defined
    assert g.tensors[g.loss].shape == ()
    assert g.reduce in ("mean", "sum")
