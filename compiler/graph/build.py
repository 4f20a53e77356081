"""Syntax tree -> network graph (nncc.ir), with shape inference and located errors."""
from __future__ import annotations

import math
import re
from contextlib import contextmanager
from functools import lru_cache
from importlib import resources
from pathlib import Path

import sympy as sp

from . import ir
from ..frontend import syntax as S
from ..errors import Loc, NNError, did_you_mean, escape, source_lines
from ..literals import exact
from ..naming import C_MACRO_WORDS, c_macro, grad_name, plain, state_name, var
from ..ops.definitions import FLOAT_MAX, PRIMITIVES, check_power, OpDef, Registry, TensorArg, define_fn, define_layer
from ..ops.optimizers import choose, define_optimizer
from ..frontend.parse import parse, without_bom
from ..ops.symbolic import LogSumExp, MaxOver

INITS = ("uniform", "normal", "zeros", "xavier", "he")
# The most elements one tensor or parameter may have (per sample): C indexes with int and
# numpy's work buffers must fit in memory; 2^31 - 1 is also PyTorch's bound for most kernels.
MAX_ELEMENTS = 2**31 - 1


@lru_cache(maxsize=1)
def prelude() -> Registry:
    """The built-in operators, defined in prelude.nn."""
    text = resources.files("nncc.ops").joinpath("prelude.nn").read_text(encoding="utf-8")
    reg = Registry()
    for name, fn in PRIMITIVES.items():
        z = sp.Symbol("z", real=True)
        reg.add(OpDef(name, "elementwise", (TensorArg("z", None, None),), (), (), (), {}, fn(z), None, True))
    for stmt in parse(text, "<prelude>"):
        if isinstance(stmt, S.OptimizerDef):
            reg.add_optimizer(define_optimizer(stmt, True))
        else:
            reg.add(define_fn(stmt, reg, True) if isinstance(stmt, S.FnDef) else define_layer(stmt, reg, True))
    return reg


def compile_graph(source: str, file: str = "<string>", optimizer: str | None = None, freeze=()) -> ir.Graph:
    """Parse and check a .nn program; return its graph or raise NNError.  `optimizer`
    (`adam(lr = 0.001)`, as after the word `optimizer` in a program) replaces the
    program's own choice; `freeze` names layers to freeze besides the program's."""
    stmts = parse(source, file)
    for label in freeze:
        extra = parse("freeze " + label, "--freeze")
        if len(extra) != 1 or not isinstance(extra[0], S.Freeze):
            raise NNError(f"'{label}' does not name a layer to freeze", None, "e.g. --freeze dense_1")
        stmts = stmts + extra
    if optimizer is not None:
        use = parse("optimizer " + optimizer, "--optimizer")
        if len(use) != 1 or not isinstance(use[0], S.OptimizerUse):
            raise NNError(f"'{optimizer}' does not choose an optimizer", None, "e.g. adam(lr = 0.001)")
        stmts = [st for st in stmts if not isinstance(st, S.OptimizerUse)] + use
    return _Builder(stmts, file, source_lines(without_bom(source))).build()


_BINARY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
           "/": lambda a, b: a / b, "^": lambda a, b: a ** b}
_OP_NAMES = {"+": "add", "-": "sub", "*": "mul", "/": "div", "^": "pow"}


class _Builder:
    def __init__(self, stmts: list, file: str, lines: list[str]):
        self.stmts = stmts
        self.lines = lines
        self.file = file
        self.registry = prelude().copy()
        self.tensors: dict[str, ir.Tensor] = {}
        self.params: list[ir.Param] = []
        self.nodes: list[ir.Node] = []
        self.counters: dict[str, int] = {}
        self.labels: set[str] = set()
        self.defined_at: dict[str, Loc] = {}
        self._in_loss = False
        self._first_arg = None
        self._chain_values = {}  # id of a stage of a pipe -> its tensor, computed ahead

    # ---- top level
    def build(self) -> ir.Graph:
        name = _name_from_file(self.file)
        name_loc = None
        output = None
        loss = None
        reduce = "mean"
        for st in self.stmts:
            with _nesting_checked(st):
                if isinstance(st, S.FnDef):
                    self.registry.add(define_fn(st, self.registry))
                elif isinstance(st, S.LayerDef):
                    self.registry.add(define_layer(st, self.registry))
                elif isinstance(st, S.OptimizerDef):
                    self.registry.add_optimizer(define_optimizer(st))
        uses = [st for st in self.stmts if isinstance(st, S.OptimizerUse)]
        if len(uses) > 1:
            raise NNError("the optimizer is chosen twice", uses[1].loc, f"first chosen at {uses[0].loc}")
        use = uses[0] if uses else None
        self.rule = rule = choose(self.registry.optimizer(use.name if use else "sgd", use.loc if use else None), use,
                      self.registry)
        for st in self.stmts:  # a definition not chosen is still read, for its mistakes
            if isinstance(st, S.OptimizerDef) and st.name != rule.name and all(o.default for o in st.options):
                choose(self.registry.optimizers[st.name], None, self.registry)
        # names the user binds, so that no automatic name takes one before its line
        self.user_names = {st.name for st in self.stmts if isinstance(st, (S.Decl, S.Assign))}
        for st in self.stmts:
            with _nesting_checked(st):
                if isinstance(st, S.Network):
                    if name_loc is not None:
                        raise NNError("the network is named twice", st.loc, f"first named at {name_loc}")
                    name, name_loc = st.name, st.loc
                elif isinstance(st, S.Decl):
                    self._declare(st.name, st.loc)
                    shape = tuple(self._size(s, f"the shape of '{st.name}'") for s in st.shape)
                    _check_elements(shape, f"'{st.name}'", st.loc)
                    if st.classes and shape[0] < 2:
                        raise NNError("a class target needs at least 2 classes", st.loc)
                    self.tensors[st.name] = ir.Tensor(st.name, shape, st.kind, st.loc, st.classes)
                elif isinstance(st, S.Output):
                    if output is not None:
                        raise NNError("'output' is given twice", st.loc)
                    output = st
                elif isinstance(st, S.Assign):
                    if st.name == "loss":
                        if loss is not None:
                            raise NNError("'loss' is defined twice", st.loc, f"first defined at {loss[1]}")
                        self._first_arg, self._in_loss = None, True
                        t = self._eval(st.expr)
                        self._in_loss = False
                        if not isinstance(t, ir.Tensor):
                            raise NNError("the loss must depend on the network, but this is a plain number",
                                          st.expr.loc, "e.g. loss = quadratic(a, y)")
                        if t.shape != ():
                            raise NNError(f"the loss must be one number per sample, but this has shape "
                                          f"{list(t.shape)}", st.expr.loc if hasattr(st.expr, "loc") else st.loc,
                                          "use a loss function such as quadratic(a, y) or softmax_cross_entropy(z, y)")
                        loss = (t, st.loc, self._first_arg)
                        reduce = st.reduce or "mean"
                    else:
                        if st.reduce is not None:
                            raise NNError(f"'{st.reduce}' before an expression is only for the loss", st.loc)
                        self._declare(st.name, st.loc)
                        self._eval(st.expr, bind=st.name)
        if not [t for t in self.tensors.values() if t.role == "input"]:
            # at the first statement (the network line, say): line 1 may be blank or a comment
            first = self.stmts[0].loc.line if self.stmts else 1
            raise NNError("the network has no input; declare one such as 'input x: [784]'",
                          Loc(self.file, first, 1, self._line(first)))
        if loss is None:
            last = max((getattr(s, "loc").line for s in self.stmts), default=1)
            raise NNError("the network has no loss; add a line such as 'loss = quadratic(a, y)'",
                          Loc(self.file, last, 1, self._line(last)))
        if output is not None:
            if output.name not in self.tensors:
                raise NNError(f"unknown tensor '{output.name}'" + did_you_mean(output.name, self.tensors),
                              output.loc)
            out_name = output.name
        elif loss[2] is not None:
            out_name = loss[2]
        else:
            raise NNError("cannot tell what 'forward' should return", loss[1], "add a line 'output NAME'")
        if self.tensors[out_name].role == "target":
            if output is not None:
                raise NNError(f"the output '{out_name}' is a target; forward cannot return it", output.loc)
            raise NNError(f"forward returns the loss's first argument, but '{out_name}' is a target", loss[1],
                          "put the network's prediction first, as in quadratic(a, y), or add 'output NAME'")
        self._check_output_reads_no_target(out_name, output.loc if output is not None else loss[1])
        self._check_generated_names(name)
        frozen = self._frozen()
        g = ir.Graph(name, self.file,
                     tuple(t for t in self.tensors.values() if t.role == "input"),
                     tuple(t for t in self.tensors.values() if t.role == "target"),
                     dict(self.tensors), tuple(self.params), tuple(self.nodes), out_name, loss[0].name, reduce, rule, frozen)
        ir.verify(g)
        return g

    def _frozen(self) -> frozenset:
        """The parameters of the layers `freeze` names."""
        layers = {n.label: n for n in self.nodes if n.params}
        out = set()
        for st in self.stmts:
            if isinstance(st, S.Freeze):
                if st.label not in layers:
                    if any(n.label == st.label for n in self.nodes):
                        raise NNError(f"'{st.label}' has no parameters to freeze", st.loc)
                    raise NNError(f"no layer '{st.label}' to freeze" + did_you_mean(st.label, layers), st.loc,
                                  "the layers with parameters: " + ", ".join(layers) if layers else None)
                out.update(p for _, p in layers[st.label].params)
        return frozenset(out)

    def _check_output_reads_no_target(self, out_name: str, loc: Loc):
        """forward takes the inputs only, so what it returns must not be computed from a target."""
        producer = {n.output: n for n in self.nodes}
        need, seen = [out_name], set()
        while need:
            t = need.pop()
            if t in seen:
                continue
            seen.add(t)
            if self.tensors[t].role == "target" and t != out_name:
                raise NNError(f"forward returns '{out_name}', which is computed from the target '{t}', but "
                              f"forward takes only the inputs", loc,
                              "add 'output NAME' naming a tensor computed from inputs alone")
            if t in producer:
                need.extend(producer[t].args)

    def _check_generated_names(self, net: str):
        """One table of the names the generated code gives tensors, parameters and gradients,
        and a located error where two would share one, rather than code that silently reads
        the wrong array.

        Python: a tensor or parameter a.b is the variable var(a.b) = a_b (a trailing _ when
        it is a name of naming.RESERVED), the gradient of X is d_X.  C: v_<a_b>, dv_<a_b>,
        the same plain names with a prefix, so unique when the Python ones are; and header
        macros <NET>_<A_B>_SIZE / _OFFSET for inputs, targets and parameters, in upper case.
        """
        owners: dict[str, tuple] = {}  # generated name -> (kind, user name, loc)
        entries = [("param", p.name, var(p.name), p.loc) for p in self.params]
        entries += [("tensor", t.name, var(t.name), t.loc) for t in self.tensors.values()]
        entries += [("gradient", n, grad_name(n), loc) for n, loc in
                    [*((t.name, t.loc) for t in self.tensors.values()), *((p.name, p.loc) for p in self.params)]]
        entries += [("state", f"{s}' of '{p.name}", var(state_name(p.name, s)), p.loc)
                    for p in self.params for s in self.rule.states]
        for entry in entries:
            kind, name, gen, loc = entry
            if gen not in owners:
                owners[gen] = entry
                continue
            other = owners[gen]
            # blame the name a user chose: a tensor or parameter, not a gradient
            culprit, owner = (other, entry) if kind in ("gradient", "state") else (entry, other)
            self._name_clash(culprit, owner, gen)
        macros: dict[str, tuple] = {}
        arrays = [("tensor", t.name, c_macro(t.name), t.loc) for t in self.tensors.values()
                  if t.role in ("input", "target")]
        for entry in arrays + [("param", p.name, c_macro(p.name), p.loc) for p in self.params]:
            kind, name, word, loc = entry
            what = self._what(kind, name)
            if word in C_MACRO_WORDS:
                raise NNError(f"the name '{name}' is taken in the C header: {net.upper()}_{word}_SIZE is "
                              f"{'the size of the output' if word == 'OUTPUT' else 'the workspace size'}",
                              loc, "choose another name")
            if word in macros:
                other = macros[word]
                raise NNError(f"{what} and {self._what(*other[:2])} would share the C header name "
                              f"{net.upper()}_{word}_SIZE (C macro names are upper case)", loc,
                              "choose names that differ in more than upper and lower case")
            macros[word] = entry

    @staticmethod
    def _what(kind: str, name: str) -> str:
        return {"param": "the parameter", "tensor": "the tensor", "gradient": "the gradient of",
                "state": "the optimizer state"}[kind] + f" '{name}'"

    def _name_clash(self, culprit, owner, gen):
        kind, name, _, loc = culprit
        owner_what = self._what(owner[0], owner[1])
        if kind == "tensor" and name not in self.user_names:  # a name the builder chose
            raise NNError(f"the output of this would be called {gen} in the generated code, but that is "
                          f"{owner_what}", loc, "bind it to a name of your own: name = ...")
        hint = "choose another name"
        if gen != plain(name) and kind != "gradient":
            hint = f"'{plain(name)}' is a name the generated module uses itself, so it becomes {gen}; " + hint
        raise NNError(f"the name '{name}' is taken: the generated code calls {owner_what} {gen}", loc, hint)

    def _line(self, n):
        return self.lines[n - 1] if 0 < n <= len(self.lines) else ""

    def _declare(self, name: str, loc: Loc):
        if name in self.defined_at:
            raise NNError(f"'{name}' is already defined", loc, f"first defined at {self.defined_at[name]}")
        self.defined_at[name] = loc

    def _size(self, e, what) -> int:
        v = self._number(e, what)
        if not (isinstance(v, (int, float)) and float(v).is_integer() and v > 0):
            raise NNError(f"{what} must hold positive whole numbers; got {_show(v)}", e.loc)
        if v > MAX_ELEMENTS:
            raise NNError(f"{what} holds {int(v)}, more than the {MAX_ELEMENTS} elements a tensor may have",
                          e.loc)
        return int(v)

    def _number(self, e, what):
        """A constant expression (numbers, + - * / ^, true/false, strings)."""
        if isinstance(e, S.Num):
            if not math.isfinite(e.value):
                raise NNError("this number is too large for a float", e.loc)
            return e.value
        if isinstance(e, (S.Bool, S.Str)):
            return e.value
        if isinstance(e, S.Neg):
            return -self._number(e.operand, what)
        if isinstance(e, S.Binary):
            a, b = self._number(e.left, what), self._number(e.right, what)
            if isinstance(a, (str, bool)) or isinstance(b, (str, bool)):
                raise NNError(f"{what} must be a number", e.loc)
            if e.op == "/" and b == 0:
                raise NNError("division by zero", e.loc)
            if e.op == "^":
                check_power(*(sp.Integer(int(x)) if float(x).is_integer() else sp.Float(x) for x in (a, b)), e.loc)
            try:
                v = _BINARY[e.op](a, b)
            except OverflowError:
                v = math.inf
            if isinstance(v, complex):
                raise NNError("a negative number to a fractional power is not a real number", e.loc)
            if abs(v) > FLOAT_MAX:
                raise NNError("this number is too large for a float (the largest is about 1.8e308)", e.loc)
            return int(v) if isinstance(v, float) and v.is_integer() and e.op != "/" else v
        if isinstance(e, S.Name) and e.id in self.tensors:
            raise NNError(f"{what} must be a number, but '{e.id}' is a tensor", e.loc)
        raise NNError(f"{what} must be a number", e.loc)

    # ---- expressions -> nodes
    def _eval(self, e, bind: str | None = None):
        """Evaluate a network-level expression to a Tensor (or a number)."""
        if isinstance(e, S.Call) and bind is None and id(e) in self._chain_values:
            return self._chain_values[id(e)][1]
        if isinstance(e, S.Call):
            # a pipe's stages are calls nested through their first argument: evaluate them
            # innermost first, as recursion would, without recursing once per stage
            chain, inner = [], e
            while inner.args and isinstance(inner.args[0], S.Call) and inner.args[0].bound is None \
                    and id(inner.args[0]) not in self._chain_values:
                inner = inner.args[0]
                chain.append(inner)
            for c in reversed(chain):
                # the node is kept with its value so that its id stays its own
                self._chain_values[id(c)] = (c, self._eval(c))
        if isinstance(e, S.Name):
            if e.id not in self.tensors:
                raise NNError(f"unknown tensor '{e.id}'" + did_you_mean(e.id, self.tensors), e.loc)
            t = self.tensors[e.id]
            if bind is not None:
                return self._node(self._elementwise("identity", "z", 1), [t], {}, e.loc, bind)
            return t
        if isinstance(e, (S.Num, S.Neg, S.Binary)) and not self._mentions_tensor(e):
            v = self._number(e, "this")
            if bind is not None:
                raise NNError(f"'{bind}' would be a plain number; only tensors can be bound", e.loc)
            return v
        if isinstance(e, S.Neg):
            t = self._eval(e.operand)
            return self._node(self._arith("neg", lambda a: -a, 1), [t], {}, e.loc, bind)
        if isinstance(e, S.Binary):
            return self._binary(e, bind)
        if isinstance(e, S.Call):
            if e.bound is not None:
                raise NNError(f"'{e.name}(...: ...)' reductions belong inside fn and layer formulas", e.loc)
            return self._call(e, bind)
        if isinstance(e, S.Index):
            raise NNError("indexing is for fn and layer formulas; at network level use whole tensors", e.loc)
        if isinstance(e, S.Compare):
            raise NNError("a comparison is only allowed inside 'where' in a formula", e.loc)
        raise NNError("a string or true/false is not a tensor", e.loc)

    def _mentions_tensor(self, e) -> bool:
        if isinstance(e, S.Name):
            return True
        if isinstance(e, S.Neg):
            return self._mentions_tensor(e.operand)
        if isinstance(e, S.Binary):
            return self._mentions_tensor(e.left) or self._mentions_tensor(e.right)
        return isinstance(e, (S.Call, S.Index))

    def _binary(self, e: S.Binary, bind):
        a = self._eval(e.left)
        b = self._eval(e.right)
        fn = _BINARY[e.op]
        name = _OP_NAMES[e.op]
        if isinstance(a, ir.Tensor) and isinstance(b, ir.Tensor):
            if a.shape != b.shape:
                raise NNError(f"shape mismatch: '{e.op}' needs equal shapes, but {a.name} has "
                              f"{list(a.shape)} and {b.name} has {list(b.shape)}", e.loc)
            return self._node(self._arith(name, fn, 2), [a, b], {}, e.loc, bind)
        if isinstance(a, ir.Tensor):
            c = self._const(b, e.right)
            if e.op == "/" and c == 0:
                raise NNError("division by zero", e.right.loc)
            return self._node(self._arith(name, lambda z: fn(z, c), 1), [a], {}, e.loc, bind)
        if isinstance(b, ir.Tensor):
            c = self._const(a, e.left)
            return self._node(self._arith(name, lambda z: fn(c, z), 1), [b], {}, e.loc, bind)
        raise NNError(f"'{bind}' would be a plain number; only tensors can be bound", e.loc)

    def _const(self, v, e):
        if isinstance(v, (bool, str)):
            raise NNError("only numbers combine with tensors", e.loc)
        return sp.Rational(str(v)) if isinstance(v, float) else sp.Integer(v)

    def _arith(self, name, fn, arity) -> OpDef:
        names = ("a", "b")[:arity]
        syms = [sp.Symbol(n, real=True) for n in names]
        return OpDef(name, "elementwise", tuple(TensorArg(n, None, None) for n in names), (), (), (), {},
                     fn(*syms), None, True)

    def _elementwise(self, name, arg, arity) -> OpDef:
        return self.registry.get(name, None)

    def _call(self, e: S.Call, bind):
        if e.name == "concat":
            return self._concat(e, bind)
        op = self.registry.get(e.name, e.loc)
        n_t = len(op.tensors)
        # bind positional and keyword arguments to the op's signature
        values: dict[str, object] = {}
        locs: dict[str, Loc] = {}
        sig = [t.name for t in op.tensors] + [o.name for o in op.options]
        if len(e.args) > len(sig):
            raise NNError(f"'{op.name}' takes at most {len(sig)} argument{'s' * (len(sig) != 1)} "
                          f"({', '.join(sig)}), got {len(e.args)}", e.loc)
        for nm, a in zip(sig, e.args):
            values[nm] = a
            locs[nm] = a.loc
        extra = {}
        for kw in e.keywords:
            if kw.name in ("name", "init") and op.params:
                extra[kw.name] = kw
                continue
            if kw.name not in sig:
                allowed = sig + (["name", "init"] if op.params else [])
                raise NNError(f"'{op.name}' has no argument '{kw.name}'" + did_you_mean(kw.name, allowed),
                              kw.loc, f"its arguments are {', '.join(allowed)}")
            if kw.name in values:
                raise NNError(f"'{kw.name}' is given twice", kw.loc)
            values[kw.name] = kw.value
            locs[kw.name] = kw.loc
        tensors = []
        for t in op.tensors:
            if t.name not in values:
                raise NNError(f"'{op.name}' needs the tensor argument '{t.name}'", e.loc)
            v = self._eval(values[t.name])
            if not isinstance(v, ir.Tensor):
                raise NNError(f"argument '{t.name}' of '{op.name}' must be a tensor, not a number",
                              locs[t.name])
            tensors.append(v)
        if self._in_loss and self._first_arg is None and op.kind == "indexed" and not op.out_indices:
            self._first_arg = tensors[0].name  # forward returns the first argument of the loss
        options, kinds = {}, option_kinds(op)
        for o in op.options:
            if o.name in values:
                value = self._number(values[o.name], f"'{o.name}' of '{op.name}'")
                options[o.name] = _check_option(op, o, value, kinds[o.name], locs[o.name])
            elif isinstance(o.default, sp.Basic):  # a default computed from other options
                v = o.default.xreplace({sp.Symbol(k, integer=True): exact(x) for k, x in options.items()
                                        if not isinstance(x, str)})
                options[o.name] = int(v) if v.is_integer else float(v)
            elif o.default is not None:
                options[o.name] = o.default
            else:
                raise NNError(f"'{op.name}' needs a value for '{o.name}'", e.loc,
                              f"e.g. {op.name}({', '.join(sig[:n_t])}, {o.name}=...)")
        return self._node(op, tensors, options, e.loc, bind, extra)

    def _concat(self, e: S.Call, bind):
        if e.keywords:
            raise NNError("'concat' takes only tensors", e.keywords[0].loc)
        if len(e.args) < 2:
            raise NNError(f"'concat' joins two or more tensors, got {len(e.args)}", e.loc)
        ts = []
        for a in e.args:
            t = self._eval(a)
            if not isinstance(t, ir.Tensor) or t.shape == ():
                raise NNError("'concat' joins tensors with a feature axis", a.loc)
            ts.append(t)
        rest = ts[0].shape[1:]
        for t, a in zip(ts, e.args):
            if t.shape[1:] != rest:
                raise NNError(f"shape mismatch: concat joins along the first axis, so the other axes must "
                              f"agree, but {ts[0].name} has {list(ts[0].shape)} and {t.name} has "
                              f"{list(t.shape)}", a.loc)
        t = self._node(_concat_op(len(ts), len(rest)), ts, {}, e.loc, bind)
        expected = (sum(p.shape[0] for p in ts),) + rest
        if t.shape != expected:  # the generated code would fail to broadcast the parts
            raise NNError(f"cannot concat these: the result would have shape {list(t.shape)}, not "
                          f"{list(expected)}", e.loc)
        return t

    # ---- nodes
    def _label(self, op: OpDef, extra) -> str:
        if "name" in extra:
            kw = extra["name"]
            # ASCII only, as the names of the grammar: Python folds identifiers by NFKC, so
            # name="ｗ" would be the same variable as name="w"
            if not isinstance(kw.value, S.Str) or not (kw.value.value.isascii() and kw.value.value.isidentifier()):
                raise NNError("name= takes a string that is a valid identifier in ASCII letters, digits and "
                              "'_', e.g. name=\"hidden\"", kw.loc)
            label = kw.value.value
            if label in self.labels:
                raise NNError(f"the layer name '{label}' is used twice", kw.loc)
            self.labels.add(label)
            return label
        while True:
            k = self.counters.get(op.name, 0) + 1
            self.counters[op.name] = k
            label = f"{op.name}_{k}"
            if label not in self.labels:
                self.labels.add(label)
                return label

    def _node(self, op: OpDef, args: list, options: dict, loc: Loc, bind, extra=None) -> ir.Tensor:
        extra = extra or {}
        label = self._label(op, extra)
        if op.kind == "elementwise":
            shape = args[0].shape
            for a, t in zip(args[1:], op.tensors[1:]):
                if a.shape != shape:
                    raise NNError(f"shape mismatch: '{op.name}' needs equal shapes, but {args[0].name} has "
                                  f"{list(shape)} and {a.name} has {list(a.shape)}", loc)
            params, sizes = (), ()
        else:
            shape, params, sizes = self._shape_indexed(op, args, options, loc, label, extra)
        _check_elements(shape, f"the output of {label}", loc)
        out = bind or label
        if bind is None and (out in self.tensors or out in self.user_names):  # a user's name
            out = self._fresh(out)
        t = ir.Tensor(out, shape, "value", loc)
        self.tensors[out] = t
        self.nodes.append(ir.Node(label, op, tuple(a.name for a in args), tuple(options.items()),
                                  params, out, loc, sizes))
        return t

    def _fresh(self, base):
        k = 1
        while f"{base}_{k}" in self.tensors or f"{base}_{k}" in self.defined_at or f"{base}_{k}" in self.user_names:
            k += 1
        return f"{base}_{k}"

    def _shape_indexed(self, op: OpDef, args, options, loc, label, extra):
        env: dict[sp.Symbol, int] = {}
        for t, a in zip(op.tensors, args):
            if len(t.shape) != len(a.shape):
                raise NNError(f"shape mismatch: '{op.name}' expects '{t.name}' with {len(t.shape)} "
                              f"ax{'is' if len(t.shape) == 1 else 'es'} {_pattern(t.shape)}, but {a.name} "
                              f"has {list(a.shape)}", loc)
            for pat, size in zip(t.shape, a.shape):
                if isinstance(pat, sp.Symbol) and pat not in env:
                    env[pat] = size
                elif int(pat.xreplace(env)) != size:
                    raise NNError(f"shape mismatch: {label} expects {_pattern(t.shape, env)} for "
                                  f"'{t.name}' but {a.name} has {list(a.shape)}", loc)
        sizes = tuple(env.items())  # the operator's size patterns, for derive
        for o in op.options:
            env[sp.Symbol(o.name, integer=True)] = options[o.name]
        params = []
        init_kw = extra.get("init")
        for spec in op.params:
            if options.get(spec.name) is False:  # `bias=false` drops the param named bias
                continue
            shape = tuple(self._eval_size(s, env, loc, f"the shape of {label}.{spec.name}") for s in spec.shape)
            full = f"{label}.{spec.name}"
            _check_elements(shape, f"the parameter {full}", loc)
            init = self._init(spec, shape, init_kw, env, op, loc)
            self.params.append(ir.Param(full, shape, init, loc))
            params.append((spec.name, full))
        self._check_index_ranges(op, args, params, env, loc, label)
        shape = []
        for n in op.out_shape():
            v = sp.sympify(n).xreplace({k: sp.Integer(int(x)) for k, x in env.items() if not isinstance(x, str)})
            if not v.is_finite or sp.floor(v) <= 0:
                used = sorted((s.name for s in sp.sympify(n).free_symbols), key=str)
                values = ", ".join(f"{s}={int(env[sp.Symbol(s, integer=True)]) if sp.Symbol(s, integer=True) in env else env.get(sp.Symbol(s, integer=True, positive=True))}"
                                   for s in used)
                why = "it divides by zero" if not v.is_finite else f"it is {sp.floor(v)}"
                raise NNError(f"{label} has no valid output: its extent {n} with {values} is not a positive "
                              f"whole number ({why})", loc,
                              "the window must fit inside the (padded) input: use a smaller kernel, more "
                              "padding or a positive stride")
            shape.append(int(sp.floor(v)))
        return tuple(shape), tuple(params), sizes

    def _check_index_ranges(self, op, args, params, env, loc, label):
        """Every plain read of an index must run over axes of one size (e.g. channels)."""
        shapes = {t.name: a.shape for t, a in zip(op.tensors, args)}
        pshapes = {local: self._param_shape(full) for local, full in params}
        seen = {}
        for ind in sorted(op.body.atoms(sp.Indexed), key=sp.default_sort_key):
            name = ind.base.label.name
            shape = shapes.get(name) or pshapes.get(name)
            if shape is None:
                continue
            for axis, sub_ in enumerate(ind.indices):
                if isinstance(sub_, sp.Symbol):
                    if sub_ in seen and seen[sub_][0] != shape[axis]:
                        size, other, other_axis = seen[sub_]
                        a_name = dict(zip([t.name for t in op.tensors], [a.name for a in args])).get(name, name)
                        raise NNError(f"shape mismatch in {label}: index '{sub_}' runs over {size} "
                                      f"(axis {other_axis} of '{other}') but over {shape[axis]} (axis {axis} "
                                      f"of '{a_name}')", loc)
                    seen.setdefault(sub_, (shape[axis], dict(zip([t.name for t in op.tensors],
                                                                  [a.name for a in args])).get(name, name), axis))

    def _param_shape(self, full):
        return next(p.shape for p in self.params if p.name == full)

    def _eval_size(self, expr, env, loc, what) -> int:
        v = sp.sympify(expr).xreplace({k: sp.Integer(v) if not isinstance(v, bool) else sp.Integer(int(v))
                                       for k, v in env.items()})
        if isinstance(v, sp.Expr) and v.free_symbols:
            raise NNError(f"{what} depends on unknown sizes {sorted(map(str, v.free_symbols))}", loc)
        v = sp.floor(v) if v.is_rational else v
        if not v.is_integer or int(v) <= 0:
            raise NNError(f"{what} is {v}, but it must be a positive whole number", loc)
        return int(v)

    def _init(self, spec, shape, init_kw, env, op, loc):
        """(kind, a, b): uniform(a, b) | normal(a, b) | zeros."""
        fan_in = _fan_in(op, spec, shape)
        fan_out = max(1, math.prod(shape) // max(fan_in, 1))
        choice = None
        if init_kw is not None and len(shape) >= 2:
            v = init_kw.value
            if not isinstance(v, (S.Name, S.Str)) or (v.id if isinstance(v, S.Name) else v.value) not in INITS:
                raise NNError(f"init= takes one of {', '.join(INITS)}", init_kw.loc)
            choice = v.id if isinstance(v, S.Name) else v.value
        if choice is None and spec.init is not None:
            e = spec.init
            if isinstance(e, S.Name) and e.id in INITS:
                choice = e.id
            elif isinstance(e, S.Call) and e.name in ("uniform", "normal") and len(e.args) == 2:
                a, b = (self._formula_number(x, env, op) for x in e.args)
                if e.name == "normal" and b < 0:
                    raise NNError(f"normal(mean, std) needs a standard deviation of 0 or more, not {b:g}",
                                  e.args[1].loc)
                if e.name == "uniform" and a > b:
                    raise NNError(f"uniform(lo, hi) needs lo <= hi, but {a:g} > {b:g}", e.loc,
                                  f"write uniform({b:g}, {a:g})")
                return (e.name, a, b)
            else:
                raise NNError("init takes uniform(lo, hi), normal(mean, std) or one of "
                              + ", ".join(INITS), e.loc)
        bound = 1 / math.sqrt(fan_in)
        if choice in (None, "uniform"):
            return ("uniform", -bound, bound)
        if choice == "normal":
            return ("normal", 0.0, bound)
        if choice == "zeros":
            return ("zeros", 0.0, 0.0)
        if choice == "xavier":
            a = math.sqrt(6.0 / (fan_in + fan_out))
            return ("uniform", -a, a)
        return ("normal", 0.0, math.sqrt(2.0 / fan_in))  # he

    def _formula_number(self, e, env, op):
        from ..ops.definitions import _Scope, to_sympy
        scope = _Scope(self.registry, f"the init of a parameter of '{op.name}'")
        for k, v in env.items():
            scope.scalars[k.name] = exact(v)
        v = to_sympy(e, scope)
        if v.free_symbols:
            raise NNError("an init bound must be a number", e.loc)
        try:
            x = float(v)
        except TypeError:  # a form with no value (a where)
            raise NNError("an init bound must be a number", e.loc) from None
        if not math.isfinite(x):
            raise NNError("this number is too large for a float (the largest is about 1.8e308)", e.loc)
        return x


def _check_elements(shape, what: str, loc: Loc) -> None:
    n = math.prod(shape)
    if n > MAX_ELEMENTS:
        raise NNError(f"{what} would have {n} elements ({' x '.join(map(str, shape))}), more than the "
                      f"{MAX_ELEMENTS} a tensor may have", loc)


@contextmanager
def _nesting_checked(st):
    """A statement nested too deeply for a recursive pass (sympy's included) is a located
    error rather than a RecursionError."""
    try:
        yield
    except RecursionError:
        raise NNError("this statement is nested too deeply to compile", st.loc,
                      "split it into several statements, naming the parts") from None


def _name_from_file(file: str) -> str:
    """The network's name when no `network` line gives one: the file's stem made an ASCII
    identifier (my-model.nn -> my_model), since it names C functions and a header guard."""
    stem = Path(file).stem if file and not file.startswith("<") else ""
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem.encode("ascii", "replace").decode())[:64].strip("_")
    if not name:
        return "network"
    return "n" + name if name[0].isdigit() else name


def _fan_in(op: OpDef, spec, shape) -> int:
    """Input elements one output element reads through this param: its summed axes."""
    import sympy as sp
    from ..ops.symbolic import real_base
    base = real_base(spec.name)
    out = set(op.out_indices)
    fan = 1
    for ind in op.body.atoms(sp.Indexed):
        if ind.base == base:
            for sub, size in zip(ind.indices, shape):
                if not (sub.free_symbols & out):
                    fan *= size
            return max(fan, 1)
    return 1


def _pattern(shape, env=None) -> str:
    env = env or {}
    return "[" + ", ".join(str(s.xreplace({k: sp.Integer(v) for k, v in env.items()
                                            if not isinstance(v, (bool, str))})) for s in shape) + "]"


@lru_cache(maxsize=None)
def _concat_op(n: int, rest_rank: int) -> OpDef:
    """concat along the first axis: y[i, ...] = a[i, ...] + b[i - n_a, ...] (reads outside are zero)."""
    from ..ops.symbolic import index_symbol, real_base
    i = index_symbol("i")
    rest = tuple(index_symbol(f"u{k + 1}") for k in range(rest_rank))  # one per axis, of any rank
    names = [f"x{k + 1}" for k in range(n)]
    sizes = [sp.Symbol(f"n{k + 1}", integer=True, positive=True) for k in range(n)]
    rest_sizes = tuple(sp.Symbol(f"m{k + 1}", integer=True, positive=True) for k in range(rest_rank))
    body = 0
    offset = sp.Integer(0)
    for name, size in zip(names, sizes):
        body += real_base(name)[(i - offset,) + rest]
        offset += size
    tensors = tuple(TensorArg(nm, (sz,) + rest_sizes, None) for nm, sz in zip(names, sizes))
    extents = {i: sum(sizes)}
    extents.update(dict(zip(rest, rest_sizes)))
    return OpDef("concat", "indexed", tensors, (), (), (i,) + rest, extents, body, None, True)


def option_kinds(op: OpDef) -> dict:
    """What each option of an op is: "switch" (true/false), "count" (a size that must be
    positive: a param's extent, a stride, a kernel), "size" (a whole number, 0 allowed: a
    padding) or "number" (a value in the formula, e.g. a slope)."""
    body = op.body if op.body is not None else sp.Integer(0)
    reductions = body.atoms(sp.Sum, MaxOver, LogSumExp)
    indices = set(op.out_indices) | {lim[0] for x in reductions for lim in x.limits}
    structural, positive = set(), set()
    for spec in op.params:
        for n in spec.shape:
            positive |= sp.sympify(n).free_symbols
    for n in list(op.extents.values()) + [sub for ind in body.atoms(sp.Indexed) for sub in ind.indices]:
        n = sp.sympify(n)
        structural |= n.free_symbols
        for x in n.free_symbols & indices:  # a stride: the coefficient of an index
            positive |= sp.sympify(n.coeff(x)).free_symbols
        for d in n.atoms(sp.Pow):
            if d.exp.is_negative:  # a divisor
                positive |= d.base.free_symbols
    for x in reductions:
        for _, lo, hi in x.limits:  # a reduction over nothing is no window
            positive |= sp.sympify(hi).free_symbols
    positive_names = {x.name for x in positive}
    structural_names = {x.name for x in structural} | positive_names
    kinds = {}
    for o in op.options:
        if isinstance(o.default, bool):
            kinds[o.name] = "switch"
        elif o.name in positive_names:
            kinds[o.name] = "count"
        elif o.name in structural_names:
            kinds[o.name] = "size"
        else:
            kinds[o.name] = "number"
    return kinds


def _check_option(op: OpDef, o, value, kind: str, loc: Loc):
    """The option's value, checked against its kind (whole sizes as int)."""
    what = f"'{o.name}' of '{op.name}'"
    if kind == "switch":
        if not isinstance(value, bool):
            raise NNError(f"{what} is true or false, not {_show(value)}", loc)
        return value
    if isinstance(value, (bool, str)):
        raise NNError(f"{what} must be a number, not {_show(value)}", loc)
    if not math.isfinite(value):
        raise NNError(f"{what} must be a finite number", loc)
    if kind in ("count", "size"):
        if value != int(value) or value < (1 if kind == "count" else 0):
            least = "positive" if kind == "count" else "non-negative"
            raise NNError(f"{what} must be a {least} whole number, not {_show(value)}", loc)
        if value > MAX_ELEMENTS:
            raise NNError(f"{what} is {int(value)}, more than the {MAX_ELEMENTS} elements a tensor may have",
                          loc)
        return int(value)
    return value


def _show(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{escape(value)}"' if isinstance(value, str) else repr(value)
