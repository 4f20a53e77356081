"""Element formulas -> Jacobians -> backward index expressions, with sympy.

For every node `y[I] = body` and every tensor or parameter X it reads, the one
rule of back-propagation (a vector-Jacobian product) is

    dX[J] = sum over I of  dy[I] * dy[I]/dX[J]

sympy differentiates `body` with respect to X[J] (Kronecker deltas appear for
index-level derivatives), and `eliminate` removes the deltas by solving each
for a summed index: a plain contraction swaps subscripts (dW[i,j] =
sum_b dy[b,i] x[b,j]), an offset read becomes a shifted read.  No operator has
a gradient of its own anywhere in the compiler.

The batch axis is an index like any other: `b` ranges over the symbolic batch
size `B`, so a parameter's gradient sums over `b` by the same rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import sympy as sp
from sympy.concrete.expr_with_limits import ExprWithLimits

from ..graph import ir
from ..literals import exact
from ..naming import grad_name
from ..ops.symbolic import FirstArgmax, LogSumExp, MaxOver, Where, index_symbol, real_base

B = sp.Symbol("B", integer=True, positive=True)  # the batch size
_ELEMENT_INDEX_NAMES = "ijklmn"


@dataclass(frozen=True)
class Formula:
    """One node's element formula, in the names of this network."""
    out: sp.IndexedBase
    indices: tuple  # the output's subscripts, the batch index first
    body: sp.Expr
    ranges: dict  # index symbol -> extent (int, or B)
    vars: tuple = ()  # the output's index symbols (== indices unless a subscript is affine)

    def __post_init__(self):
        if not self.vars:
            object.__setattr__(self, "vars", self.indices)


@dataclass(frozen=True)
class Gradient:
    """dX[J] for one tensor or parameter X read by a node."""
    wrt: str  # tensor or parameter name
    base: sp.IndexedBase  # X
    indices: tuple  # J
    jacobian: sp.Expr  # dy[I]/dX[J], with Kronecker deltas
    backward: sp.Expr  # dX[J] after delta elimination, in terms of the output where possible
    in_output_terms: bool  # whether the forward output replaced the input
    input_form: sp.Expr = None  # dX[J] before the output replaced the input
    jacobian_indices: tuple = ()  # J as written in `jacobian` (primed where the output's clash)


@dataclass(frozen=True)
class Derivation:
    node: ir.Node
    formula: Formula
    grads: tuple  # Gradient


def batch_index(op_indices, tensors=()) -> sp.Symbol:
    """The batch index's name: b, unless an index or a tensor (which formulas print beside
    it) already has that name."""
    names = {s.name for s in op_indices} | set(tensors)
    for name in ("b", "s", "bb", "batch_", "n_b"):
        if name not in names:
            return index_symbol(name)
    raise AssertionError("no free name for the batch index")


def formula_for(node: ir.Node, g: ir.Graph) -> Formula:
    """Instantiate the node's operator with its tensors, parameters, options and sizes."""
    op = node.op
    out_shape = g.tensors[node.output].shape
    args = [g.tensors[a] for a in node.args]
    if op.kind == "elementwise":
        local = tuple(index_symbol(c) for c in _ELEMENT_INDEX_NAMES[:len(out_shape)])
        b = batch_index(local, g.tensors)
        idx = (b,) + local
        mapping = {sp.Symbol(t.name, real=True): real_base(a.name)[idx] for t, a in zip(op.tensors, args)}
        for o in op.options:
            mapping[sp.Symbol(o.name, real=True)] = exact(node.option_dict[o.name])
        body = op.body.xreplace(mapping)
        ranges = {b: B, **{s: n for s, n in zip(local, out_shape)}}
        return Formula(real_base(node.output), idx, body, ranges)
    # indexed: sizes as the graph bound them, options by value
    env = {pat: sp.Integer(size) for pat, size in node.sizes}
    opts = node.option_dict
    for o in op.options:
        v = opts[o.name]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            env[sp.Symbol(o.name, integer=True)] = exact(v)
    all_indices = set(op.out_indices)
    for ind in op.body.atoms(sp.Indexed):
        all_indices |= {s for s in ind.free_symbols if isinstance(s, sp.Symbol) and s.is_integer}
    b = batch_index(all_indices, g.tensors)
    bases = {real_base(t.name): real_base(a.name) for t, a in zip(op.tensors, args)}
    params = dict(node.params)
    dropped = set()
    for spec in op.params:
        if spec.name in params:
            bases[real_base(spec.name)] = real_base(params[spec.name])
        else:
            dropped.add(real_base(spec.name))
    batched = {real_base(t.name) for t in op.tensors}

    def rename(e):
        if e.base in dropped:
            return sp.Integer(0)
        new = bases[e.base]
        return new[((b,) if e.base in batched else ()) + e.indices]

    # all reads at once: with replace(), a read renamed to a tensor that is also another
    # argument (f(h, h)) would be met again and renamed twice
    # options by name, whatever assumptions their symbol carries (a fn's are real, a layer's
    # integer) -- in the definition's own body, before any read is renamed to a tensor of the
    # network, which may well be called `n` or `stride` too (two scopes)
    values = {o.name: opts[o.name] for o in op.options
              if isinstance(opts[o.name], (int, float)) and not isinstance(opts[o.name], bool)}
    body = op.body.xreplace(env)
    body = body.xreplace({x: exact(values[x.name]) for x in body.free_symbols
                          if isinstance(x, sp.Symbol) and x.name in values})
    body = body.xreplace({e: rename(e) for e in body.atoms(sp.Indexed)})
    ranges = {b: B}
    for s in op.out_indices:
        n = sp.sympify(op.extents[s]).xreplace(env)
        ranges[s] = int(sp.floor(n))
    subs = tuple(sp.sympify(x).xreplace(env) for x in (op.out_subs or op.out_indices))
    return Formula(real_base(node.output), (b,) + subs, body, ranges,
                   (b,) + op.out_indices)


def row_major(sub, syms, ranges, extent):
    """[c, i, j] if sub == c*h*w + i*w + j over their ranges (a flattened axis), else None."""
    coeffs = {x: sub.coeff(x) for x in syms}
    if sp.expand(sub - sum(c * x for x, c in coeffs.items())) != 0:
        return None
    order = sorted(syms, key=lambda x: -int(coeffs[x]) if coeffs[x].is_number else 0)
    stride = 1
    for x in reversed(order):
        if coeffs[x] != stride:
            return None
        stride *= ranges[x]
    return order if stride == extent else None


def output_extents(indices, ranges) -> tuple:
    """The extent of each output axis: an index's range, or an affine subscript's largest
    value + 1."""
    return tuple(ranges[s] if s in ranges else int(_interval(s, ranges)[1]) + 1 for s in indices)


def as_scatter(indices, body, ranges, variables):
    """A formula whose output subscripts are affine in its indices (y[2*i + p] = w[p]*x[i],
    a transposed convolution) as what it means, a scatter-add:

        y[o] = sum over i, p of  w[p]*x[i] * delta(o, 2*i + p)

    so that overlapping contributions add up and positions nothing writes are zero, as
    PyTorch's conv_transpose does.  Returns (indices, body, ranges) over fresh output
    indices, or None when every subscript is a plain index or the subscripts tile their
    axes row-major (flatten): each element then has exactly one term, written in place.
    `variables` are the formula's index symbols (Formula.vars), None for plain subscripts.
    """
    if variables is None or tuple(variables) == tuple(indices):
        return None
    extents = output_extents(indices, ranges)
    plain = [s for s in indices if isinstance(s, sp.Symbol)]
    seen, tiled = set(plain), True
    for s, n in zip(indices, extents):
        if isinstance(s, sp.Symbol):
            continue
        syms = sorted((x for x in s.free_symbols if x in ranges), key=lambda x: x.name)
        if seen & set(syms) or row_major(s, syms, ranges, n) is None:
            tiled = False
        seen |= set(syms)
    if tiled and seen == set(variables):
        return None
    out_ranges = dict(ranges)
    out, deltas = [], []
    for k, (s, n) in enumerate(zip(indices, extents)):
        if isinstance(s, sp.Symbol):
            out.append(s)
            continue
        o = sp.Dummy(f"o{k}", integer=True)
        out_ranges[o] = n
        out.append(o)
        deltas.append(sp.KroneckerDelta(o, s))
    summed = [v for v in variables if v not in plain]
    body = sp.Mul(body, *deltas)  # only constant subscripts (y[0, i]): nothing to sum
    if summed:
        body = sp.Sum(body, *[(v, 0, ranges[v] - 1) for v in summed])
    return tuple(out), body, out_ranges


def derive_node(node: ir.Node, g: ir.Graph, wrt: list[str]) -> Derivation:
    """The backward formulas of `node` with respect to the tensors/params named in `wrt`.

    Each gradient is derived once per distinct formula: the node's tensors and parameters
    are given positional stand-in names (the output `_y`, its reads `_r0`, `_r1`, ...), so
    the twenty identical dense(8) layers of a deep network share one derivation, renamed.
    """
    f = formula_for(node, g)
    sources = [(a, True) for a in node.args] + [(p, False) for _, p in node.params]
    names = [f.out.label.name] + list(dict.fromkeys(n for n, _ in sources))
    stand_in = dict(zip(names, ["_y"] + [f"_r{k}" for k in range(len(names) - 1)]))
    to_stand_in = {real_base(n): real_base(c) for n, c in stand_in.items()}
    to_stand_in[real_base(grad_name(names[0]))] = real_base(grad_name("_y"))
    back = {v: k for k, v in to_stand_in.items()}
    key = (f.indices, f.body.xreplace(to_stand_in), tuple(f.ranges.items()), f.vars)
    grads = []
    seen = set()
    for name, batched in sources:
        if name not in wrt or name in seen:
            continue
        seen.add(name)
        shape = g.tensors[name].shape if batched else g.param(name).shape
        gr = _gradient_of(key, stand_in[name], batched, tuple(shape))
        grads.append(Gradient(name, real_base(name), gr.indices, gr.jacobian.xreplace(back),
                              gr.backward.xreplace(back), gr.in_output_terms,
                              gr.input_form.xreplace(back), gr.jacobian_indices))
    return Derivation(node, f, tuple(grads))


@lru_cache(maxsize=4096)
def _gradient_of(key, name: str, batched: bool, shape: tuple) -> Gradient:
    indices, body, ranges, variables = key
    f = Formula(real_base("_y"), indices, body, dict(ranges), variables)
    return _gradient(f, name, batched, shape)


def _gradient(f: Formula, name: str, batched: bool, shape: tuple) -> Gradient:
    X = real_base(name)
    rank = len(shape) + (1 if batched else 0)
    J = tuple(sp.Dummy(f"J{k}", integer=True) for k in range(rank))
    ranges = dict(f.ranges)
    extents = ((B,) if batched else ()) + tuple(shape)
    ranges.update(dict(zip(J, extents)))
    jac = sp.diff(f.body, X[J])
    dy = real_base(grad_name(f.out.label.name))
    # sum over the output indices of dy[I] * jac (not a sympy Sum: its constructor
    # folds where() out of inner sums, moving bound indices out of scope)
    back = eliminate(dy[f.indices] * jac, ranges, [(s, 0, ranges[s] - 1) for s in f.vars])
    before = back
    back, rewritten = in_output_terms(back, f, X, J)
    back, J2, jac, jac_indices = _readable_indices(back, J, jac, f, X)
    before = before.xreplace(dict(zip(J, J2)))
    return Gradient(name, X, J2, jac, back, rewritten, before, jac_indices)


# ---- delta elimination ---------------------------------------------------------------

def _terms(e, taken: set):
    """e as a list of (factors, limits): a sum of products, each under its own sums.

    Only what holds a Kronecker delta is distributed: the derivative of tanh(tanh(...z))
    is a product of n factors (1 - tanh(...)^2), 2^n terms once multiplied out."""
    if not e.has(sp.KroneckerDelta):
        return [([e], [])]
    if isinstance(e, sp.Add):
        out = []
        for a in e.args:
            out.extend(_terms(a, taken))
        return out
    if isinstance(e, sp.Mul):
        out = [([], [])]
        for a in e.args:
            parts = _terms(a, taken)
            out = [(fa + fb, la + lb) for fa, la in out for fb, lb in parts]
        return out
    if isinstance(e, sp.Sum):
        fn = e.function
        limits = []
        for (v, lo, hi) in e.limits:
            if v in taken:  # the same name bound twice in one product: rename one
                fresh = sp.Dummy(v.name, integer=True)
                fn = fn.xreplace({v: fresh})
                v = fresh
            taken.add(v)
            limits.append((v, lo, hi))
        return [(fs, limits + ls) for fs, ls in _terms(fn, taken)]
    if isinstance(e, Where) and e.has(sp.KroneckerDelta):
        # where(c, A, B) = A [c] + B [not c]: the deltas inside reach the product
        c, a, b = e.args
        out = []
        for value, cond in ((a, c), (b, sp.Not(c))):
            if value != 0:
                out.extend((fs + [_Indicator(cond)], ls) for fs, ls in _terms(value, taken))
        return out
    return [([e], [])]


def _rebind(e, names: set):
    """e with each reduction inside it that binds one of `names` given a fresh index, so
    that solving a delta for a summed index of that name cannot reach inside it.
    FirstArgmax is left alone: its index is by design the open one it is compared with."""
    if e.is_Atom or isinstance(e, sp.Indexed):
        return e
    if isinstance(e, ExprWithLimits) and not isinstance(e, FirstArgmax):
        clash = {lim[0] for lim in e.limits} & names
        if clash:
            e = e.xreplace({v: sp.Dummy(v.name, integer=True) for v in sorted(clash, key=sp.default_sort_key)})
    args = tuple(_rebind(a, names) for a in e.args)
    return e.func(*args) if args != e.args else e


class _Indicator(sp.Function):
    """[cond] as a factor while deltas are eliminated; folded back into where() after."""


def _interval(e, ranges):
    """Bounds [lo, hi] of an affine index expression, or None."""
    e = sp.expand(e)
    lo = hi = sp.Integer(0)
    for term in sp.Add.make_args(e):
        coeff, rest = term.as_coeff_Mul()
        if rest == 1:
            lo += coeff
            hi += coeff
        elif rest in ranges:
            top = ranges[rest] - 1
            lo += min(0, coeff * top, key=_num) if _is_num(top) else (0 if coeff > 0 else coeff * top)
            hi += max(0, coeff * top, key=_num) if _is_num(top) else (coeff * top if coeff > 0 else 0)
        else:
            return None
    return lo, hi


def _is_num(x):
    return sp.sympify(x).is_number


def _num(x):
    return float(x) if sp.sympify(x).is_number else 0.0


def _within(inner, lo, hi) -> bool:
    """Is [inner] certainly inside [lo, hi]?  Symbolic B compares as B."""
    a, b = inner
    return bool(sp.simplify(a - lo) >= 0) and bool(sp.simplify(hi - b) >= 0)


def eliminate(e: sp.Expr, ranges: dict, outer=()) -> sp.Expr:
    """Sum e over `outer`, removing Kronecker deltas by solving each for a summed index.

    This is the one rule of the compiler for every operator."""
    groups: dict = {}
    taken = {v for v, _, _ in outer}
    for factors, limits in _terms(e, taken):
        limits = list(outer) + limits
        factors = [_rebind(f, {v for v, _, _ in limits}) for f in factors]
        bound = {v: (lo, hi) for v, lo, hi in limits}
        order = [v for v, _, _ in limits]
        keep = []
        conds = []
        deltas = [f for f in factors if isinstance(f, sp.KroneckerDelta)]
        rest = [f for f in factors if not isinstance(f, sp.KroneckerDelta)]
        zero = False
        while deltas:
            d = deltas.pop(0)
            diff = sp.expand(d.args[0] - d.args[1])
            if diff == 0:
                continue
            if diff.is_number:
                zero = True
                break
            var = None
            in_diff = [v for v in order if v in bound and diff.has(v)]
            if len(in_diff) > 1 and diff.free_symbols - set(in_diff) - {B}:
                # a window read: x[i*s + p] = X[J] has many solutions; keep the delta,
                # which the lowering turns into one strided add per kernel offset
                keep.append(d)
                continue
            for v in order:
                if v in bound and diff.has(v):
                    c = diff.coeff(v)
                    if c in (1, -1) and not (diff - c * v).has(v):
                        var = v
                        break
            if var is None:
                keep.append(d)
                continue
            sol = sp.solve(diff, var)[0]
            lo, hi = bound.pop(var)
            rest = [f.xreplace({var: sol}) for f in rest]
            deltas = [x.xreplace({var: sol}) for x in deltas]
            keep = [x.xreplace({var: sol}) for x in keep]
            conds = [(c.xreplace({var: sol}), a, z) for c, a, z in conds]
            known = {**ranges, **{v: r[1] + 1 for v, r in bound.items()}}
            span = _interval(sol, known)
            if span is None or not _within(span, lo, hi):
                conds.append((sol, lo, hi))
        if zero:
            continue
        guards = [sp.And(c >= lo, c <= hi) for c, lo, hi in conds]
        guards += [f.args[0] for f in rest if isinstance(f, _Indicator)]
        rest = [f for f in rest if not isinstance(f, _Indicator)]
        term = sp.Mul(*rest, *keep)
        live = [(v, *bound[v]) for v in order if v in bound]
        # a condition on a summed index belongs inside the sum
        inner = [g for g in guards if g.free_symbols & {v for v, _, _ in live}]
        if inner:
            term = Where(sp.And(*inner), term, 0)
        term = sp.Sum(term, *live) if live else term
        key = sp.And(*[g for g in guards if g not in inner])
        groups[key] = groups.get(key, sp.Integer(0)) + term
    return _fold(groups)


def _fold(groups: dict) -> sp.Expr:
    """sum of [cond] * value -> where(cond, value, other) with complementary conditions merged."""
    out = sp.Integer(0)
    done = set()
    for cond, value in groups.items():
        if cond in done:
            continue
        done.add(cond)
        value = sp.factor_terms(value)
        if cond == sp.true:
            out += value
            continue
        other = sp.Not(cond)
        if other in groups and other not in done:
            done.add(other)
            out += Where(cond, value, sp.factor_terms(groups[other]))
        else:
            out += Where(cond, value, 0)
    return out


# ---- writing a derivative in terms of the forward output --------------------------------

def in_output_terms(e: sp.Expr, f: Formula, X, J) -> tuple[sp.Expr, bool]:
    """Replace the forward body by the output y wherever it reappears (tanh' = 1 - y^2)."""
    if f.vars != f.indices or not set(f.indices) <= f.body.free_symbols:
        return e, False  # (a body constant along an output axis would leave its wild unbound)
    wilds = {s: sp.Wild(f"w_{s.name}") for s in f.indices}
    pattern = f.body.xreplace(wilds)
    y = f.out
    new = e
    if not pattern.is_Atom and not isinstance(pattern, sp.Indexed):
        new = e.replace(pattern, y[tuple(wilds[s] for s in f.indices)], exact=False)
    if new != e:
        return new, True
    # a scalar function of one read: invert it (sigmoid: z = log(y / (1 - y)))
    reads = f.body.atoms(sp.Indexed)
    if len(reads) != 1:
        return e, False
    (read,) = reads
    if tuple(read.indices) != tuple(f.indices) or read.base != X:
        return e, False
    z, yv = sp.Symbol("z", real=True), sp.Symbol("y", real=True)
    target = X[J]
    if not e.has(target):
        return e, False
    fz = f.body.xreplace({read: z})
    ez = e.xreplace({target: z, y[J]: yv})
    res = _rewrite_scalar(fz, ez.xreplace(_freeze(ez)), z, yv)
    if res is None:
        return e, False
    res = res.xreplace({v: k for k, v in _freeze(ez).items()})
    return res.xreplace({yv: y[J]}), True


def _freeze(e):
    """Stand-in symbols for indexed reads, so scalar algebra leaves them alone."""
    return {r: sp.Symbol(f"_r{k}", real=True) for k, r in enumerate(sorted(e.atoms(sp.Indexed),
                                                                          key=sp.default_sort_key))}


@lru_cache(maxsize=None)
def _rewrite_scalar(fz, ez, z, yv):
    if fz.has(Where) or fz.has(sp.Abs) or ez.has(Where):
        return None
    # only a chain of simple invertible steps (sigmoid, tanh, exp, softplus, ...): z read
    # once, no powers but reciprocals.  sympy's solve can take minutes on the rest (gelu,
    # tanh(z)^3), and a time limit would make the output depend on the machine's speed
    if sum(1 for x in sp.preorder_traversal(fz) if x == z) != 1 or any(
            p.exp not in (-1, 1) for p in fz.atoms(sp.Pow)):
        return None
    # nor with numbers of many digits (0.7978845608028654 is a fraction of 16-digit
    # integers): solve factors them, and took gigabytes and minutes on exp(tanh(0.1 z + that))
    if any(max(abs(r.p), r.q) > 10 ** 6 for r in (fz.atoms(sp.Rational) | ez.atoms(sp.Rational))):
        return None
    try:
        sols = sp.solve(sp.Eq(yv, fz), z)
    except Exception:  # sympy cannot invert it: keep the input form
        return None
    for inv in sols:
        cand = sp.simplify(ez.xreplace({z: inv}))
        if cand.has(z) or cand.atoms(sp.Function):
            continue
        if any(not p.exp.is_integer for p in cand.atoms(sp.Pow)):
            continue
        return sp.factor(cand)
    return None


def _readable_indices(back, J, jac, f: Formula, X):
    """Name the free gradient indices after X's subscripts in the formula where possible."""
    read = next((r for r in sorted(f.body.atoms(sp.Indexed), key=sp.default_sort_key) if r.base == X), None)
    taken = {s.name for s in back.free_symbols | _bound_symbols(back)}
    names = []
    for k, j in enumerate(J):
        want = None
        if read is not None and k < len(read.indices) and isinstance(read.indices[k], sp.Symbol):
            want = read.indices[k].name
        if want is None or want in taken or want in names:
            want = next(n for n in ("b" if k == 0 else "") + "ijklmnpqrstuvuvw" + "abcdefgh"
                        if n not in taken and n not in names)
        names.append(want)
    new = tuple(index_symbol(n) for n in names)
    sub = dict(zip(J, new))
    # in the Jacobian the output's own indices are in scope too: prime clashing names
    in_jac = {s.name for s in jac.free_symbols | _bound_symbols(jac) if s not in J}
    jac_indices = tuple(index_symbol(n + "'" if n in in_jac else n) for n in names)
    jac = jac.xreplace(dict(zip(J, jac_indices)))
    # bound indices renamed apart during elimination: plain names, so output never
    # depends on how many dummies this process made before
    for d in sorted((s for s in _bound_symbols(back) if isinstance(s, sp.Dummy)), key=lambda s: s.name):
        name = next(f"{d.name}{k}" for k in range(1, 100) if f"{d.name}{k}" not in taken and
                    f"{d.name}{k}" not in names)
        taken.add(name)
        sub[d] = index_symbol(name)
    return back.xreplace(sub), new, jac, jac_indices


def _bound_symbols(e):
    out = set()
    for s in e.atoms(sp.Sum, LogSumExp, MaxOver):
        out |= {lim[0] for lim in s.limits}
    return out


def derive_graph(g: ir.Graph, needs_grad: set) -> tuple:
    """Derivations of every node, in graph order.

    A node whose output does not need a gradient receives none, so it passes none
    on: a branch off the path to the loss contributes nothing to its inputs.
    """
    wrt = sorted(needs_grad)
    return tuple(derive_node(n, g, wrt if n.output in needs_grad else []) for n in g.nodes)
