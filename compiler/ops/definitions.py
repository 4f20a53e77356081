"""Operator definitions: `fn` and `layer` syntax -> element formulas in sympy.

An `OpDef` is everything the compiler knows about one operator: its tensor
arguments (with shape patterns), its options, its parameters and one element
formula `y[I] = body`.  Nothing else: no gradient is ever written here; the
derive stage gets every backward formula from `body`.

Two kinds:
  elementwise  `fn f(z, slope = 0.01) = ...`: scalar arguments, applied to
               tensors of any (equal) shape element by element;
  indexed      `fn f(a[i], y[i]) = ...` and `layer ...`: index notation over
               one output element, reductions with `sum`, `max`, `logsumexp`.

The registry refuses duplicates and lists close names on a miss.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import sympy as sp

from ..frontend import syntax as S
from ..errors import Loc, NNError, did_you_mean
from ..literals import exact
from .primitives import CALLABLE, DOMAINS, FLOAT_MAX
from .symbolic import LogSumExp, MaxOver, Where, index_symbol, real_base

# Scalar functions every formula may call (ops/primitives.py); everything else comes from `fn`s.
PRIMITIVES = CALLABLE
REDUCTIONS = ("sum", "mean", "max", "logsumexp")

# A constant of a formula must be a float64 in the generated code.  Each one is checked
# as it is built, so that nothing huge (9^9^9) is ever computed exactly.
_FLOAT_MAX_INT = int(FLOAT_MAX)
_LOG10_MAX = math.log10(FLOAT_MAX)
_LOG10_MIN = math.log10(sys.float_info.min * sys.float_info.epsilon)  # the least subnormal


@dataclass(frozen=True)
class TensorArg:
    name: str
    shape: tuple | None  # sympy size expressions; None: any shape (elementwise)
    loc: Loc


@dataclass(frozen=True)
class Option:
    name: str
    default: object  # python value, or None when required
    loc: Loc


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple  # sympy expressions in sizes and options
    init: object  # syntax expression or None
    loc: Loc


@dataclass(frozen=True)
class OpDef:
    name: str
    kind: str  # "elementwise" | "indexed"
    tensors: tuple  # TensorArg
    options: tuple  # Option
    params: tuple  # ParamSpec
    out_indices: tuple  # index Symbols of the output element
    extents: dict = field(hash=False)  # index Symbol -> size expression (declared with `for`)
    body: sp.Expr = None
    loc: Loc = None
    builtin: bool = False
    out_subs: tuple = ()  # the output's subscripts: out_indices, or affine in them (flatten)

    def out_shape(self) -> tuple:
        """The output extent of each output axis, in sizes and options."""
        subs = self.out_subs or self.out_indices
        shape = []
        for s in subs:
            if s in self.extents:
                shape.append(self.extents[s])
            else:  # affine: its largest value + 1
                top = sum(s.coeff(v) * (self.extents[v] - 1) for v in self.out_indices if s.has(v))
                shape.append(top + s.as_independent(*self.out_indices, as_Add=True)[0] + 1)
        return tuple(shape)

    @property
    def arg_names(self):
        return [t.name for t in self.tensors] + [o.name for o in self.options]


class Registry:
    """Operators by name.  A user's definition may replace one of the prelude's (the
    language reference itself shows `layer dense` and `fn quadratic`); a second user
    definition of a name, or one of a primitive, is an error."""

    def __init__(self):
        self._ops: dict[str, OpDef] = {}
        self.optimizers: dict = {}  # name -> optimizers.OptimizerDef

    def add_optimizer(self, opt) -> None:
        old = self.optimizers.get(opt.name)
        if old is not None and not (old.builtin and not opt.builtin):
            where = "a built-in" if old.builtin else f"defined at {old.loc}"
            raise NNError(f"the optimizer '{opt.name}' is already defined ({where})", opt.loc,
                          "choose another name for your definition")
        self.optimizers[opt.name] = opt

    def optimizer(self, name: str, loc: Loc):
        try:
            return self.optimizers[name]
        except KeyError:
            raise NNError(f"unknown optimizer '{name}'" + did_you_mean(name, self.optimizers), loc,
                          "the built-in ones: " + ", ".join(n for n, o in self.optimizers.items() if o.builtin)) from None

    def add(self, op: OpDef) -> None:
        clash = op.name in PRIMITIVES or op.name in REDUCTIONS or op.name in _RESERVED
        old = self._ops.get(op.name)
        replaces_prelude = old is not None and old.builtin and not op.builtin and not clash
        if (op.name in self._ops and not replaces_prelude) or (clash and not op.builtin):
            where = "a built-in" if (old is None or old.builtin) else f"defined at {old.loc}"
            raise NNError(f"'{op.name}' is already defined ({where})", op.loc,
                          "choose another name for your definition")
        self._ops[op.name] = op

    def get(self, name: str, loc: Loc) -> OpDef:
        try:
            return self._ops[name]
        except KeyError:
            known = list(self._ops) + list(PRIMITIVES) + ["concat"]
            raise NNError(f"unknown layer or function '{name}'" + did_you_mean(name, known), loc) from None

    def __contains__(self, name):
        return name in self._ops

    def names(self):
        return list(self._ops)

    def copy(self) -> "Registry":
        r = Registry()
        r._ops = dict(self._ops)
        r.optimizers = dict(self.optimizers)
        return r


_RESERVED = {"where", "concat", "uniform", "normal", "zeros", "xavier", "he"}


# ---- syntax -> sympy ----------------------------------------------------------------

class _Scope:
    """What names mean inside one definition's formula."""

    def __init__(self, registry: Registry, what: str):
        self.registry = registry
        self.what = what
        self.scalars: dict[str, sp.Expr] = {}  # scalar args, options, sizes
        self.tensors: dict[str, tuple[sp.IndexedBase, tuple]] = {}  # name -> (base, shape)
        self.indices: dict[str, sp.Symbol] = {}  # index names in scope
        self.index_extent: dict[sp.Symbol, sp.Expr] = {}
        self.placeholders: dict[sp.Symbol, sp.Symbol] = {}  # index -> extent placeholder


def to_sympy(e, scope: _Scope, in_subscript=False):
    """Convert a syntax expression to sympy inside `scope`."""
    if isinstance(e, S.Num):
        return exact(e.value)
    if isinstance(e, S.Bool):
        return sp.Integer(1 if e.value else 0)
    if isinstance(e, S.Str):
        raise NNError("a string is not allowed in a formula", e.loc)
    if isinstance(e, S.Name):
        if e.id in scope.indices:
            return scope.indices[e.id]
        if e.id in scope.scalars:
            return scope.scalars[e.id]
        if e.id in scope.tensors:
            rank = len(scope.tensors[e.id][1])
            if rank == 0:
                raise NNError(f"'{e.id}' has no axes to index; for one number shared by every element, "
                              f"declare it with one axis and read its only element", e.loc,
                              f"param {e.id}: [1], then {e.id}[0]")
            raise NNError(f"'{e.id}' is a tensor of rank {rank}; write it with indices, "
                          f"e.g. {e.id}[{', '.join('ijkl'[:rank])}]", e.loc)
        known = list(scope.indices) + list(scope.scalars) + list(scope.tensors)
        if in_subscript:
            raise NNError(f"index '{e.id}' is not bound: make it an output index or sum over it, "
                          f"e.g. sum({e.id}: ...)" + did_you_mean(e.id, known), e.loc)
        raise NNError(f"unknown name '{e.id}' in {scope.what}" + did_you_mean(e.id, known), e.loc)
    if isinstance(e, S.Index):
        if e.name not in scope.tensors:
            known = list(scope.tensors)
            raise NNError(f"'{e.name}' is not a tensor of {scope.what}" + did_you_mean(e.name, known), e.loc)
        base, shape = scope.tensors[e.name]
        rank = len(shape)
        if len(e.subs) != rank:
            raise NNError(f"'{e.name}' has {rank} ax{'is' if rank == 1 else 'es'} but is indexed with "
                          f"{len(e.subs)} subscript{'s' * (len(e.subs) != 1)}", e.loc)
        return base[tuple(to_sympy(s, scope, True) for s in e.subs)]
    if isinstance(e, S.Binary):
        a, b = to_sympy(e.left, scope), to_sympy(e.right, scope)
        if e.op == "+":
            return checked_constant(a + b, e.loc)
        if e.op == "-":
            return checked_constant(a - b, e.loc)
        if e.op == "*":
            return checked_constant(a * b, e.loc)
        if e.op == "/":
            if b.is_zero:
                raise NNError("division by zero", e.loc)
            return checked_constant(a / b, e.loc)
        check_power(a, b, e.loc)
        return checked_constant(a ** b, e.loc)
    if isinstance(e, S.Neg):
        return -to_sympy(e.operand, scope)
    if isinstance(e, S.Compare):
        raise NNError("a comparison is only allowed as the first argument of 'where'", e.loc,
                      "e.g. where(z > 0, z, 0)")
    if isinstance(e, S.Call):
        return _call_to_sympy(e, scope)
    raise NNError("this is not allowed in a formula", getattr(e, "loc", None))


def _call_to_sympy(e: S.Call, scope: _Scope):
    if e.bound is not None:
        if e.name not in REDUCTIONS:
            raise NNError(f"'{e.name}(...: ...)' is not a reduction; use one of "
                          + ", ".join(REDUCTIONS), e.loc)
        syms = []
        for name in e.bound:
            if name in scope.indices or name in scope.scalars or name in scope.tensors:
                raise NNError(f"index '{name}' is already in use here; pick a fresh name", e.loc)
            sym = index_symbol(name)
            syms.append(sym)
        inner = dict(scope.indices)
        saved = scope.indices
        scope.indices = {**inner, **dict(zip(e.bound, syms))}
        try:
            body = to_sympy(e.args[0], scope)
        finally:
            scope.indices = saved
        limits = []
        for sym in syms:
            ph = scope.placeholders.setdefault(sym, sp.Symbol(f"N_{sym.name}", integer=True, positive=True))
            limits.append((sym, 0, ph - 1))
        if e.name == "sum":
            return sp.Sum(body, *limits)
        if e.name == "mean":
            count = sp.Mul(*[lim[2] + 1 for lim in limits])
            return sp.Sum(body, *limits) / count
        if e.name == "max":
            return MaxOver(body, *limits)
        return LogSumExp(body, *limits)
    if e.keywords:
        raise NNError(f"keyword arguments are not allowed in a formula call to '{e.name}'", e.keywords[0].loc)
    if e.name == "where" and e.args and isinstance(e.args[0], S.Compare):
        args = [_comparison(e.args[0], scope)] + [to_sympy(a, scope) for a in e.args[1:]]
    else:
        args = [to_sympy(a, scope) for a in e.args]
    if e.name in PRIMITIVES:
        if len(args) != 1:
            raise NNError(f"'{e.name}' takes 1 argument, got {len(args)}", e.loc)
        _check_primitive_domain(e.name, args[0], e.loc)
        return checked_constant(PRIMITIVES[e.name](args[0]), e.loc)
    if e.name == "where":
        if len(args) != 3:
            raise NNError(f"'where' takes 3 arguments (condition, then, else), got {len(args)}", e.loc)
        if not isinstance(args[0], sp.logic.boolalg.Boolean) or args[0] in (sp.true, sp.false):
            raise NNError("the first argument of 'where' must be a comparison such as z > 0", e.args[0].loc)
        return Where(args[0], args[1], args[2])
    if e.name in ("max", "min"):
        if len(args) != 2:
            raise NNError(f"'{e.name}(a, b)' takes 2 arguments; to reduce over indices write "
                          f"{e.name}(i: ...)", e.loc)
        a, b = args
        # strict comparison: at a tie the gradient goes to the second argument (relu'(0) = 0)
        return Where(a > b if e.name == "max" else a < b, a, b)
    if e.name in scope.registry:
        op = scope.registry.get(e.name, e.loc)
        if op.kind != "elementwise":
            raise NNError(f"'{e.name}' is a layer or reduction; only elementwise functions can be "
                          f"called inside a formula", e.loc)
        return checked_constant(inline(op, args, e.loc), e.loc)
    if scope.what.endswith(f" '{e.name}'"):
        raise NNError(f"'{e.name}' calls itself; a definition may use only the ones before it", e.loc)
    known = list(PRIMITIVES) + ["where", "max", "min"] + list(REDUCTIONS) + scope.registry.names()
    raise NNError(f"unknown function '{e.name}'" + did_you_mean(e.name, known), e.loc)


def _comparison(e: S.Compare, scope: _Scope):
    a, b = to_sympy(e.left, scope), to_sympy(e.right, scope)
    return {"<": sp.Lt, "<=": sp.Le, ">": sp.Gt, ">=": sp.Ge, "==": sp.Eq, "!=": sp.Ne}[e.op](a, b)


def _float(v):
    """A constant (already known to be within float64's range) as a Python float, or None."""
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError):
        return None


def check_power(a, b, loc: Loc) -> None:
    """Refuses a constant power beyond float64's range before it is computed exactly:
    9^9^9 would take the compiler hours, and 2^2000 has no float64."""
    if not (getattr(a, "is_number", False) and getattr(b, "is_number", False)):
        return
    fa, fb = _float(a), _float(b)
    if fa is None or fb is None:
        return
    if fa == 0:
        if fb < 0:
            raise NNError("division by zero: 0 to a negative power", loc)
        return
    if fa < 0 and not sp.sympify(b).is_integer:
        raise NNError("a negative number to a fractional power is not a real number", loc)
    magnitude = fb * math.log10(abs(fa))
    if magnitude > _LOG10_MAX:
        raise NNError(f"this power is too large for a float (about 1e{magnitude:.0f}; the largest is "
                      f"about 1.8e308)", loc)
    if magnitude < _LOG10_MIN - 1:
        raise NNError(f"this power is too small for a float (about 1e{magnitude:.0f}; it would be 0)", loc)


def checked_constant(v, loc: Loc):
    """v, refused with a located error when it is a constant that no float64 holds: a
    division by zero (zoo), an infinity, a complex number (sqrt(-1)), or a huge value."""
    if not isinstance(v, sp.Expr):
        return v
    if not v.is_number:
        # sympy combines the numbers of its operands into the result's coefficients and
        # exponents (z*1e308*10 is z*1e309): those are the new constants to check
        for part in _new_constants(v):
            checked_constant(part, loc)
        return v
    if v.has(sp.zoo, sp.nan):
        raise NNError("this divides by zero", loc)
    if v.has(sp.oo, sp.S.NegativeInfinity):
        raise NNError("this is infinite", loc)
    if v.is_Rational:
        if abs(v.p) > _FLOAT_MAX_INT * v.q:
            raise NNError("this number is too large for a float (the largest is about 1.8e308)", loc)
        return v
    try:
        x = sp.N(v, 20)
        re, im = x.as_real_imag()
        if im != 0:
            raise NNError("this is not a real number (a square root or logarithm of a negative number?)",
                          loc)
        big = abs(re) > FLOAT_MAX
    except (TypeError, ValueError, AttributeError):  # a form sympy cannot evaluate (a Where)
        return v
    if big:
        raise NNError("this number is too large for a float (the largest is about 1.8e308)", loc)
    return v


def _new_constants(v):
    terms = sp.Add.make_args(v) if v.is_Add else (v,)
    for t in terms:
        if t.is_number:
            yield t
        elif t.is_Mul:
            yield t.as_coeff_Mul()[0]
        elif t.is_Pow and t.exp.is_number:
            yield t.exp


def _check_primitive_domain(name: str, arg, loc: Loc) -> None:
    """exp, log and sqrt of a constant outside their domain, in plain words."""
    x = _float(arg) if getattr(arg, "is_number", False) else None
    message = DOMAINS[name](x) if x is not None and name in DOMAINS else None
    if message:
        raise NNError(message, loc)


def inline(op: OpDef, args: list, loc: Loc) -> sp.Expr:
    """The scalar body of an elementwise `op` applied to sympy `args` (options default)."""
    n_tensor = len(op.tensors)
    if len(args) < n_tensor or len(args) > n_tensor + len(op.options):
        raise NNError(f"'{op.name}' takes {n_tensor} to {n_tensor + len(op.options)} arguments, "
                      f"got {len(args)}", loc)
    mapping = {}
    for t, a in zip(op.tensors, args):
        mapping[sp.Symbol(t.name, real=True)] = a
    for o, a in zip(op.options, args[n_tensor:] + [None] * len(op.options)):
        value = a if a is not None else o.default
        if value is None:
            raise NNError(f"'{op.name}' needs a value for '{o.name}'", loc)
        mapping[sp.Symbol(o.name, real=True)] = exact(value)
    return op.body.xreplace(mapping)


# ---- fn and layer definitions ----------------------------------------------------------

def _literal(e, what: str):
    """A default value: number, bool or string."""
    if e is None:
        return None
    if isinstance(e, S.Num):
        return e.value
    if isinstance(e, S.Bool):
        return e.value
    if isinstance(e, S.Str):
        return e.value
    if isinstance(e, S.Neg) and isinstance(e.operand, S.Num):
        return -e.operand.value
    raise NNError(f"the default of {what} must be a number, true/false or a string", e.loc)


def _check_duplicates(names_locs, what):
    seen = {}
    for name, loc in names_locs:
        if name in seen:
            raise NNError(f"'{name}' is declared twice in {what}", loc)
        seen[name] = loc


def define_fn(d: S.FnDef, registry: Registry, builtin=False) -> OpDef:
    _check_duplicates([(p.name, p.loc) for p in d.params], f"fn '{d.name}'")
    indexed = [p for p in d.params if p.indices is not None]
    scope = _Scope(registry, f"fn '{d.name}'")
    if not indexed:
        tensors, options = [], []
        for p in d.params:
            if p.default is None:
                if options:
                    raise NNError(f"argument '{p.name}' without a default follows one with a default", p.loc)
                tensors.append(TensorArg(p.name, None, p.loc))
            else:
                options.append(Option(p.name, _literal(p.default, f"'{p.name}'"), p.loc))
            scope.scalars[p.name] = sp.Symbol(p.name, real=True)
        if not tensors:
            raise NNError(f"fn '{d.name}' needs at least one argument without a default", d.loc)
        body = to_sympy(d.body, scope)
        if body.atoms(sp.Sum, LogSumExp, MaxOver):
            raise NNError(f"fn '{d.name}' sums over an index but its arguments have none; "
                          f"declare them with indices, e.g. {d.name}(a[i])", d.loc)
        return OpDef(d.name, "elementwise", tuple(tensors), tuple(options), (), (), {}, body, d.loc, builtin)
    # a per-sample reduction: indexed arguments, scalar output
    tensors, options = [], []
    size_of_index: dict[str, sp.Symbol] = {}
    for p in d.params:
        if p.indices is not None:
            _check_duplicates([(i, p.loc) for i in p.indices], f"the indices of '{p.name}'")
            shape = []
            for i in p.indices:
                size_of_index.setdefault(i, sp.Symbol(f"n_{i}", integer=True, positive=True))
                shape.append(size_of_index[i])
            tensors.append(TensorArg(p.name, tuple(shape), p.loc))
            scope.tensors[p.name] = (real_base(p.name), tuple(shape))
        else:
            options.append(Option(p.name, _literal(p.default, f"'{p.name}'"), p.loc))
            scope.scalars[p.name] = sp.Symbol(p.name, real=True)
    body = to_sympy(d.body, scope)
    body = body.xreplace({ph: _axis_extent(idx, body, scope, d.loc) for idx, ph in scope.placeholders.items()})
    return OpDef(d.name, "indexed", tuple(tensors), tuple(options), (), (), {}, body, d.loc, builtin)


def define_layer(d: S.LayerDef, registry: Registry, builtin=False) -> OpDef:
    # a param may share its name with a true/false option: `bias=false` drops it
    switches = {p.name for p in d.params if isinstance(p, S.OptionParam) and isinstance(p.default, S.Bool)}
    names = [(p.name, p.loc) for p in d.params] + [(p.name, p.loc) for p in d.decls if p.name not in switches]
    _check_duplicates(names, f"layer '{d.name}'")
    scope = _Scope(registry, f"layer '{d.name}'")
    tensors, options = [], []
    for p in d.params:
        if isinstance(p, S.TensorParam):
            shape = []
            for s in p.shape:
                if isinstance(s, S.Name):
                    sym = scope.scalars.setdefault(s.id, sp.Symbol(s.id, integer=True, positive=True))
                    shape.append(sym)
                elif isinstance(s, S.Num) and isinstance(s.value, int):
                    shape.append(sp.Integer(s.value))
                else:
                    raise NNError("a shape pattern holds size names or whole numbers", s.loc)
            tensors.append(TensorArg(p.name, tuple(shape), p.loc))
            scope.tensors[p.name] = (real_base(p.name), tuple(shape))
        else:
            try:
                default = _literal(p.default, f"'{p.name}'")
            except NNError:  # an expression of earlier options, e.g. stride = kernel
                default = to_sympy(p.default, scope)
            options.append(Option(p.name, default, p.loc))
            scope.scalars.setdefault(p.name, sp.Symbol(p.name, integer=True))
    if not tensors:
        raise NNError(f"layer '{d.name}' needs a tensor argument such as x: [k]", d.loc)
    params = []
    for decl in d.decls:
        shape = tuple(to_sympy(s, scope) for s in decl.shape)
        params.append(ParamSpec(decl.name, shape, decl.init, decl.loc))
        scope.tensors[decl.name] = (real_base(decl.name), shape)
    eq = d.equation
    if eq.name in scope.tensors:
        raise NNError(f"the output '{eq.name}' has the name of an argument or parameter", eq.loc)
    names = []
    for sub_ in eq.indices:
        for n in _names_in(sub_):
            if n in scope.scalars or n in scope.tensors:
                continue
            if n not in names:
                names.append(n)
    out = tuple(index_symbol(i) for i in names)
    scope.indices = dict(zip(names, out))
    out_subs = tuple(to_sympy(s, scope, True) for s in eq.indices)
    for s, node in zip(out_subs, eq.indices):
        if not out and not isinstance(s, sp.Symbol):  # y[1] = ...: a constant has no element to range over
            raise NNError(f"an output subscript of '{eq.name}' needs an index, e.g. {eq.name}[i] = ...", node.loc)
        if not isinstance(s, sp.Symbol) and (not s.is_polynomial(*out) or sp.Poly(s, *out).total_degree() > 1):
            raise NNError("an output subscript is an index or affine in indices, e.g. y[c*h*w + i*w + j]",
                          node.loc)
    if len(set(out_subs)) != len(out_subs):
        raise NNError(f"an output index of '{eq.name}' is repeated", eq.loc)
    body = to_sympy(eq.body, scope)
    declared = {}
    bound = {idx.name: idx for idx in scope.placeholders}
    for ext in eq.extents:
        if ext.index in names:
            declared[index_symbol(ext.index)] = to_sympy(ext.bound, scope)
        elif ext.index in bound:
            declared[bound[ext.index]] = to_sympy(ext.bound, scope)
        else:
            raise NNError(f"'{ext.index}' is not an index of '{eq.name}'", ext.loc)
    extents = {sym: declared.get(sym) or _axis_extent(sym, body, scope, eq.loc) for sym in out}
    body = body.xreplace({ph: declared.get(idx) or _axis_extent(idx, body, scope, eq.loc)
                          for idx, ph in scope.placeholders.items()})
    return OpDef(d.name, "indexed", tuple(tensors), tuple(options), tuple(params), out, extents,
                 body, d.loc, builtin, out_subs if out_subs != out else ())


def _names_in(e):
    """Names used in a syntax expression, in order."""
    if isinstance(e, S.Name):
        yield e.id
    elif isinstance(e, S.Binary):
        yield from _names_in(e.left)
        yield from _names_in(e.right)
    elif isinstance(e, S.Neg):
        yield from _names_in(e.operand)


def _axis_extent(sym, body, scope: _Scope, loc: Loc):
    """The size of the axis that index `sym` reads as a plain subscript."""
    for ind in sorted(body.atoms(sp.Indexed), key=sp.default_sort_key):
        for axis, sub in enumerate(ind.indices):
            if sub == sym:
                return scope.tensors[ind.base.label.name][1][axis]
    # a window's offset, as p in x[i*stride + p], reads as far as the layer's `kernel`
    # option, the convention of conv2d and the pools (PyTorch's kernel_size)
    if "kernel" in scope.scalars and any(
            sub != sym and sub.has(sym) and sub.is_polynomial(sym) and sub.coeff(sym) == 1
            for ind in body.atoms(sp.Indexed) for sub in ind.indices):
        return scope.scalars["kernel"]
    raise NNError(f"the range of index '{sym.name}' is unknown: it is never a plain subscript of an "
                  f"argument or parameter", loc, f"state it with 'for {sym.name} < size'")
