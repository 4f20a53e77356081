"""Program -> a kernel plan: numpy statements with their formulas.

Each Program statement becomes one line over whole arrays (and a line for each
temporary it needs that is read more than once); nothing is fused or reordered here.

Three kernel families:
  elementwise   a whole expression over one layout, fused into one numpy expression;
  contraction   a sum over products: `@` where the indices form a matrix product,
                tensordot or einsum otherwise, `.sum(axis=...)` for a single operand;
  reduction     logsumexp (stable helper) and max over bound indices.
A read `x[b, i + c]` whose index range differs from the axis is a slice (a view)
or a zero-padded window.  The plan is plain data; templates only lay it out.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

import sympy as sp
from sympy.printing.numpy import NumPyPrinter

from ...autodiff.derive import B, row_major
from ...errors import generating
from ...literals import real_literal
from ...naming import grad_name, temp, var
from ...ops.primitives import lookup
from ...ops.optimizers import LR, T
from ...schedule.program import CLIP, SEED, Program
from . import buffers, common, layout, rewrites
from ...ops.symbolic import Where, ClampedLog, FirstArgmax, LogSumExp, MaxOver, index_symbols, join_signed, read_name, real_base, sum_terms


# the variable holding the loss summed over the batch (a name no user's can be: naming.var)
TOTAL = "_total"
# the scalars a generated function binds, by the names it binds them to
_SCALARS = {SEED: "seed", LR: "lr", T: "step", CLIP: "clip", B: "batch"}


@dataclass(frozen=True)
class Line:
    target: str
    code: str
    comment: str = ""
    # the floating-point errors numpy is not to warn of on this line: "over" where exp
    # overflows to inf on purpose (the sigmoid), all three where np.where evaluates the
    # branch not taken (which may divide by zero)
    quiet: frozenset = frozenset()
    phase: str = "forward"  # "forward" | "backward"
    anchors: tuple = ()  # the derivation steps this line computes
    reads: tuple = ()  # the temporaries (lines of their own) its code reads
    into: bool = False  # the value is written into the array `target` names (an optimizer's update)
    written: str = ""  # `target = code` as lowered, where a later pass changed it (for the comment)


@dataclass
class Kernels:
    """Statements, and the helpers they call."""
    lines: list = field(default_factory=list)
    helpers: set = field(default_factory=set)


class _Printer(NumPyPrinter):
    """numpy code for an elementwise expression laid out over `layout` indices."""

    def __init__(self, lowerer, layout):
        super().__init__({"fully_qualified_modules": False, "allow_unknown_functions": False})
        self.lowerer = lowerer
        self.layout = layout
        self._scalar = False  # printing a scalar formula

    def _module_format(self, fqn, register=True):
        return "np." + fqn.split(".")[-1] if fqn.startswith("numpy.") else fqn

    def _print_Indexed(self, e):
        return self.lowerer.view(e, self.layout)

    def _print_Symbol(self, s):
        if s == B:
            return "batch"
        if s in _SCALARS:
            return _SCALARS[s]
        if s.name in self.lowerer.names:  # a scalar temporary
            return self.lowerer.ref(s.name)
        if s in self.layout:  # an index read as a number (a bounds guard): its positions
            tail = len(self.layout) - 1 - self.layout.index(s)
            n = self.lowerer._extent_code(self.lowerer.ranges[s])
            return f"np.arange({n}, dtype=dtype)" + (f"[:{', None' * tail}]" if tail else "")
        raise NotImplementedError(f"free symbol {s} in a kernel")

    def _print_Add(self, e, order=None):
        low = self.lowerer
        terms = sum_terms(e, lambda t: {read_name(x) for x in t.atoms(sp.Indexed, sp.Symbol)}, low.lse_max, low.lse_log)
        if not isinstance(terms, list):
            if not terms.is_Add:  # 1.5*t1 + 1.5*t2 is the product 1.5*(t1 + t2), not a sum
                return self._print(terms)
            terms = self._as_ordered_terms(terms, order=order)
        texts = [self._print(t) for t in terms]
        if texts[0].startswith("-") and not texts[1].startswith("-"):
            # a - b, not -b + a: one operation fewer, and the same value (x + y is y + x)
            texts[0], texts[1] = texts[1], texts[0]
        return join_signed(texts)

    def _print(self, e, **kwargs):
        # a constant such as sqrt(5) or log(2) as a Python float: numpy's np.sqrt(5) is a
        # float64 scalar, which would turn float32 arrays into float64 ones
        if isinstance(e, sp.Expr) and e.is_number and not e.is_Rational and e.is_finite and e.is_real:
            return real_literal(e)
        if isinstance(e, sp.Basic) and not self._scalar and not e.is_number and e.free_symbols <= set(_SCALARS):
            # ... and so is a formula of the step's scalars (an optimizer's sqrt(1 - beta2^t))
            self._scalar = True
            try:
                code = self._print(e, **kwargs)
            finally:
                self._scalar = False
            return f"float({code})" if "np." in code else code
        if isinstance(e, Where) and e.args[0].free_symbols <= set(_SCALARS) and not e.args[0].has(sp.Indexed):
            # a condition on the step alone (where(t == 1, ...)) decides in Python: one branch computed
            c, a, b = e.args
            return f"({self._print(a)} if {self._print(c)} else {self._print(b)})"
        primitive = lookup(e)
        if primitive is not None:
            if primitive.helper:
                self.lowerer.kernels.helpers.add(primitive.helper)
            self.lowerer.quiet |= primitive.numpy_quiet
            return primitive.numpy.format(*[self._print(a) for a in e.args])
        return super()._print(e, **kwargs)

    def _print_Integer(self, n):
        # beyond 2**53 an int is not what the float arithmetic sees: print the double
        return str(int(n)) if abs(int(n)) <= 2 ** 53 else real_literal(n)

    def _print_Rational(self, r):
        short = _decimal(r)
        if short:
            return short
        return f"{r.p}/{r.q}" if max(abs(r.p), r.q) <= 2 ** 53 else real_literal(r)

    def _print_Half(self, r):
        return "0.5"

    def _print_Mul(self, e):
        c, rest = e.as_coeff_Mul()
        if isinstance(c, sp.Rational) and not c.is_Integer and _decimal(c) and rest != 1:
            sign = "-" if c < 0 else ""
            return f"{sign}{_decimal(abs(c))}*{self.parenthesize(rest, sp.printing.precedence.PRECEDENCE['Mul'])}"
        if c == -1 and rest.is_Mul:
            # -(s - 1)*s*g as (1 - s)*s*g: the sign goes into a sum that takes it without a
            # minus of its own, one pass over the array fewer (negation is exact: same bits)
            factors = list(sp.Mul.make_args(rest))
            for k, f in enumerate(factors):
                if f.is_Add and not self._print(-f).startswith("-"):
                    return super()._print_Mul(sp.Mul(*factors[:k], -f, *factors[k + 1:], evaluate=False))
        return super()._print_Mul(e)

    def _print_Pow(self, e, rational=False):
        base, ex = e.as_base_exp()
        if ex == sp.S.Half:
            return f"np.sqrt({self._print(base)})"
        if ex == -sp.S.Half:
            return f"1/np.sqrt({self._print(base)})"
        if ex.is_Integer and ex < 0:
            inner = self.parenthesize(base, sp.printing.precedence.PRECEDENCE["Pow"]) if ex != -1 else \
                self.parenthesize(base, sp.printing.precedence.PRECEDENCE["Mul"] + 1)
            return f"1/{inner}" if ex == -1 else f"1/{inner}**{-ex}"
        if ex.is_Integer:
            return f"{self.parenthesize(base, sp.printing.precedence.PRECEDENCE['Pow'])}**{ex}"
        return super()._print_Pow(e, rational=rational)

    def _print_Where(self, e):
        c, a, b = e.args
        if b == 0 and self._inside_extent(c, a):
            return self._print(a)
        relu = _relu_argument(c, a, b)
        if relu is not None:  # one pass, and NaN stays NaN, as PyTorch's relu
            return f"np.maximum({self._print(relu)}, 0)"
        if 0 in (a, b) and isinstance(c, sp.Rel) and not (_may_fault(a) or _may_fault(b)):
            # a mask multiply: one pass where np.where takes ten times as long
            value, mask = (a, c) if b == 0 else (b, c.negated)
            if index_symbols(value, self.lowerer.ranges):  # an array, so the product keeps its dtype
                return f"{self.parenthesize(value, sp.printing.precedence.PRECEDENCE['Mul'])}*{self._print(mask)}"
        if _may_fault(a) or _may_fault(b):  # np.where evaluates the branch not taken too
            self.lowerer.quiet |= QUIET_ALL
        code = f"np.where({self._print(c)}, {self._print(a)}, {self._print(b)})"
        if not index_symbols(a, self.lowerer.ranges) and not index_symbols(b, self.lowerer.ranges):
            code += ".astype(dtype)"  # between two numbers np.where gives float64
        return code

    def _inside_extent(self, cond, value) -> bool:
        """Does cond only say that value's one read is inside its array?  Reads outside
        are zeros (the language's padding rule), so the guard of a shifted read (from a
        delta eliminated, d[i - 1] where 0 <= i - 1 <= n - 1) can go."""
        coeff, read = value.as_coeff_Mul()
        if not isinstance(read, sp.Indexed) or read.base.label.name not in self.lowerer.shapes:
            return False
        shape = self.lowerer.shapes[read.base.label.name]
        bounds = set()
        for sub, n in zip(read.indices, shape):
            bounds |= {sub >= 0, sub <= n - 1, 0 <= sub, n - 1 >= sub}
        return all(r in bounds for r in (cond.args if isinstance(cond, sp.And) else (cond,)))

    def _print_KroneckerDelta(self, e):  # left by a constant subscript (a[0]): 1 where equal
        a, b = e.args
        return f"({self._print(a)} == {self._print(b)})"

    def _print_Not(self, e):
        return f"~{self._print(e.args[0])}"

    def _print_IsClass(self, e):
        # the class indices compared with the axis's positions: a boolean array, as the dtype
        c, i = e.args
        return f"np.equal({self._print(c)}, {self._print(i)}).astype(dtype)"

    def _print_Relational(self, r):
        op = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}[r.rel_op]
        return f"({self._print(r.lhs)} {op} {self._print(r.rhs)})"

    def _print_And(self, e):
        return " & ".join(self._print(a) for a in e.args)



def _rebuilt(e, f):
    """e with f applied to its arguments, where it holds a reduction to take out; e itself
    where nothing changes (sympy evaluates a rebuilt node again, and multiplying a number
    into a sum at every level of a deep fused formula took minutes)."""
    if e.is_Atom or isinstance(e, sp.Indexed) or not e.has(sp.Sum, LogSumExp, MaxOver, FirstArgmax):
        return e
    args = [f(a) for a in e.args]
    if all(x is y for x, y in zip(args, e.args)):
        return e
    # a function call rebuilt as it was: evaluating it again asks sympy about its argument
    # (is tanh(tanh(...)) real?), which on a deep fused formula took minutes.  Sums are
    # evaluated, so that x - (max + log-sum) flattens back into x - max - log-sum
    if isinstance(e, sp.Function):
        return e.func(*args, evaluate=False)
    return e.func(*args)


class Lowerer:
    """Turns Program statements into numpy lines for one function body.

    A reduction, scatter or copied patch array becomes a temporary of its own line; one
    that is read exactly once is written where it is read instead, when it is in
    `inline` -- the temporaries a first lowering of the same body found read once
    (`reads`); lowering is deterministic, so the second one makes the same temporaries."""

    def __init__(self, names: dict, shapes: dict, kernels: Kernels, inline=frozenset(), layouts=None):
        self.names = names  # base label -> python variable
        self.shapes = shapes  # base label -> full shape (extents; B for the batch axis)
        self.layouts = layouts or {}  # base label -> its tiled storage (layout.py)
        self.pairs: dict = {}  # a split index's outer part -> (its inner part, the tile size)
        self.kernels = kernels
        self.inline = inline
        self.inline_code: dict = {}  # an inlined temporary -> (its code, the errors it quiets, ...)
        self.temps: list = []  # the temporaries made, in order
        self.reads: Counter = Counter()  # name -> how often the code written so far reads it
        self.too_deep: set = set()  # inlined temporaries that made a line nest too deeply
        self._inlined: set = set()  # ... those read by the current statement
        self._temp_names: set = set()
        self._temps_read: set = set()  # the temporaries read since the last line was written
        self.ranges: dict = {}
        self.cse: dict = {}
        self.im2col: dict = {}  # the code of a copied patches array -> its temporary
        self.quiet = frozenset()
        self.count = 0
        self.lse_max: set = set()  # temporaries holding the max part of a logsumexp
        self.lse_log: set = set()  # ... and its log-sum part
        self._taken = None  # every name a temporary must not take, made on first use

    # ---- statements
    def assign(self, st, comment: str):
        """One Program statement: target[indices] (+)= expr as one numpy line (and the
        lines of its temporaries); a flattening subscript (affine in `variables`) is
        computed over the variables, then reshaped."""
        target, indices, ranges, expr = self.names[st.target], st.indices, st.ranges, st.expr
        flat = None
        if st.variables is not None:
            flat = [self._extent_code(sum(sp.sympify(s).coeff(v) * (ranges[v] - 1) for v in st.variables) + 1)
                    if not isinstance(s, sp.Symbol) else self._extent_code(ranges[s]) for s in indices]
            indices = tuple(st.variables)
        self.ranges = dict(ranges)
        self.quiet = frozenset()
        self._inlined = set()
        split = layout.splits(st, self.layouts, self.shapes) if self.layouts else {}
        if split:
            expr, indices, flat = self._split(st, expr, split)
        if expr.has(sp.KroneckerDelta):
            expr = sp.Add(*[self._scatter(t, indices, None) if t.has(sp.KroneckerDelta) else t
                            for t in sp.Add.make_args(expr)])
        expr = self._hoist(expr, list(indices))
        code = self._elementwise(expr, list(indices))
        whole = read_name(expr) if isinstance(expr, (sp.Indexed, sp.Symbol)) else None
        if whole in self.inline_code and code == _paren(self.inline_code[whole][0]):
            code = self.inline_code[whole][0]  # the line is that one temporary: no brackets
        labels = index_symbols(expr, self.ranges)
        if labels != set(indices):  # a value that does not vary along some axis
            shp = "(" + ", ".join(self._extent_code(self.ranges[s]) for s in indices) + ",)"
            code = f"np.broadcast_to({code}, {shp}).astype(dtype)"
        if flat is not None:
            code = f"{_paren(code)}.reshape({', '.join(flat)})"
        if st.accumulate:
            code = f"{target} + {code}"
        self._line(Line(target, code, comment, self.quiet, anchors=st.anchors))

    def _split(self, st, expr, split):
        """The statement over split indices (i -> s*i_o + i_i, layout.py): its expression,
        the indices it is computed over (a tiled target's storage order), and the reshape
        back to the target's shape when the target is not tiled."""
        parts = {}
        bound = {lim[0]: lim[2] + 1 for r in expr.atoms(sp.Sum) for lim in r.limits}
        for v, s in split.items():
            vo, vi = layout.split_names(v)
            n = self.ranges[v] if v in self.ranges else bound[v]
            self.ranges[vo], self.ranges[vi] = n // s, s
            self.pairs[vo] = (vi, s)
            parts[v] = (vo, vi, s)

        def split_sum(e):
            body, limits = e.function, []
            for v, lo, hi in e.limits:
                if v in parts:
                    vo, vi, s = parts[v]
                    body = body.xreplace({v: s * vo + vi})
                    limits += [(vo, 0, (hi + 1) // s - 1), (vi, 0, s - 1)]
                else:
                    limits.append((v, lo, hi))
            return sp.Sum(body, *limits)

        expr = expr.replace(lambda e: isinstance(e, sp.Sum) and any(lim[0] in parts for lim in e.limits), split_sum)
        expr = expr.xreplace({v: s * vo + vi for v, (vo, vi, s) in parts.items()})
        tiled = self.layouts.get(st.target)
        if tiled is not None:
            indices = [st.indices[k] if part == "" else parts[st.indices[k]][0 if part == "o" else 1]
                       for k, part in tiled.axes]
            flat = None
        else:
            indices = [x for v in st.indices for x in (parts[v][:2] if v in parts else (v,))]
            flat = [self._extent_code(self.ranges[v]) for v in st.indices] if any(v in parts for v in st.indices) \
                else None
        if expr.has(sp.KroneckerDelta):
            expr = _relabelled(expr, indices, self.pairs, self.ranges)
        return expr, tuple(indices), flat

    def _line(self, line: Line):
        if _nesting(line.code) > MAX_NESTING:  # Python's parser has a limit
            self.too_deep |= self._inlined
        self.kernels.lines.append(dataclasses.replace(line, reads=tuple(sorted(self._temps_read))))
        self._temps_read = set()

    def ref(self, name: str) -> str:
        """The code that reads a named value: its variable, or an inlined temporary's code.
        The temporaries read are noted for the line the code goes into (code is made just
        before its line, so what was read since the last line is what that line reads)."""
        self.reads[name] += 1
        if name in self.inline_code:
            code, quiet, reads = self.inline_code[name]
            self.quiet |= quiet
            self._inlined.add(name)
            self._temps_read |= reads
            return _paren(code)
        if name in self._temp_names:
            self._temps_read.add(name)
        return self.names[name]

    def _extent_code(self, n):
        return "batch" if n == B else str(n)

    # ---- reductions become temporaries
    def _hoist(self, e, order):
        if isinstance(e, FirstArgmax):
            vs = [lim[0] for lim in e.limits]
            for lim in e.limits:
                self.ranges[lim[0]] = lim[2] + 1
            body = self._hoist(e.function, order)
            labels = [s for s in order if s in index_symbols(body, self.ranges)]
            labels += [v for v in vs if v not in labels]
            axes = tuple(labels.index(v) for v in vs)
            self.kernels.helpers.add("first_argmax")
            code = f"_first_argmax({self._elementwise(body, labels)}, {axes})"
            return self._temp(code, labels)
        if isinstance(e, (sp.Sum, LogSumExp, MaxOver)):
            vs = [lim[0] for lim in e.limits]
            for lim in e.limits:
                self.ranges[lim[0]] = lim[2] + 1
            body = self._hoist(e.function, order + vs)
            free = [s for s in order if s in index_symbols(e, self.ranges)]
            return self._reduce(type(e), body, vs, free, order + vs)
        return _rebuilt(e, lambda a: self._hoist(a, order))

    def _reduce(self, kind, body, vs, free, order):
        # the extents too: avgpool2d(1) and avgpool2d(2) sum the same body over p, q < 1 and < 2
        key = (kind, body, tuple(vs), tuple(free), tuple(self.ranges[v] for v in (*vs, *free)))
        if key in self.cse:
            return self.cse[key]
        if kind is sp.Sum:
            code, labels = self._sum(body, vs, free, order)
            ref = self._temp(code, labels)
        else:
            labels = [s for s in order if s in index_symbols(body, self.ranges)]
            if isinstance(body, sp.Indexed) and body.base.label.name in self.layouts:
                labels = self._tiled(body, self.layouts[body.base.label.name]) or labels  # as it lies
            axes = _axes(tuple(labels.index(v) for v in vs if v in labels))
            out = [s for s in labels if s not in vs]
            if kind is MaxOver:
                self.kernels.helpers.add("max_over")
                where = tuple(labels.index(v) for v in vs if v in labels)
                ref = self._temp(f"_max_over({self._elementwise(body, labels)}, {where})", out)
            else:
                ref = self._temp(f"{_paren(self._elementwise(body, labels))}.max(axis={axes})", out)
            if kind is LogSumExp:
                # kept as max + log(sum exp(f - max)), the two parts apart, so x - logsumexp
                # is evaluated as (x - max) - log(...): no rounding to the spacing of max
                self.lse_max.add(read_name(ref))  # first: f - max printed as x - max - log(...) begins
                shifted = self._elementwise(body - ref, labels)
                log_sum = self._temp(f"np.log(np.exp({shifted}).sum(axis={axes}))", out)
                self.lse_log.add(read_name(log_sum))
                ref = ref + log_sum
        self.cse[key] = ref
        return ref

    def _temp_name(self, code) -> str:
        """A fresh temporary t<k> (none a user's tensor t3, say), assigned code in a line of its
        own unless it is to be inlined."""
        if self._taken is None:  # a set: a deep network has thousands of names to avoid
            self._taken = set(self.names) | set(self.names.values())
        name = temp(self.count)
        self.count += 1
        while name in self._taken or name in self.names:
            name = temp(self.count)
            self.count += 1
        self._temp_names.add(name)
        if name in self.inline:
            self.inline_code[name] = (code, self.quiet, frozenset(self._temps_read))
            self._temps_read = set()
            self._inlined.add(name)
        else:
            self._line(Line(name, code, quiet=self.quiet))
        self.names[name] = name
        self._taken.add(name)
        self.temps.append(name)
        return name

    def _temp(self, code, labels):
        """A new temporary holding code, read back as temp[labels] (a Symbol when it is a scalar)."""
        name = self._temp_name(code)
        self.shapes[name] = tuple(self.ranges[s] for s in labels)
        return real_base(name)[tuple(labels)] if labels else sp.Symbol(name)

    def _scatter(self, term, indices, shape):
        """sum_V G * delta(s*i + p + c, J): G summed into place, one strided add per offset p."""
        coeff, term = term.as_independent(sp.KroneckerDelta, as_Add=False)
        limits = list(term.limits) if isinstance(term, sp.Sum) else []
        body = coeff * (term.function if isinstance(term, sp.Sum) else term)
        for v, lo, hi in limits:
            self.ranges[v] = hi + 1
        deltas = [f for f in sp.Mul.make_args(body) if isinstance(f, sp.KroneckerDelta)]
        rest = sp.Mul(*[f for f in sp.Mul.make_args(body) if not isinstance(f, sp.KroneckerDelta)])
        where = {}
        for d in deltas:
            a, b = d.args
            target, read = (a, b) if a in indices else (b, a)
            if target not in indices or target in where:
                raise NotImplementedError(f"a scatter through {d}")
            where[target] = read
        tiles = {j: row_major(read, sorted((x for x in read.free_symbols if x in self.ranges),
                                            key=lambda x: x.name), self.ranges, self.ranges[j])
                 for j, read in where.items()}
        if all(t is not None and len(t) > 1 for t in tiles.values()):
            return self._untile(rest, limits, indices, tiles)
        layout, windows, kernel, used = [], [], [], set()
        for axis, j in enumerate(indices):
            if j not in where:
                layout.append(j)
                continue
            syms = sorted((x for x in where[j].free_symbols if x in self.ranges), key=lambda x: x.name)
            if not syms:  # a constant position (a[0]): a window of one element, once
                outer, inner = sp.Dummy("once"), sp.Dummy("unit")
                self.ranges[outer] = self.ranges[inner] = 1
                stride, dilation, start = 1, 1, int(where[j])
            elif len(syms) == 1:  # s*i + c: a window of one element
                outer, stride, start = _split_affine(where[j], self.ranges)
                inner, dilation = sp.Dummy("unit"), 1
                self.ranges[inner] = 1
            else:
                outer, inner, stride, dilation, start = _window_parts(where[j], syms, self.ranges)
            layout.append(outer)
            kernel.append(inner)
            used |= {outer, inner}
            windows.append(_window_spec(axis, start, stride, self.ranges[outer], self.ranges[inner], dilation))
        # _unpatches adds kernel offset by offset with the batch innermost: G computed in that
        # order ([offsets, other axes, batch]) is then read as it lies, not copied first
        batch = [x for x in layout if self.ranges.get(x) == B]
        memory = kernel + [x for x in layout if x not in batch] + batch
        layout += kernel
        code = self._scattered(rest, limits, used, memory)
        if memory != layout:
            code = _align(code, memory, layout)
        out = ", ".join(self._extent_code(self.ranges[j]) for j in indices)
        self.kernels.helpers.add("unpatches")
        return self._temp(f"_unpatches({code}, ({out},), {tuple(windows)})", list(indices))

    def _untile(self, rest, limits, indices, tiles):
        """A scatter whose every target index is a row-major pair (s*i + p, p < s: windows
        that tile the axis, as a pool with stride = kernel): each element lands in exactly
        one place, so the scatter is a reshape of G laid out [.., i, p, ..]."""
        layout = [x for j in indices for x in (tiles[j] if j in tiles else [j])]
        code = self._scattered(rest, limits, {x for t in tiles.values() for x in t}, layout)
        out = ", ".join(self._extent_code(self.ranges[j]) for j in indices)
        return self._temp(f"{_paren(code)}.reshape({out})", list(indices))

    def _scattered(self, rest, limits, used, layout) -> str:
        """Code for G, the values a scatter sends, over `layout`: the factors left once the
        deltas are gone, summed over the bound indices no delta uses, at full extent."""
        other = [(v, lo, hi) for v, lo, hi in limits if v not in used]
        g = self._hoist(sp.Sum(rest, *other) if other else rest, layout)
        code = self._elementwise(g, layout)
        if index_symbols(g, self.ranges) != set(layout):
            dims = ", ".join(self._extent_code(self.ranges[x]) for x in layout)
            code = f"np.broadcast_to({code}, ({dims},))"
        return code

    def _sum(self, body, vs, free, order):
        coeff, groups = sp.Integer(1), {}
        for f in sp.Mul.make_args(body):
            labels = frozenset(index_symbols(f, self.ranges))
            if not labels:
                coeff *= f
            else:
                groups.setdefault(labels, []).append(f)
        # a summed index that no factor reads multiplies by its extent
        for v in vs:
            if not any(v in g for g in groups):
                coeff *= self.ranges[v]
        if not groups:  # nothing varies with the summed indices (0, or a constant)
            return self._elementwise(coeff, []), []
        ops = []
        for labels, fs in groups.items():
            if len(fs) == 1 and isinstance(fs[0], sp.Indexed):
                code, lay = self.natural(fs[0], contract=True)  # its own axis order: no transpose
                if len(set(lay)) == len(lay):
                    ops.append((lay, code))
                    continue
            lay = [s for s in order if s in labels]
            ops.append((lay, self._elementwise(sp.Mul(*fs), lay)))
        out = [s for s in free if any(s in lay for lay, _ in ops)]
        if len(ops) == 1:
            lay, code = ops[0]
            axes = tuple(lay.index(v) for v in vs if v in lay)
            code = f"{_paren(code)}.sum(axis={_axes(axes)})" if axes else code
            out = [s for s in lay if s not in vs]  # a read keeps its own axis order
        elif len(ops) == 2:
            code = self._contract2(ops[0], ops[1], out, vs)
        else:
            code = self._einsum(ops, out)
        if coeff != 1:
            code = f"{self._elementwise(coeff, [])} * {_paren(code)}"
        return code, out

    def _contract2(self, a, b, out, vs):
        (la, ca), (lb, cb) = a, b
        shared = [s for s in la if s in lb]
        contracted = [s for s in shared if s not in out]
        only = [s for s in la + lb if s not in out and s not in shared]
        if not contracted or any(s in out for s in shared) or only:
            return self._einsum([a, b], out)
        if len(la) == 2 and len(lb) == 2 and len(contracted) == 1 and len(out) == 2:
            c = contracted[0]
            if out[0] not in la:
                (la, ca), (lb, cb) = (lb, cb), (la, ca)
            left = ca if la == [out[0], c] else f"{_paren(ca)}.T"
            right = cb if lb == [c, out[1]] else f"{_paren(cb)}.T"
            return f"{_paren(left)} @ {_paren(right)}"
        if len(contracted) == 1 and len(la) + len(lb) - 2 == len(out) <= 2 and (len(la) == 1 or len(lb) == 1):
            c = contracted[0]
            if len(la) == 2 and la[1] == c:
                return f"{_paren(ca)} @ {_paren(cb)}"
            if len(lb) == 2 and lb[0] == c:
                return f"{_paren(ca)} @ {_paren(cb)}"
        return self._tensordot(a, b, contracted, out)

    def _tensordot(self, a, b, contracted, out):
        """np.tensordot laid out to copy least.  tensordot reshapes its first operand to
        [free, contracted] and its second to [contracted, free], copying either one whose
        axes do not already lie so; its result is [first's free, second's free], which a
        reader copies unless that is `out`.  Every operand order, contracted order and free
        order is costed by the elements copied, and the cheapest kept (the first of equals)."""
        def size(labels):
            n = 1
            for s in labels:
                n *= _num(self.ranges[s]) if self.ranges[s] != B else 64
            return n

        best = None
        for (lf, cf), (ls, cs) in ((a, b), (b, a)):
            ff = [s for s in lf if s not in contracted]
            fs = [s for s in ls if s not in contracted]
            for order in ([s for s in lf if s in contracted], [s for s in ls if s in contracted]):
                for free_f in (ff, [s for s in out if s in ff]):
                    for free_s in (fs, [s for s in out if s in fs]):
                        first, second = free_f + order, order + free_s
                        cost = (size(lf) if lf != first else 0) + (size(ls) if ls != second else 0) + \
                            (size(out) if free_f + free_s != out else 0)
                        if best is None or cost < best[0]:
                            best = (cost, lf, cf, ls, cs, free_f, free_s, order)
        _, lf, cf, ls, cs, free_f, free_s, order = best
        # an operand whose free axes are to be reordered is transposed first (a view; tensordot
        # copies it once either way)
        if free_f != [s for s in lf if s not in order]:
            cf, lf = _align(cf, lf, free_f + order), free_f + order
        if free_s != [s for s in ls if s not in order]:
            cs, ls = _align(cs, ls, order + free_s), order + free_s
        pa = [lf.index(c) for c in order]
        pb = [ls.index(c) for c in order]
        res = free_f + free_s
        code = f"np.tensordot({cf}, {cs}, axes=({pa}, {pb}))"
        if res != out:
            code = f"{code}.transpose({tuple(res.index(s) for s in out)})"
        return code

    def _einsum(self, ops, out):
        letters = {}
        for lay, _ in ops:
            for s in lay:
                letters.setdefault(s, "abcdefghijklmnopqrstuvwxyz"[len(letters)])
        spec = ",".join("".join(letters[s] for s in lay) for lay, _ in ops)
        spec += "->" + "".join(letters[s] for s in out)
        args = ", ".join(code for _, code in ops)
        return f"np.einsum(\"{spec}\", {args}, optimize=True)"

    # ---- elementwise expressions and array views
    def _elementwise(self, e, layout):
        return _Printer(self, layout).doprint(e)

    def view(self, e: sp.Indexed, layout) -> str:
        code, labels = self.natural(e)
        return _align(code, labels, layout)

    def natural(self, e: sp.Indexed, contract: bool = False):
        """Code for a read and the index of each of its axes, in the array's own order.

        Each subscript is one of
          i                 the axis itself;
          i + c             a slice (a view), or a zero-padded window where it leaves the axis;
          c*h*w + i*w + j   a row-major flattening: a reshape;
          s*i + p + c       a sliding window (im2col): the kernel index p becomes a trailing axis.
        """
        name = e.base.label.name
        code = self.ref(name)
        shape = self.shapes[name]
        tiled = self.layouts.get(name)
        if tiled is not None:
            labels = self._tiled(e, tiled)
            if labels is not None:  # read as it lies
                return code, labels
            # any other read sees the logical order, through a copy
            extents = ", ".join(self._extent_code(n) for n in shape)
            code = f"{_paren(code)}.transpose({tuple(tiled.logical_order())}).reshape({extents})"
        labels, slices, dims, windows, kernel, outers = [], [], [], [], [], []
        composites = {}  # a window position over a split index -> (outer, inner, tile size)
        extra = 0  # axes added before this one by flattened subscripts being unflattened
        gone = 0  # ... and taken away by constant subscripts
        for axis, sub in enumerate(e.indices):
            syms = sorted((x for x in sub.free_symbols if x in self.ranges), key=lambda x: x.name)
            if not syms and sub.is_Integer and 0 <= int(sub) < shape[axis]:  # a[0]: the axis goes
                slices.append(str(int(sub)))
                gone += 1
                continue
            if len(syms) == 1:
                sym, stride, offset = _split_affine(sub, self.ranges)
                size = self.ranges[sym]
                labels.append(sym)
                dims.append(size)
                last = offset + stride * (size - 1)
                if offset == 0 and stride == 1 and size == shape[axis]:
                    slices.append(None)
                elif 0 <= offset and sp.simplify(last - shape[axis]) < 0 and stride > 0:
                    slices.append(f"{offset}:{last + 1}" + (f":{stride}" if stride != 1 else ""))
                elif stride < 0 and 0 <= last and sp.simplify(offset - shape[axis]) < 0:  # read backwards
                    slices.append(f"{offset}:{last - 1 if last > 0 else ''}:{stride}")
                else:  # a window reaching past the ends, forwards or backwards: zeros there
                    self.kernels.helpers.add("window")
                    code = f"_window({code}, {axis}, {offset}, {size}" + (f", {stride})" if stride != 1 else ")")
                    slices.append(None)
                continue
            flat = row_major(sub, syms, self.ranges, shape[axis])
            if flat is not None:
                labels.extend(flat)
                dims.extend(self.ranges[x] for x in flat)
                slices.append(None)
                extra += len(flat) - 1
                continue
            composite = None
            if len(syms) > 2:  # s*i_o + i_i + p: a window whose position is a split index
                sub, syms, composite = self._merged(sub, syms)
            outer, inner, stride, dilation, start = _window_parts(sub, syms, self.ranges)
            if composite is not None:
                composites[outer] = composite
            labels.append(outer)
            outers.append(outer)
            dims.append(shape[axis])
            slices.append(None)
            windows.append(_window_spec(axis + extra - gone, start, stride, self.ranges[outer],
                                        self.ranges[inner], dilation))
            kernel.append(inner)
        if any(slices):
            code = f"{code}[{', '.join(s or ':' for s in slices)}]"
        if extra:
            code = f"{code}.reshape({', '.join(self._extent_code(n) for n in dims)})"
        if len(set(labels)) != len(labels):
            raise NotImplementedError(f"{e}: an index read twice in one subscript (a diagonal)")
        if windows:
            labels.extend(kernel)
            splits = tuple((labels.index(w), s) for w, (_, _, s) in composites.items())
            inner = [composites[w][1] for w in outers if w in composites]
            outers = [composites[w][0] if w in composites else w for w in outers]
            labels = [x for w in labels for x in (composites[w][:2] if w in composites else (w,))]
            if contract:
                return self._im2col(code, tuple(windows), labels, outers, kernel, splits, inner)
            self.kernels.helpers.add("patches")
            code = f"_patches({code}, {tuple(windows)})"
            if splits:
                code = f"{code}.reshape({', '.join(self._extent_code(self.ranges[x]) for x in labels)})"
        return code, labels

    def _tiled(self, e: sp.Indexed, tiled):
        """The storage-order indices of a read of a tiled array, if each subscript is what
        the storage holds there: a plain index, or s*outer + inner on a tiled axis."""
        shape, factors, parts = self.shapes[e.base.label.name], dict(tiled.factors), {}
        for k, sub in enumerate(e.indices):
            if k in factors:
                syms = sorted((x for x in sub.free_symbols if x in self.ranges), key=lambda x: x.name)
                order = row_major(sub, syms, self.ranges, shape[k]) if len(syms) == 2 else None
                if order is None or self.ranges[order[1]] != factors[k]:
                    return None
                parts[k, "o"], parts[k, "i"] = order
            elif isinstance(sub, sp.Symbol) and self.ranges.get(sub) == shape[k]:
                parts[k, ""] = sub
            else:
                return None
        labels = [parts[a] for a in tiled.axes]
        return labels if len(set(labels)) == len(labels) else None

    def _merged(self, sub, syms):
        """sub with a split index's two parts s*i_o + i_i as one position w over their
        whole range: (sub in w, its symbols, (i_o, i_i, s))."""
        for vo in syms:
            vi, s = self.pairs.get(vo, (None, None))
            if vi in syms and sub.coeff(vo) == s * sub.coeff(vi):
                c = sub.coeff(vi)
                w = sp.Symbol(f"{vo.name}|{vi.name}", integer=True)
                self.ranges[w] = self.ranges[vo] * s
                rest = [x for x in syms if x not in (vo, vi)]
                return sp.expand(sub - c * (s * vo + vi) + c * w), sorted(rest + [w], key=lambda x: x.name), (vo, vi, s)
        raise NotImplementedError(f"subscript {sub} reads more than a window")

    def _im2col(self, code, windows, labels, outers, kernel, splits=(), inner=()):
        """Patches read by a contraction, gathered once (one np.take through a cached index)
        into [other axes, kernel offsets, batch, window positions]: the conv's sum over
        (channels, offsets) and its weight gradient's sum over (batch, positions) then read
        it as a matrix, each the way round that np.tensordot takes without a copy; a second
        read of the same patches (forward and weight gradient) reuses the gather."""
        batch = [x for x in labels if self.ranges.get(x) == B]
        order = [x for x in labels if x not in kernel and x not in outers and x not in batch and x not in inner] + \
            list(kernel) + list(inner) + batch + list(outers)
        perm = tuple(labels.index(x) for x in order)
        self.kernels.helpers.add("im2col")
        code = f"_im2col({code}, {windows}, {perm}" + (f", {splits})" if splits else ")")
        if code not in self.im2col:
            self.im2col[code] = self._temp_name(code)
            self.shapes[self.im2col[code]] = tuple(self.ranges[x] for x in order)
        return self.ref(self.im2col[code]), order


def _align(code, labels, layout) -> str:
    """Transpose and add unit axes so an array with `labels` broadcasts over `layout`."""
    pos = [layout.index(s) for s in labels]
    perm = sorted(range(len(pos)), key=lambda k: pos[k])
    if perm != list(range(len(pos))):
        code = f"{_paren(code)}.T" if len(pos) == 2 else f"{_paren(code)}.transpose({tuple(perm)})"
    pos = sorted(pos)
    if pos:
        tail = layout[pos[0]:]
        present = {layout[p] for p in pos}
        if any(s not in present for s in tail):
            code = f"{_paren(code)}[{', '.join(':' if s in present else 'None' for s in tail)}]"
    return code


def _relabelled(expr, indices, pairs, ranges):
    """A scatter onto split indices, each delta(s*k_o + k_i, s*i + p) taken apart into
    delta(k_o, i)*delta(k_i, p) (both sides tile the axis the same way); then each delta
    pairing an index written with one summed over the same range is gone, that summed
    index renamed: a pool's backward pass onto its tiled operand is a relabelling."""
    ranges = {**ranges, **{lim[0]: lim[2] + 1 for r in expr.atoms(sp.Sum) for lim in r.limits}}

    def apart(d):
        a, b = d.args
        for x, y in ((a, b), (b, a)):
            for ko, (ki, s) in pairs.items():
                if ko in indices and ki in indices and sp.expand(x - (s * ko + ki)) == 0:
                    syms = sorted((v for v in y.free_symbols if v in ranges), key=lambda v: v.name)
                    got = _row_major_pair(y, syms, ranges, s, ranges[ko] * s)
                    if got is not None:
                        return sp.KroneckerDelta(ko, got[0]) * sp.KroneckerDelta(ki, got[1])
        return d

    def eliminate(term):
        if not isinstance(term, sp.Sum):
            return term
        body, limits = term.function, list(term.limits)
        for d in [f for f in sp.Mul.make_args(body) if isinstance(f, sp.KroneckerDelta)]:
            a, b = d.args
            for written, summed in ((a, b), (b, a)):
                lim = next((x for x in limits if x[0] == summed), None)
                if written in indices and lim is not None and lim[1] == 0 and lim[2] + 1 == ranges.get(written):
                    body = (body / d).xreplace({summed: written})
                    limits.remove(lim)
                    break
        return sp.Sum(body, *limits) if limits else body

    expr = expr.replace(lambda e: isinstance(e, sp.KroneckerDelta), apart)
    return sp.Add(*[eliminate(t) for t in sp.Add.make_args(expr)])


def _row_major_pair(sub, syms, ranges, s, extent):
    """(outer, inner) if sub == s*outer + inner, inner < s, over `extent` positions."""
    if len(syms) != 2:
        return None
    order = row_major(sub, syms, ranges, extent)
    return tuple(order) if order is not None and ranges[order[1]] == s else None


def _window_parts(sub, syms, ranges):
    """(outer, kernel, stride, dilation, start) for
    sub == stride*outer + dilation*kernel + start."""
    if len(syms) != 2:
        raise NotImplementedError(f"subscript {sub} reads more than a window")
    sub = sp.expand(sub)
    if any(not sub.coeff(x).is_Integer or sub.coeff(x) == 0 for x in syms):
        raise NotImplementedError(f"subscript {sub}")
    # the kernel index: one read at unit steps if there is one, then the shorter range,
    # then the index bound last (a summed one)
    ones = [x for x in syms if sub.coeff(x) == 1] or list(syms)
    order = list(ranges)
    inner = min(ones, key=lambda x: (_num(ranges[x]), -order.index(x)))
    outer = next(x for x in syms if x != inner)
    start = sp.expand(sub - sub.coeff(outer) * outer - sub.coeff(inner) * inner)
    if start.free_symbols:
        raise NotImplementedError(f"subscript {sub}")
    return outer, inner, int(sub.coeff(outer)), int(sub.coeff(inner)), int(start)


def _window_spec(axis, start, stride, n, k, dilation) -> tuple:
    """A window as the runtime helpers take it: dilation only when it is not 1."""
    return (axis, start, stride, n, k) + ((dilation,) if dilation != 1 else ())


def _num(x):
    return float(x) if sp.sympify(x).is_number else float("inf")


def _relu_argument(c, a, b):
    """x if where(c, a, b) is max(x, 0): where(x > 0, x, 0), where(x <= 0, 0, x) and the like."""
    if not isinstance(c, sp.Rel) or c.rhs != 0:
        return None
    if isinstance(c, (sp.StrictGreaterThan, sp.GreaterThan)) and a == c.lhs and b == 0:
        return a
    if isinstance(c, (sp.StrictLessThan, sp.LessThan)) and b == c.lhs and a == 0:
        return b
    return None


def _may_fault(e) -> bool:
    """Can evaluating e divide by zero, overflow or take the log of a non-positive number?"""
    return bool(e.atoms(sp.log, sp.exp, ClampedLog)) or any(
        p.exp.is_negative or not p.exp.is_integer for p in e.atoms(sp.Pow))


def _decimal(r) -> str | None:
    """A short exact decimal for r (0.5, 0.01), or None."""
    f = real_literal(r)
    return f if sp.Rational(f) == r and len(f) < 12 else None


QUIET_ALL = frozenset({"divide", "invalid", "over"})
MAX_NESTING = 40  # brackets in one generated line; CPython refuses more than 200


def _nesting(code: str) -> int:
    depth = top = 0
    for ch in code:
        if ch in "([{":
            depth += 1
            top = max(top, depth)
        elif ch in ")]}":
            depth -= 1
    return top


def _split_affine(sub, ranges):
    """s*i + c -> (i, s, c) for an index symbol i and integers s != 0 and c."""
    syms = [s for s in sub.free_symbols if s in ranges]
    if len(syms) != 1:
        raise NotImplementedError(f"subscript {sub} needs window lowering")
    (s,) = syms
    stride = sp.expand(sub).coeff(s)
    rest = sp.expand(sub - stride * s)
    if rest.free_symbols or not stride.is_Integer or stride == 0:
        raise NotImplementedError(f"subscript {sub} needs window lowering")
    return s, int(stride), int(rest)


def _axes(axes):
    return str(axes[0]) if len(axes) == 1 else str(tuple(axes))


def _paren(code: str) -> str:
    """Parenthesize code unless it is a name, a call or an attribute chain."""
    depth = 0
    for ch in code:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0 and ch in " +-*/@<>=&|":
            return f"({code})"
    return code


# ---- the whole graph -----------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    name: str
    source: str
    inputs: tuple  # (name, var, shape)
    targets: tuple
    params: tuple  # (name, var, shape, init)
    forward: tuple  # Line, computing the output
    output: str  # its variable
    loss_forward: tuple  # Line, computing everything the loss needs
    loss_value: str  # code for the scalar loss
    backward: tuple  # Line
    grads: tuple  # (param name, variable)
    updates: tuple  # (param variable, gradient variable): what sgd_step adds in place
    loss_seed: str  # code for the seed's value in loss_and_grad
    step_seed: str  # ... and in sgd_step, where the gradients come out as -lr times themselves
    helpers: tuple  # helper function names, sorted
    derivations: tuple = ()
    # function -> (its lines writing into kept buffers, those buffers: (shape, boolean?), the
    # numbers it reads as arrays);
    # loss_and_grad's and sgd_step's lines are (loss lines, backward lines)
    bodies: dict = None
    optimizer: object = None  # ops.optimizers.Rule: train_step's
    states: tuple = ()  # (state array, variable, parameter, state name)
    update: tuple = ()  # Line: train_step's optimizer updates, each `into` its array
    input_grads: tuple = ()  # (input name, variable of its gradient), when input_grad is made


def plan(program: Program) -> Plan:
    """The numpy rendering of a Program: one line per statement and per temporary."""
    g = program.graph
    shapes = program.shapes
    names = {t: var(t) for t in g.tensors}
    names.update({p.name: var(p.name) for p in g.params})
    for t in list(shapes):
        names[grad_name(t)] = grad_name(t)
    helpers = set()
    # what a function takes or hands back keeps its logical layout
    fixed = {t.name for t in g.inputs} | {t.name for t in g.targets} | {g.output, g.loss}
    fixed |= {p.name for p in g.params} | {grad_name(p.name) for p in g.params}
    states = program.states or {}
    names.update({a: var(a) for a in states})
    fixed |= set(states) | {grad_name(t.name) for t in g.inputs}

    def lower(*bodies) -> list:
        """The lines of consecutive statement lists, lowered as one function body."""
        inline = None
        tiled = layout.plan([st for statements in bodies for st in statements], shapes, fixed)
        while True:
            kernels = Kernels()
            low = Lowerer(dict(names), dict(shapes), kernels, inline or frozenset(), tiled)
            out = []
            for statements in bodies:
                start = len(kernels.lines)
                for st in statements:
                    with generating(st.node, st.fused):
                        low.assign(st, "\n".join(_comment(n) for n in st.notes))
                out.append(kernels.lines[start:])
            if inline is None:  # the first lowering counts the reads of each temporary
                inline = frozenset(t for t in low.temps if low.reads[t] == 1)
                if inline:
                    continue
            elif low.too_deep:
                inline -= low.too_deep
                continue
            helpers.update(kernels.helpers)
            # every named array's shape, for the buffers (the batch axis None)
            known = {low.names[label]: _buffer_shape(tiled[label].extents(shape) if label in tiled else shape)
                     for label, shape in low.shapes.items() if label in low.names}
            return out, {n: s for n, s in known.items() if s is not None}

    (forward,), forward_shapes = lower(program.forward)
    (loss_forward, backward), shapes_ = lower(program.loss, program.backward)
    for p in program.zero_grads:
        backward.append(Line(grad_name(p), f"np.zeros_like({names[p]})", f"{p} does not affect the loss"))
    backward, routed = rewrites.routed(backward, shapes_, loss_forward)
    if routed:
        helpers.add("route_max")
    loss_var = names[g.loss]
    loss_forward, total = rewrites.total_line(loss_var, TOTAL, loss_forward, shapes_)
    # in double precision from the total on (the total, a sum in the dtype, is what rounds)
    loss_value = total + (" / batch" if g.reduce == "mean" else "")
    grads = tuple((p.name, grad_name(p.name)) for p in g.params)
    updates = tuple((names[p.name], grad_name(p.name)) for p in g.params if p.name not in program.zero_grads)
    (update,), update_shapes = lower(program.update)
    written = {names[p.name] for p in g.params} | {names[a] for a in states}
    update = [dataclasses.replace(x, into=True) if x.target in written else x for x in update]

    def body(parts, shapes, returned, kept):
        """(the parts' lines, buffers, constants) of one function body made of consecutive parts."""
        parts, shapes = common.hoist([list(p) for p in parts], shapes)
        return buffers.plan_body(parts, shapes, set(returned), set(kept))

    (forward_lines,), bufs, constants = body([forward], forward_shapes, {names[g.output]}, ())
    bodies = {"forward": (forward_lines, bufs, constants)}
    (loss_lines,), bufs, constants = body([loss_forward], shapes_, (), {TOTAL})
    bodies["loss"] = (loss_lines, bufs, constants)
    for fn, returned, kept in (("loss_and_grad", [v for _, v in grads], {TOTAL}),
                               ("sgd_step", (), {TOTAL} | {d for _, d in updates})):
        bodies[fn] = body([loss_forward, backward], shapes_, returned, kept)
    bodies["train_step"] = body([loss_forward, backward, update], {**update_shapes, **shapes_}, (), {TOTAL})
    input_grads = ()
    if program.input_backward is not None:
        (loss_i, back_i), shapes_i = lower(program.loss, program.input_backward)
        back_i, routed = rewrites.routed(back_i, shapes_i, loss_i)
        if routed:
            helpers.add("route_max")
        loss_i, _ = rewrites.total_line(loss_var, TOTAL, loss_i, shapes_i)
        input_grads = tuple((t.name, grad_name(t.name)) for t in g.inputs)
        bodies["input_grad"] = body([loss_i, back_i], shapes_i, [v for _, v in input_grads], {TOTAL})
    return Plan(
        name=g.name, source=g.source,
        inputs=tuple((t.name, names[t.name], t.shape) for t in g.inputs),
        targets=tuple((t.name, names[t.name], t.shape) for t in g.targets),
        params=tuple((p.name, names[p.name], p.shape, p.init) for p in g.params),
        forward=tuple(forward), output=names[g.output],
        loss_forward=tuple(loss_forward),
        loss_value=loss_value,
        backward=tuple(dataclasses.replace(x, phase="backward") for x in backward),
        grads=grads, updates=updates, bodies=bodies, optimizer=g.optimizer, update=tuple(update),
        input_grads=input_grads,
        states=tuple((a, names[a], p, s) for a, (p, s) in states.items()),
        loss_seed=_seed_code(program.seed, "1"), step_seed=_seed_code(program.seed, "-float(lr)"),
        helpers=tuple(sorted(helpers)), derivations=program.derivations)


def _buffer_shape(shape):
    """A shape with None for the batch axis; None if an extent is neither B nor a number."""
    out = []
    for n in shape:
        if n == B:
            out.append(buffers.BATCH)
        elif sp.sympify(n).is_Integer:
            out.append(int(n))
        else:
            return None
    return tuple(out)


def _seed_code(seed, scale: str) -> str:
    """The seed's value times `scale`: the loss is a batch sum (seed 1) or mean (1/B)."""
    assert seed in (1, 1 / B), seed
    return f"{scale} / batch" if seed == 1 / B else scale


def _comment(note) -> str:
    return (f"{note.label}: " if note.label else "") + note.text + (f"  [#{note.anchor}]" if note.anchor else "")
