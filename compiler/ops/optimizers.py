"""Optimizer definitions: `optimizer` blocks -> the update of one parameter element.

An optimizer is written in the .nn language like every operator (the prelude defines
sgd, adam and adamw): options, the state it keeps per parameter element, and updates
run in order once the gradient is known,

    optimizer adam(lr = 0.001, beta1 = 0.9, ...) {
        state m
        m = beta1 * m + (1 - beta1) * g
        p = p - lr * m / ...
    }

where `p` is the parameter element, `g` its gradient, `t` the step (1 on the first).
Reading a name reads its current value: a state or `p` already updated in this step
gives the new value, as a program run line by line would.  Any other name assigned is a
local, substituted into its readers.

Every option but `lr` is fixed when the network is compiled (its value from the
program's `optimizer` line, else the default), so that sympy folds what it can: with
momentum 0 the momentum buffer is a local (its new value never reads the old one) and
is kept nowhere.  `lr` is an argument of the training step, for the caller's schedule.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from ..errors import Loc, NNError, did_you_mean
from ..frontend import syntax as S
from ..literals import exact
from .definitions import _literal, _Scope, to_sympy

P = sp.Symbol("p", real=True)  # the parameter element
G = sp.Symbol("g", real=True)  # its gradient
T = sp.Symbol("t", integer=True, positive=True)  # the step, 1 on the first
LR = sp.Symbol("lr", positive=True)  # the learning rate, an argument of the step
_GIVEN = {"p": P, "g": G, "t": T}


@dataclass(frozen=True)
class OptimizerDef:
    name: str
    options: tuple  # (name, default or None, Loc)
    states: tuple  # (name, Loc)
    updates: tuple  # syntax Update, in order
    loc: Loc
    builtin: bool = False


@dataclass(frozen=True)
class Rule:
    """An optimizer as a network uses it: every option but lr a number."""
    name: str
    lr: float  # the step's default learning rate
    options: tuple  # (name, value) as chosen, lr included (for the module's docstring)
    states: tuple  # the state names kept between steps, in declaration order
    updates: tuple  # (target, expr): target "p" or a state name; expr in P, G, T, LR, state symbols
    loc: Loc | None = None


def state_symbol(name: str) -> sp.Symbol:
    return sp.Symbol(f"state {name}", real=True)  # a space: no user name can be the same


def define_optimizer(d: S.OptimizerDef, builtin=False) -> OptimizerDef:
    """Checks an `optimizer` block's names; the formulas are read when it is chosen."""
    seen: dict[str, Loc] = {}
    options = []
    for o in d.options:
        if o.name in _GIVEN:
            raise NNError(f"'{o.name}' is given to every optimizer ({_given_text()}); an option needs "
                          f"another name", o.loc)
        if o.name in seen:
            raise NNError(f"'{o.name}' is declared twice in optimizer '{d.name}'", o.loc)
        seen[o.name] = o.loc
        options.append((o.name, _literal(o.default, f"'{o.name}'"), o.loc))
    if "lr" not in seen:
        raise NNError(f"optimizer '{d.name}' needs a learning rate option 'lr'", d.loc,
                      f"optimizer {d.name}(lr = 0.01, ...)")
    states = []
    for s in d.states:
        if s.name in _GIVEN or s.name in seen:
            raise NNError(f"the state '{s.name}' has the name of "
                          + ("an option" if s.name in seen else "what every optimizer is given")
                          + f" of optimizer '{d.name}'", s.loc)
        seen[s.name] = s.loc
        states.append((s.name, s.loc))
    assigned = {u.name for u in d.updates}
    for name, loc in states:
        if name not in assigned:
            raise NNError(f"the state '{name}' is never updated", loc, f"give it a new value: {name} = ...")
    for u in d.updates:
        if u.name in ("g", "t") or u.name in dict((o[0], 1) for o in options):
            raise NNError(f"'{u.name}' cannot be assigned in an optimizer: it is "
                          + ("an option" if u.name not in ("g", "t") else "given to the optimizer"), u.loc)
    if "p" not in assigned:
        raise NNError(f"optimizer '{d.name}' never updates the parameter", d.loc, "add a line p = p - lr * g")
    return OptimizerDef(d.name, tuple(options), tuple(states), tuple(d.updates), d.loc, builtin)


def _given_text() -> str:
    return "p the parameter, g its gradient, t the step"


def choose(opt: OptimizerDef, use: S.OptimizerUse | None, registry) -> Rule:
    """The optimizer `opt` with the values of `use` (a program's `optimizer` line)."""
    values = {name: default for name, default, _ in opt.options}
    names = [name for name, _, _ in opt.options]
    if use is not None:
        if len(use.args) > len(names):
            raise NNError(f"optimizer '{opt.name}' takes {len(names)} options, got {len(use.args)}", use.loc)
        given = {}
        for name, a in zip(names, use.args):
            given[name] = (a, a.loc)
        for k in use.keywords:
            if k.name not in values:
                raise NNError(f"optimizer '{opt.name}' has no option '{k.name}'" + did_you_mean(k.name, names),
                              k.loc, "its options: " + ", ".join(names))
            if k.name in given:
                raise NNError(f"'{k.name}' is given twice", k.loc)
            given[k.name] = (k.value, k.loc)
        for name, (e, loc) in given.items():
            value = _literal(e, f"'{name}'")
            if isinstance(value, str) or value is None:
                raise NNError(f"'{name}' must be a number", loc)
            values[name] = value
    where = use.loc if use is not None else opt.loc
    for name in names:
        if values[name] is None:
            raise NNError(f"optimizer '{opt.name}' needs a value for '{name}'", where, f"{opt.name}({name} = ...)")
    lr = values["lr"]
    if isinstance(lr, bool) or not lr > 0:
        raise NNError("the learning rate must be a positive number", where)
    scope = _Scope(registry, f"optimizer '{opt.name}'")
    # the options are read as symbols and replaced by their values after: a condition on
    # an option (where(nesterov == 1, ...)) is then decided here, once
    symbols = {name: sp.Symbol(f"option {name}", real=True) for name in names if name != "lr"}
    scope.scalars.update({**symbols, "lr": LR, **_GIVEN})
    fixed = {symbols[name]: exact(values[name]) for name in symbols}
    state_names = [name for name, _ in opt.states]
    scope.scalars.update({name: state_symbol(name) for name in state_names})
    locals_ = {u.name: sp.Symbol(f"local {u.name}", real=True) for u in opt.updates
               if u.name != "p" and u.name not in state_names}
    raw = []
    for u in opt.updates:
        # a local is read as a symbol of its own here and replaced by its formula in _run
        scope.scalars.update({n: locals_[n] for n in locals_ if n in {x[0] for x in raw}})
        expr = to_sympy(u.expr, scope).xreplace(fixed)
        if isinstance(expr, sp.Basic) and expr.atoms(sp.Indexed):
            raise NNError("an optimizer's update is one element's formula: no indices", u.loc)
        raw.append((u.name, expr, u.loc))
    # a state whose old value no step reads is a local: nothing to keep between steps
    _, read_first = _run(raw, {"p", *state_names}, locals_)
    kept = [s for s in state_names if s in read_first]
    updates, _ = _run(raw, {"p", *kept}, {**locals_, **{s: state_symbol(s) for s in state_names if s not in kept}})
    return Rule(opt.name, float(lr), tuple((n, values[n]) for n in names), tuple(kept), updates, where)


def _run(raw: list, arrays: set, locals_: dict) -> tuple:
    """The updates of the names in `arrays`, each local replaced by its formula, and the
    arrays some update reads before writing them.  A local is a formula, not a value: if
    an array it reads is written before the local is read, the two differ, and that is
    refused in plain words."""
    symbol = {n: (P if n == "p" else state_symbol(n)) for n in arrays}
    version = {n: 0 for n in arrays}
    formulas = {}  # local symbol -> (formula, {array: version when it was computed}, name)
    out, read_first = [], set()
    for name, expr, loc in raw:
        for ph in [x for x in expr.free_symbols if x in formulas]:
            formula, seen, local = formulas[ph]
            stale = [a for a, v in seen.items() if version[a] != v]
            if stale:
                raise NNError(f"'{local}' was computed from {stale[0]} before {stale[0]} was updated; here it "
                              f"would read the new {stale[0]}", loc,
                              f"compute '{local}' again after the update, under another name")
        expr = expr.xreplace({ph: f for ph, (f, _, _) in formulas.items()})
        reads = {n for n in arrays if expr.has(symbol[n])}
        read_first |= {n for n in reads if version[n] == 0}
        if name in arrays:
            out.append((name, expr))
            version[name] += 1
        else:
            formulas[locals_[name]] = (expr, {n: version[n] for n in reads}, name)
    return tuple(out), read_first
