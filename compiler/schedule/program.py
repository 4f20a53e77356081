"""Derivations -> the Program: the one lowered form that every backend renders.

    Program   := forward, loss, backward (Statements), seed, zero_grads, buffers
    Statement := target[indices] (=|+=) expr   over ranges
    Buffer    := name, shape, dtype, role, first write, last read

Everything a backend would otherwise decide for itself is decided here, once:

  the seed      d loss / d loss per sample: 1/B for a batch mean, 1 for a sum, read by
                the backward statements as the scalar SEED (-lr times it in an SGD step);
  the order     forward in source order, gradients in reverse, a gradient read by
                several nodes summed (accumulate);
  scatters      affine output subscripts that overlap or leave gaps, as a sum of
                Kronecker deltas (derive.as_scatter);
  stability     the rewrites of stabilize (softplus, stable sigmoid, clamped log),
                also where a statement reads a buffer that holds a sigmoid (log s,
                1 - s from its argument: Program.sigmoids);
  fusion        a value read once, elementwise, at its reader's own positions and
                outside any reduction, is substituted into its reader (as a sympy
                expression, so every backend evaluates the same sum in the same order).

Expressions stay in index notation -- reductions (Sum, LogSumExp, MaxOver, FirstArgmax),
guards (Where) and scatters (KroneckerDelta) explicit -- since numpy renders whole-array
contractions and C renders loop nests.  Buffers carry each value's lifetime within a
function body, for a memory plan.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

import sympy as sp

from ..graph import ir
from ..comments import formula_text
from ..autodiff.derive import B, as_scatter
from ..errors import generating
from ..naming import backward_anchor, forward_anchor, grad_name, state_name
from ..ops.optimizers import G, P, state_symbol
from ..autodiff.stabilize import careful_reads, is_sigmoid, stabilize
from ..ops.symbolic import FirstArgmax, IsClass, LogSumExp, MaxOver, Sigmoid, index_symbol, real_base

REDUCTIONS = (sp.Sum, MaxOver, LogSumExp, FirstArgmax)

# The backward pass reads the seed as this scalar, which the generated function binds:
# Program.seed in loss_and_grad, -lr times it in sgd_step, so that the gradients come out
# as the update itself and are added into the parameters in place
SEED = sp.Symbol("seed", real=True)
# the optimizer reads each gradient times this scalar: 1, or less where the step clips the
# gradients to a global norm (train_step's max_norm), so that clipping costs no pass of its own
CLIP = sp.Symbol("clip", positive=True)

# a fused expression deeper than this is computed in steps: Python's parser refuses a
# line nested more than 200 brackets deep, and sympy recurses once per level
MAX_FUSED_DEPTH = 24


@dataclass(frozen=True)
class Note:
    """The derivation step a statement computes, for comments and explain's links."""
    text: str  # "y[b,i] = ..." as plain text
    anchor: str
    label: str = ""  # the node's label, on a forward step
    node: str = ""  # the label of the node whose step it is


@dataclass(frozen=True)
class Statement:
    target: str  # a tensor, or grad_name of a tensor or parameter
    indices: tuple  # the subscripts written
    expr: sp.Expr
    ranges: dict  # index symbol -> extent (int, or B)
    node: ir.Node  # for located errors
    variables: tuple = None  # the index symbols, when a subscript is affine in them (flatten)
    accumulate: bool = False  # target += expr
    notes: tuple = ()  # Note: the steps fused into this one first, then its own
    derived: sp.Expr = None  # expr as composed from the derived steps, before stabilize

    @property
    def anchors(self) -> tuple:
        return tuple(n.anchor for n in self.notes)

    @property
    def fused(self) -> tuple:
        """The labels of the steps computed inside this one (for messages)."""
        return tuple(dict.fromkeys(n.node for n in self.notes[:-1] if n.node != self.node.label))


@dataclass(frozen=True)
class Buffer:
    name: str
    shape: tuple  # extents; B for the batch axis
    role: str  # "input" | "target" | "param" | "value" | "grad"
    first: int  # position of the first statement writing it (-1: an argument)
    last: int  # position of the last statement reading it (-1: never read)
    dtype: str = "real"  # every array holds the module's one real type (float32 or float64)


@dataclass(frozen=True)
class Program:
    graph: ir.Graph
    derivations: tuple
    forward: tuple  # Statement: computes the output
    loss: tuple  # Statement: computes the loss and what the backward pass reads
    backward: tuple  # Statement
    seed: sp.Expr  # d loss / d (per-sample loss): the value of SEED in loss_and_grad
    zero_grads: tuple  # parameters the loss does not depend on: gradient 0
    sigmoids: dict = None  # buffer -> (indices, u): the loss's buffers written as sigmoid(u)
    update: tuple = ()  # Statement: the optimizer's, once every gradient is known (train_step)
    states: dict = None  # optimizer state array -> (parameter, state name)
    input_backward: tuple = None  # Statement: the gradients of the inputs, when asked for

    @property
    def shapes(self) -> dict:
        """Every array's full shape (B first for a per-sample value): tensors,
        parameters and the gradients of both."""
        g = self.graph
        shapes = {t.name: (B,) + t.shape for t in g.tensors.values()}
        shapes.update({p.name: p.shape for p in g.params})
        shapes.update({grad_name(k): v for k, v in list(shapes.items())})
        shapes.update({a: g.param(p).shape for a, (p, _) in (self.states or {}).items()})
        shapes.update({t.name: (B,) for t in g.targets if t.classes})  # one index per sample
        return shapes

    def buffers(self, statements: tuple, keep=()) -> dict:
        """{name: Buffer} over one function body: what each statement writes and reads,
        with the positions of its first write and last read (`keep`: read at the end)."""
        g, shapes = self.graph, self.shapes
        roles = {t.name: t.role for t in g.tensors.values()}
        roles.update({p.name: "param" for p in g.params})
        roles.update({a: "state" for a in self.states or {}})
        out = {}
        for k, st in enumerate(statements):
            for r in sorted({r.base.label.name for r in st.expr.atoms(sp.Indexed)}):
                if r not in out:
                    out[r] = Buffer(r, shapes[r], roles.get(r, "grad"), -1, k)
                else:
                    out[r] = Buffer(r, out[r].shape, out[r].role, out[r].first, k)
            if st.target not in out:
                out[st.target] = Buffer(st.target, shapes[st.target], roles.get(st.target, "grad"), k, -1)
            elif st.accumulate:
                out[st.target] = Buffer(st.target, out[st.target].shape, out[st.target].role, out[st.target].first, k)
        end = len(statements)
        for name in keep:
            if name in out:
                out[name] = Buffer(name, out[name].shape, out[name].role, out[name].first, end)
        return out


def build(g: ir.Graph, derivations: tuple, input_grad: bool = False) -> Program:
    shapes = {t.name: (B,) + t.shape for t in g.tensors.values()}
    shapes.update({p.name: p.shape for p in g.params})
    read_back = {r.base.label.name for d in derivations for gr in d.grads for r in gr.backward.atoms(sp.Indexed)}
    forward = _lowered(_forward_steps(derivations, g.ancestors(g.output)), {g.output}, shapes, {})
    sigmoids = {}  # the loss's buffers that hold a sigmoid, which the backward reads too
    loss = _lowered(_forward_steps(derivations, g.ancestors(g.loss)), {g.output, g.loss} | read_back, shapes,
                    sigmoids)
    seed = sp.Integer(1) / B if g.reduce == "mean" else sp.Integer(1)
    every = _backward_steps(g, derivations, SEED)
    param_grads = {grad_name(p.name) for p in g.params}
    steps = _needed(every, param_grads)
    backward = _lowered(steps, param_grads, shapes, sigmoids)
    written = {st.target for st in steps}
    input_grads = {grad_name(t.name) for t in g.inputs}
    input_backward = _lowered(_needed(every, input_grads), input_grads, shapes, sigmoids) if input_grad else None
    zero = tuple(p.name for p in g.params if grad_name(p.name) not in written)
    update, states = _update_steps(g, set(zero))
    classes = {t.name for t in g.targets if t.classes}
    if classes:
        forward, loss, backward = (_class_reads(sts, classes) for sts in (forward, loss, backward))
        input_backward = input_backward and _class_reads(input_backward, classes)
    return Program(g, tuple(derivations), forward, loss, backward, seed, zero, sigmoids, update, states,
                   input_backward)


def _needed(steps: list, finals: set) -> list:
    """The steps that the gradients `finals` are computed from, in their order."""
    need, out = set(finals), []
    for st in reversed(steps):
        if st.target in need:
            out.append(st)
            need |= {r.base.label.name for r in st.expr.atoms(sp.Indexed)}
    return out[::-1]


def _class_reads(statements: tuple, classes: set) -> tuple:
    """Each read y[b, i] of a target of class indices as is_class(y[b], i): the one-hot row
    the index stands for, computed where it is read."""
    def read(e):
        return IsClass(e.base[e.indices[0]], e.indices[1])
    return tuple(dataclasses.replace(st, expr=st.expr.replace(
        lambda e: isinstance(e, sp.Indexed) and e.base.label.name in classes and len(e.indices) == 2, read))
        for st in statements)


def _update_steps(g: ir.Graph, untouched: set) -> tuple:
    """The optimizer's updates of every parameter the loss trains (not those in
    `untouched`: frozen, or not read by the loss; torch.optim skips a parameter without a
    gradient), element by element, in its order: (statements, {state array: (parameter, state)})."""
    rule = g.optimizer
    owner = {name: n for n in g.nodes for _, name in n.params}
    out, states = [], {}
    for p in g.params:
        if p.name in untouched:
            continue
        idx = tuple(index_symbol(f"n{k}") for k in range(len(p.shape)))
        arrays = {P: p.name, G: grad_name(p.name)}
        for s in rule.states:
            states[state_name(p.name, s)] = (p.name, s)
            arrays[state_symbol(s)] = state_name(p.name, s)
        reads = {sym: real_base(a)[idx] for sym, a in arrays.items()}
        reads[G] = CLIP * reads[G]
        for target, expr in rule.updates:
            name = p.name if target == "p" else state_name(p.name, target)
            element = real_base(name)[idx]
            # no anchor: the derivation document shows the network's gradients, not the optimizer
            note = Note(f"{formula_text(element)} = {formula_text(expr.xreplace(reads))}", "",
                        rule.name, node=owner[p.name].label)
            out.append(Statement(name, idx, expr.xreplace(reads), dict(zip(idx, p.shape)), owner[p.name],
                                 notes=(note,)))
    return tuple(out), states


def _forward_steps(derivations, keep) -> list:
    """The statements computing the tensors in `keep`, as derived (fused and stabilized later)."""
    out = []
    for d in derivations:
        if d.node.output in keep:
            f = d.formula
            note = Note(f"{formula_text(f.out[f.indices])} = {formula_text(f.body)}",
                        forward_anchor(d.node.label), d.node.label, d.node.label)
            out.append(Statement(d.node.output, f.indices, f.body, f.ranges, d.node, f.vars, notes=(note,)))
    return out


def _backward_steps(g, derivations, seed) -> list:
    """Every gradient, nodes in reverse order, with the loss's own gradient the seed."""
    shapes = {t.name: (B,) + t.shape for t in g.tensors.values()}
    shapes.update({p.name: p.shape for p in g.params})
    dloss = real_base(grad_name(g.loss))
    written, out = set(), []
    for d in reversed(derivations):
        for gr in d.grads:
            expr = gr.backward.replace(lambda e: isinstance(e, sp.Indexed) and e.base == dloss, lambda e: seed)
            target = grad_name(gr.wrt)
            ranges = dict(d.formula.ranges)
            ranges.update(dict(zip(gr.indices, shapes[gr.wrt])))
            op = "+=" if target in written else "="
            note = Note(f"{formula_text(real_base(target)[gr.indices])} {op} {formula_text(gr.backward)}",
                        backward_anchor(d.node.label, gr.wrt), node=d.node.label)
            out.append(Statement(target, gr.indices, expr, ranges, d.node, accumulate=target in written,
                                 notes=(note,)))
            written.add(target)
    return out


def _lowered(steps: list, kept: set, shapes: dict, sigmoids: dict) -> tuple:
    """The steps with fusable values substituted into their readers, scatters made
    explicit and expressions stabilized.  `sigmoids` gains each buffer written as
    sigmoid(u), with its indices and u, for the stable forms of later readers
    (log s = -softplus(-u), 1 - s = sigmoid(-u))."""
    fusable = _fusable(steps, kept) - _sigmoid_arguments(steps)
    by_target = {st.target: st for st in steps}
    expanded, notes, out = {}, {}, []
    for st in steps:
        body = _substitute(st.expr, expanded, by_target)
        # the steps computed inside this one, in the order they were derived
        inside = [n for r in sorted({r.base.label.name for r in st.expr.atoms(sp.Indexed)} & set(expanded),
                                    key=list(expanded).index) for n in notes[r]]
        if st.target in fusable and _depth(body) <= MAX_FUSED_DEPTH:
            expanded[st.target] = body  # computed where its one reader reads it
            notes[st.target] = (*inside, *st.notes)
            continue
        final = _final(st, _outside_is_zero(body, shapes), (*inside, *st.notes), sigmoids)
        if (isinstance(final.expr, Sigmoid) and not final.accumulate and final.variables is None
                and all(isinstance(i, sp.Symbol) for i in final.indices)
                and not final.expr.has(*REDUCTIONS, sp.KroneckerDelta)):
            sigmoids[final.target] = (final.indices, final.expr.args[0])
        out.append(final)
    return tuple(out)


def _sigmoid_arguments(steps: list) -> set:
    """The values read by a sigmoid that a later step reads under a log, a division or a
    comparison: kept in buffers, so that the stable form there (log s = -softplus(-u))
    reads u instead of computing it again (a matrix product, say)."""
    sigmoid_steps = {st.target: st for st in steps if is_sigmoid(st.expr)}
    if not sigmoid_steps:
        return set()
    careful = set().union(*(careful_reads(st.expr, set(sigmoid_steps)) for st in steps))
    return {r.base.label.name for t in careful for r in sigmoid_steps[t].expr.atoms(sp.Indexed)}


def _outside_is_zero(expr, shapes: dict):
    """expr with each read at a constant position outside its array replaced by the 0 it
    reads (the language's padding rule), for every backend alike."""
    def outside(e):
        shape = shapes.get(e.base.label.name) if isinstance(e, sp.Indexed) else None
        return shape is not None and any(
            i.is_Integer and (int(i) < 0 or (n != B and int(i) >= int(n))) for i, n in zip(e.indices, shape))
    return expr.replace(outside, lambda e: sp.Integer(0)) if expr.has(sp.Indexed) else expr


def _final(st: Statement, expr, notes, sigmoids: dict) -> Statement:
    """A statement with its scatter made explicit and its expression stabilized."""
    indices, ranges, variables, derived = st.indices, st.ranges, st.variables, expr
    with generating(st.node, st.fused):
        scatter = as_scatter(indices, expr, ranges, variables)
        if scatter is not None:  # overlapping or gapped affine writes: a scatter-add
            indices, expr, ranges = scatter
            variables = None
        if variables is not None and tuple(variables) == tuple(indices):
            variables = None
        return Statement(st.target, tuple(indices), stabilize(expr, sigmoids), dict(ranges), st.node, variables,
                         st.accumulate, notes, derived)


def _fusable(steps: list, kept: set) -> set:
    """The values to compute inside the loop of their one reader instead of into a buffer
    of their own: written once at plain subscripts (no scatter), read exactly once, at
    the reader's own positions (plain subscripts) and outside any reduction, where the
    value would be computed again for every term."""
    writes = Counter(st.target for st in steps)
    by_target = {st.target: st for st in steps}
    reads, nested, plain = Counter(), set(), {}
    for st in steps:
        for r in sp.preorder_traversal(st.expr):
            if isinstance(r, sp.Indexed):
                name = r.base.label.name
                reads[name] += 1
                # at positions inside the value's extent: a read past it is a zero (padding,
                # a concat), which the value's formula would not give
                own = by_target.get(name)
                plain[name] = plain.get(name, True) and own is not None and all(
                    isinstance(i, sp.Symbol) and isinstance(j, sp.Symbol) and i in st.ranges and
                    sp.simplify(st.ranges[i] - own.ranges[j]) == 0 for i, j in zip(r.indices, own.indices))
        for red in st.expr.atoms(*REDUCTIONS):
            nested |= {r.base.label.name for r in red.atoms(sp.Indexed)}
    return {t for t, st in by_target.items()
            if t not in kept and writes[t] == 1 and reads[t] == 1 and plain[t] and t not in nested
            and (st.variables is None or tuple(st.variables) == tuple(st.indices))
            and not st.expr.has(sp.KroneckerDelta)}


def _substitute(body, expanded: dict, fused: dict):
    """body with each read of a fused value replaced by that value's own formula."""
    taken = {x.name for x in body.atoms(sp.Symbol)}  # shared: no two reductions bind one name

    def inline(r):
        name = r.base.label.name
        value = _rename_bound(expanded[name], taken)
        return value.xreplace(dict(zip(fused[name].indices, r.indices)))
    return body.replace(lambda e: isinstance(e, sp.Indexed) and e.base.label.name in expanded, inline)


def _rename_bound(e, taken: set):
    """e with each index bound by a reduction whose name is in `taken` primed until it is
    not (and not a name of e), so that it can neither capture a reader's index nor share
    its name with another reduction's index over another extent; the names used are added
    to `taken`.  FirstArgmax binds nothing: its indices are axes of its value, its own."""
    reductions = (sp.Sum, MaxOver, LogSumExp)
    avoid = taken | {x.name for x in e.atoms(sp.Symbol)}

    def rebind(r):
        m = {}
        for lim in r.limits:
            name = lim[0].name
            if name in taken:
                while name in avoid:
                    name += "'"
                m[lim[0]] = sp.Symbol(name, integer=True)
            taken.add(name)
            avoid.add(name)
        if not m:
            return r
        return r.func(r.function.xreplace(m), *[(m.get(lim[0], lim[0]), *lim[1:]) for lim in r.limits])

    return e.replace(lambda x: isinstance(x, reductions), rebind)


def _depth(e, limit=MAX_FUSED_DEPTH + 1) -> int:
    """The height of e's tree, counted up to limit (no deeper recursion than that)."""
    if not e.args or isinstance(e, sp.Indexed):
        return 0
    if limit <= 0:
        return 1
    return 1 + max(_depth(a, limit - 1) for a in e.args)
