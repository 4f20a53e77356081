"""Program -> C99 loop nests: the embeddable training code.

The Program's statements, rendered as loops rather than whole arrays: every
statement is a loop nest over its target's indices; each reduction (sum,
logsumexp, max, first-argmax) and each scatter (the adjoint of a window read)
is computed first into a temporary array of the caller's workspace.  Reads
outside an array's extent are zero (padding, windows).  No allocation, no
globals, no printing; `real` is float or double, math through <tgmath.h>.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
import dataclasses
from functools import lru_cache
from importlib import resources

import sympy as sp
from sympy.printing.c import C99CodePrinter

from ...autodiff.derive import B
from ...errors import generating
from ...literals import real_literal
from ...naming import grad_name
from ...ops.primitives import lookup
from ...ops.optimizers import LR, T
from ...schedule.program import CLIP, SEED, Program
from .nodes import Block, Loop, Stmt, render
from ...ops.symbolic import FirstArgmax, LogSumExp, MaxOver, index_symbols, join_signed, read_name, real_base, sum_terms


@dataclass
class GemmCall(Stmt):
    """A call of nncc_gemm, kept with its arguments: sgd_step may send a parameter's
    gradient product straight into the parameter (alpha -lr, added) instead."""
    text: str = ""
    args: tuple = ()  # ta, tb, m, n, k, alpha, a, lda, b, ldb, add, c, ldc, pack: C text
    reads: frozenset = frozenset()  # the arrays it reads

    def __post_init__(self):
        self.text = f"nncc_gemm({', '.join(self.args)});"

    def into(self, target: str, scale: str, add: bool) -> "GemmCall":
        args = list(self.args)
        args[5] = scale if args[5] == "1" else f"{scale} * {args[5]}"
        args[10], args[11] = str(int(add)), target
        return GemmCall(args=tuple(args), reads=self.reads)


def cname(name: str) -> str:
    """A C identifier for a tensor, parameter or gradient name."""
    return "v_" + name.replace(".", "_")


@dataclass
class Buffer:
    name: str  # C variable
    shape: tuple  # extents; B for the batch axis
    kind: str  # "input" | "param" | "grad" | "work" | "output"
    offset: object = 0  # in the params / grad / work array (sympy, in B)


# the scalars of train_step, as its C reads them
_STEP_SCALARS = {LR: "lr", T: "((real)step)", CLIP: "clip"}


class _CPrinter(C99CodePrinter):
    """C for a real-valued expression; `index=True` for a subscript (integer arithmetic).

    No integer arithmetic happens in a real expression: the batch size reads as
    `((real)batch)`, so 2/batch divides reals; a fraction or a decimal is one literal of
    the real type, `((real)0.7978845608028654)` (the double nearest the exact value,
    printed as Python prints it), never the exact fraction's digits; an integer is
    written as itself only while every float holds it exactly.
    """

    def __init__(self, low, index=False):
        super().__init__({"math_macros": {}})
        self.low = low
        self.index = index

    def _print(self, e, **kwargs):
        # a constant call (sqrt(5), sigmoid(1e-30)) folded into one literal, as numpy's printer does
        if not self.index and isinstance(e, sp.Expr) and e.is_number and not e.is_Rational \
                and e.is_finite and e.is_real:
            return f"((real){real_literal(e)})"
        primitive = None if self.index else lookup(e)
        if primitive is not None:
            if primitive.c_helper:
                self.low.helpers.add(primitive.c_helper)
            return primitive.c.format(*[self._print(a) for a in e.args])
        return super()._print(e, **kwargs)

    def _print_Indexed(self, e):
        return self.low.read(e)

    def _print_Symbol(self, s):
        if s == B:
            return "batch" if self.index else "((real)batch)"
        if s == SEED:  # a local of the function, bound by the template
            self.low.used.add("seed")
            return "seed"
        if s in _STEP_SCALARS:  # train_step's arguments and locals
            return _STEP_SCALARS[s]
        if s.name.startswith("opt_k"):  # a scalar of the update, computed before its loops
            return s.name
        return self.low.loop_var(s)

    _print_Dummy = _print_Symbol

    def _print_Add(self, e, order=None):
        low = self.low
        terms = sum_terms(e, lambda t: {read_name(x) for x in t.atoms(sp.Indexed, sp.Symbol)}, low.lse_max, low.lse_log)
        if not isinstance(terms, list):
            # 1.5*t1 + 1.5*t2 is the product 1.5*(t1 + t2), not a sum
            return super()._print_Add(terms, order) if terms.is_Add else self._print(terms)
        return "(" + join_signed(self._print(t) for t in terms) + ")"

    def _print_Integer(self, n):
        if self.index or abs(int(n)) <= 2 ** 24:
            return str(int(n))
        return f"((real){real_literal(n)})"

    def _print_Rational(self, r):
        return f"((real){real_literal(r)})"

    _print_Float = _print_Rational

    def _print_Zero(self, n):  # StrPrinter has its own, which would skip _print_Integer
        return self._print_Integer(n)

    def _print_Pow(self, e):
        base, ex = e.as_base_exp()
        b = self.parenthesize(base, 1000)
        if ex == -1:
            return f"((real)1/{b})"
        if ex.is_Integer and 0 < ex <= 3:
            return "(" + "*".join([b] * int(ex)) + ")"
        if ex.is_Integer and -3 <= ex < 0:
            return "((real)1/(" + "*".join([b] * int(-ex)) + "))"
        if ex == sp.S.Half:
            return f"sqrt({self._print(base)})"
        # both real: with an integer argument <tgmath.h> would pick the double pow
        return f"pow((real)({self._print(base)}), (real)({self._print(ex)}))"

    def _print_Where(self, e):
        # both branches evaluated, then one chosen: every read guards its own bounds, and a
        # load made conditional by `?:` is vectorised as a masked load, which gcc 12 at -O3
        # with AVX2 gets wrong (`c ? g[k] : 0` over a loop gave wrong values)
        c, a, b = e.args
        self.low.helpers.add("where")
        return f"nncc_where({self._print(c)}, {self._print(a)}, {self._print(b)})"

    def _print_IsClass(self, e):  # a class index (passed as a real) equal to this position
        c, i = e.args
        return f"((real)(({self._print(c)}) == (real)({_CPrinter(self.low, index=True).doprint(i)})))"

    def _print_KroneckerDelta(self, e):  # left by a constant subscript (a[0]): 1 where equal
        a, b = e.args
        return f"((real)(({self._print(a)}) == ({self._print(b)})))"



class CLowerer:
    """Writes C statements for one function body into `lines`."""

    def __init__(self, buffers: dict, work: list, real: str = "float"):
        self.real = real  # "float" or "double": the gemm's tile width depends on it
        self.buffers = buffers  # tensor/param/grad name -> Buffer
        self.work = work  # shared list of work Buffers (temporaries get appended)
        self.nodes: list = []  # the statements written, as a tree (nodes.py)
        self._bodies: list = [self.nodes]  # the bodies open for writing, innermost last
        self.ranges: dict = {}
        self.vars: dict = {}  # index symbol -> C loop variable
        self.pending: dict = {}  # placeholder symbol -> reduction computed inside the loop nest
        self.lse_max: set = set()  # names holding the max part of a logsumexp
        self.lse_log: set = set()  # ... and its log-sum part
        self.count = 0
        self.used: set = set()  # the C arrays the lines read or write
        self.helpers: set = set()  # the runtime helpers (runtime.c) they call

    # ---- names
    def loop_var(self, s):
        if s not in self.vars:
            self.vars[s] = f"{s.name.replace(chr(39), 'p')}_{len(self.vars)}"
        return self.vars[s]

    def _extent(self, n):
        return "batch" if n == B else _c_int(n)

    def read(self, e: sp.Indexed) -> str:
        buf = self.buffers[e.base.label.name]
        self.used.add(buf.name)
        linear, guards = self._linear(buf, e.indices)
        access = f"{buf.name}[{linear}]"
        if guards:
            return f"(({' && '.join(guards)}) ? {access} : (real)0)"
        return access

    def _linear(self, buf, subs):
        guards = []
        terms = []
        stride = sp.Integer(1)
        strides = []
        for n in reversed(buf.shape):
            strides.append(stride)
            stride = stride * n
        strides.reverse()
        p = _CPrinter(self, index=True)
        for sub, n, st in zip(subs, buf.shape, strides):
            code = p.doprint(sub)
            lo, hi = self._interval(sub)
            if lo is None or lo < 0:
                guards.append(f"({code}) >= 0")
            if hi is None or (n != B and hi > int(n) - 1):
                guards.append(f"({code}) < {self._extent(n)}")
            terms.append(code if st == 1 else f"({code})*{p.doprint(st)}")
        return " + ".join(terms) if terms else "0", guards

    def _interval(self, sub):
        lo = hi = 0
        for term in sp.Add.make_args(sp.expand(sub)):
            c, rest = term.as_coeff_Mul()
            if rest == 1:
                lo += c
                hi += c
            elif rest in self.ranges and self.ranges[rest] != B:
                top = c * (int(self.ranges[rest]) - 1)
                lo += min(0, top)
                hi += max(0, top)
            elif rest in self.ranges:  # the batch index reads its own axis
                if c != 1:
                    return None, None
            else:
                return None, None
        return int(lo), int(hi)

    # ---- loops
    @property
    def lines(self) -> list[str]:
        return render(self.nodes)

    @contextmanager
    def _loops(self, syms):
        """Statements written inside are inside a loop over each of syms, outermost first."""
        depth = len(self._bodies)
        for s in syms:
            self._enter(Loop(self.loop_var(s), "0", self._extent(self.ranges[s])))
        try:
            yield
        finally:
            del self._bodies[depth:]

    @contextmanager
    def _inside(self, node):
        """Statements written inside go into node (a Loop or a Block)."""
        depth = len(self._bodies)
        self._enter(node)
        try:
            yield
        finally:
            del self._bodies[depth:]

    def _enter(self, node):
        self._bodies[-1].append(node)
        self._bodies.append(node.body)

    def _emit(self, text):
        self._bodies[-1].append(Stmt(text))

    def _temp(self, labels):
        k = len([w for w in self.work if w.name.startswith('tmp')])
        while f"tmp{k}" in self.buffers:  # a user's tensor tmp0, say
            k += 1
        name = f"tmp{k}"
        buf = Buffer(name, tuple(self.ranges[s] for s in labels), "work")
        self.work.append(buf)
        self.buffers[name] = buf
        self.used.add(name)
        return name

    # ---- statements
    def assign(self, st, comment: str):
        """One Program statement as a loop nest over its target's indices."""
        self.ranges = dict(st.ranges)
        expr = st.expr
        loops = tuple(st.variables) if st.variables is not None else tuple(st.indices)
        self._emit(f"/* {comment} */")
        buf = self.buffers[st.target]
        self.used.add(buf.name)
        if expr.has(sp.KroneckerDelta) and not expr.is_Add and not st.accumulate and tuple(st.indices) == loops \
                and st.target not in {r.base.label.name for r in expr.atoms(sp.Indexed)}:
            # one scatter: added into the target itself, zeroed first, not into a temporary
            # copied over after (the same sums in the same order).  A gradient that
            # accumulates keeps the temporary: its terms summed apart, then added, as numpy
            self._scatter(expr, loops, into=buf)
            return
        if expr.has(sp.KroneckerDelta):
            expr = sp.Add(*[self._scatter(t, loops) if t.has(sp.KroneckerDelta) else t
                            for t in sp.Add.make_args(expr)])
        if tuple(st.indices) == loops and not st.accumulate and self._gemm(st.target, buf, loops, expr):
            return
        if tuple(st.indices) == loops and self._axpy(buf, loops, expr, st.accumulate):
            return
        if tuple(st.indices) == loops and self._samples_at_once(buf, loops, expr, st.accumulate):
            return
        expr = self._hoist(expr, list(loops))
        with self._loops(loops):
            expr = self._inline(expr)
            linear, _ = self._linear(buf, st.indices)
            op = "+=" if st.accumulate else "="
            self._emit(f"{buf.name}[{linear}] {op} {_CPrinter(self).doprint(expr)};")

    def _axpy(self, buf, loops, expr, accumulate):
        """out[..., k] (+)= c * Σ_v f as a zeroed output and `out[..., k] += c*f` over v and
        then k, when every read indexed by the output's last index k reads it contiguously.

        The reduction then sits outside a unit-stride loop that compilers vectorise without
        reassociating sums (dW = δᵀX, dX = δW), where a scalar accumulator would not be.
        """
        coeff, total = expr.as_independent(sp.Sum, as_Add=False)
        if not isinstance(total, sp.Sum) or not loops:
            return False
        vs = [lim[0] for lim in total.limits]
        body = coeff * total.function
        if any(lim[1] != 0 for lim in total.limits) or body.has(sp.Sum, LogSumExp, MaxOver, FirstArgmax) \
                or body.has(sp.KroneckerDelta) or any(loops[-1] in lim[2].free_symbols for lim in total.limits):
            return False
        k = loops[-1]
        reads = [r for r in body.atoms(sp.Indexed) if r.has(k)]
        if not reads or any(r.indices[-1] != k or any(i.has(k) for i in r.indices[:-1]) for r in reads):
            return False
        for v, _, hi in total.limits:
            self.ranges[v] = hi + 1
        linear, _ = self._linear(buf, loops)
        if not accumulate:
            with self._loops(loops):
                self._emit(f"{buf.name}[{linear}] = 0;")
        with self._loops([*loops[:-1], *vs, k]):
            self._emit(f"{buf.name}[{linear}] += {_CPrinter(self).doprint(body)};")
        return True

    GEMM_MIN = 4096  # multiply-adds per sample (or in all) below which a loop nest is as fast

    def _gemm(self, target, buf, loops, expr):
        """out[M..., N...] = F(Σ_K A[M..., K...] B[K..., N...]) (each of A and B perhaps
        transposed, each a whole array read in its own order, F elementwise: a bias added,
        a relu's mask) as one nncc_gemm call, a blocked matrix product into out, and then
        `out = F(out)` over the loops where F is more than the sum itself."""
        found = [a for a in sp.preorder_traversal(expr) if isinstance(a, _REDUCTIONS)]
        if len(set(found)) != 1 or not isinstance(found[0], sp.Sum) or not loops:
            return False
        total = found[0]
        if any(lo != 0 for _, lo, _ in total.limits) or expr.has(sp.KroneckerDelta) or buf.name in {
                self.buffers[r.base.label.name].name for r in expr.xreplace({total: sp.S.Zero}).atoms(sp.Indexed)}:
            return False
        vs = [v for v, _, _ in total.limits]
        factors = sp.Mul.make_args(total.function)
        reads = [f for f in factors if isinstance(f, sp.Indexed)]
        scale = sp.Mul(*[f for f in factors if not isinstance(f, sp.Indexed)])
        if len(reads) != 2 or scale.free_symbols:
            return False
        ranges = {**self.ranges, **{v: hi + 1 for v, _, hi in total.limits}}

        def whole(r):  # every subscript a distinct index running over its whole axis
            shape = self.buffers[r.base.label.name].shape
            return len(set(r.indices)) == len(r.indices) == len(shape) and all(
                isinstance(i, sp.Symbol) and i in ranges and ranges[i] == n
                for i, n in zip(r.indices, shape))
        if not all(whole(r) for r in reads):
            return False
        for a, b in (reads, reads[::-1]):
            ai, bi = tuple(a.indices), tuple(b.indices)
            ka, kb = [i for i in ai if i in vs], [i for i in bi if i in vs]
            ms, ns = [i for i in ai if i not in vs], [i for i in bi if i not in vs]
            if sorted(ka, key=str) != sorted(vs, key=str) or ka != kb or tuple(ms + ns) != tuple(loops):
                continue
            if ai not in (tuple(ms + ka), tuple(ka + ms)) or bi not in (tuple(ka + ns), tuple(ns + ka)):
                continue
            ta, tb = int(ai != tuple(ms + ka)), int(bi != tuple(ka + ns))
            break
        else:
            return False
        m, n, k = (sp.Mul(*[ranges[i] for i in group]) for group in (ms, ns, ka))
        fixed = (m * n * k).subs(B, 1)
        # n < 8: most of each tile padding; a batch of rows by a narrow transposed factor
        # (a narrow dense layer's forward): the loop nest's dot products are as fast
        if fixed < self.GEMM_MIN or (not n.has(B) and n < 8) or (m.has(B) and tb and not n.has(B) and n < 64):
            return False
        count = sum(w.name.startswith("pack") for w in self.work)
        while f"pack{count}" in self.buffers:  # a user's tensor pack0, say
            count += 1
        pack = f"pack{count}"
        self.work.append(Buffer(pack, (gemm_pack_size(m, n, k, self.real),), "work"))
        self.buffers[pack] = self.work[-1]
        self.used |= {pack, buf.name, *(self.buffers[r.base.label.name].name for r in reads)}
        self.helpers |= {"muladd", "gemm_tiles", "gemm_half", "gemm"}
        size = lambda e: _CPrinter(self, index=True).doprint(e)  # noqa: E731
        names = [self.buffers[r.base.label.name].name for r in (a, b)]
        alpha = _CPrinter(self).doprint(scale)
        self._bodies[-1].append(GemmCall(args=(
            str(ta), str(tb), size(m), size(n), size(k), alpha, names[0], size(m if ta else k), names[1],
            size(k if tb else n), "0", buf.name, size(n), pack), reads=frozenset(names)))
        after = expr.xreplace({total: real_base(target)[tuple(loops)]})
        if after != real_base(target)[tuple(loops)]:
            with self._loops(loops):
                linear, _ = self._linear(buf, loops)
                self._emit(f"{buf.name}[{linear}] = {_CPrinter(self).doprint(after)};")
        return True

    SAMPLES = 4  # the samples a dot product over the batch computes at once

    def _samples_at_once(self, buf, loops, expr, accumulate):
        """out[b, ...] (+)= g(Σ_v f) over the batch, SAMPLES samples at a time, where f
        reads an array that does not vary with the sample (a weight): each element of it
        loaded feeds SAMPLES sums (unroll and jam) instead of the whole weight being read
        again for every sample.  Each sample's sum is taken in _split_sum's order, and the
        samples left over one at a time as before: the numbers are the same.
        """
        b = loops[0] if loops else None
        if b is None or self.ranges.get(b) != B:
            return False
        reductions = [a for a in sp.preorder_traversal(expr) if isinstance(a, _REDUCTIONS)]
        if len(reductions) != 1 or not isinstance(reductions[0], sp.Sum) or len(reductions[0].limits) != 1:
            return False
        total = reductions[0]
        v, lo, hi = total.limits[0]
        body = total.function
        if lo != 0 or not hi.is_Integer or int(hi) + 1 < 2 * self.LANES or expr.has(sp.KroneckerDelta):
            return False
        reads = body.atoms(sp.Indexed)

        def own_position(r):  # reads sample b at b, or no sample at all
            return not r.has(b) or (r.indices[0] == b and not any(i.has(b) for i in r.indices[1:]))
        rest = expr.xreplace({total: sp.Integer(0)})
        # the sample read only where it is a subscript, at its own position; something read
        # the same for every sample (what the blocking reuses); and a sum over all of the
        # output's indices (else _hoist takes it out of the loops)
        if not all(own_position(r) for r in reads | rest.atoms(sp.Indexed)) or all(r.has(b) for r in reads) \
                or b in (body.xreplace({r: sp.S.Zero for r in reads}).free_symbols
                         | rest.xreplace({r: sp.S.Zero for r in rest.atoms(sp.Indexed)}).free_symbols) \
                or not set(loops[1:]) <= index_symbols(total, self.ranges):
            return False
        self.ranges[v] = hi + 1
        n, lanes, samples = int(hi) + 1, self.LANES, self.SAMPLES
        block = sp.Dummy("bb", integer=True)
        vo, u = sp.Dummy(v.name + "o", integer=True), sp.Dummy("u", integer=True)
        self.ranges.update({block: B, vo: n // lanes, u: lanes})
        p, op = _CPrinter(self), "+=" if accumulate else "="
        acc = f"r{self.count}"
        self.count += 1
        with self._inside(Loop(self.loop_var(block), "0", "batch", step=samples)), self._loops(loops[1:]):
            at = [{b: block + q} for q in range(samples)]
            for q in range(samples):
                self._emit(f"real {acc}_p{q}[{lanes}] = {{{', '.join(['0'] * lanes)}}};")
            with self._loops([vo, u]):
                for q in range(samples):
                    term = body.xreplace({v: lanes * vo + u, **at[q]})
                    self._emit(f"{acc}_p{q}[{self.loop_var(u)}] += {p.doprint(term)};")
            if n % lanes:
                with self._inside(Loop(self.loop_var(v), str(n - n % lanes), str(n))):
                    for q in range(samples):
                        self._emit(f"{acc}_p{q}[0] += {p.doprint(body.xreplace(at[q]))};")
            for q in range(samples):
                result = sp.Symbol(f"{acc}_{q}", real=True)
                self.vars[result] = result.name
                self._emit(f"real {result} = {_pairwise(f'{acc}_p{q}', lanes)};")
                linear, _ = self._linear(buf, [block + q, *loops[1:]])
                self._emit(f"{buf.name}[{linear}] {op} {p.doprint(expr.xreplace({total: result}).xreplace(at[q]))};")
        marked = self._hoist(expr, list(loops))  # the sum, computed inside the loops below
        with self._inside(Loop(self.loop_var(b), f"batch - batch % {samples}", "batch")), self._loops(loops[1:]):
            linear, _ = self._linear(buf, loops)
            self._emit(f"{buf.name}[{linear}] {op} {p.doprint(self._inline(marked))};")
        return True

    def _inline(self, e):
        """Emit, inside the open loops, the reductions left in e; return e reading their results."""
        if e in self.pending:
            return self._emit_reduction(*self.pending[e])
        if e.is_Atom or isinstance(e, sp.Indexed) or not e.free_symbols & self.pending.keys():
            return e  # not rebuilt: sympy would evaluate every node of a deep formula again
        args = [self._inline(a) for a in e.args]
        return e if all(x is y for x, y in zip(args, e.args)) else e.func(*args)

    def _emit_reduction(self, kind, body, vs):
        result = sp.Symbol(f"r{self.count}", real=True)
        self.count += 1
        self.vars[result] = result.name
        p = _CPrinter(self)
        if kind is FirstArgmax:  # search with fresh loop indices, compare with the open ones
            return self._argmax_equals(self._argmax_search(result, body, vs), vs)
        if kind is sp.Sum and self._split_sum(str(result), body, vs, declare=True):
            return result
        self._emit(f"real {result} = {'0' if kind is sp.Sum else '-INFINITY'};")
        with self._loops(vs):
            inner = p.doprint(self._inline(body))
            if kind is sp.Sum:
                self._emit(f"{result} += {inner};")
            else:
                self._emit(f"{{ real v = {inner}; if (v > {result} || isnan(v)) {result} = v; }}")
        if kind is LogSumExp:  # max + log(sum exp(f - max)), the parts apart (see _print_Add)
            log_sum = sp.Symbol(f"{result}_ls", real=True)
            self.vars[log_sum] = log_sum.name
            self._emit(f"real {log_sum} = 0;")
            with self._loops(vs):
                self._emit(f"{log_sum} += exp({p.doprint(self._inline(body))} - {result});")
            self._emit(f"{log_sum} = log({log_sum});")
            self.lse_max.add(result.name)
            self.lse_log.add(log_sum.name)
            return result + log_sum
        return result

    def _argmax_search(self, result, body, vs) -> str:
        """Emit the search of the first maximum of body over vs (fresh indices, row-major
        order; a NaN wins, the last one, as PyTorch); the name of its flat index."""
        p = _CPrinter(self)
        fresh = {v: sp.Dummy(v.name + "s", integer=True) for v in vs}
        for v, f in fresh.items():
            self.ranges[f] = self.ranges[v]
        self._emit(f"real {result}_m = -INFINITY; long {result}_best = -1, {result}_k = 0;")
        with self._loops(list(fresh.values())):
            inner = self._inline(body.xreplace(fresh))
            self._emit(f"{{ real v = {p.doprint(inner)}; if ({result}_best < 0 || v > {result}_m || isnan(v)) "
                       f"{{ {result}_m = v; {result}_best = {result}_k; }} {result}_k++; }}")
        return f"{result}_best"

    def _argmax_equals(self, best: str, vs) -> sp.Symbol:
        """A symbol printed as 1 where the open loops over vs are at the flat index `best`."""
        here, stride = [], 1
        for v in reversed(vs):
            here.append(f"{self.loop_var(v)}*{stride}")
            stride *= int(self.ranges[v])
        equal = sp.Symbol(f"{best}_here", real=True)
        self.vars[equal] = f"((real)(({' + '.join(here)}) == {best}))"
        return equal

    LANES = 8

    def _split_sum(self, acc, body, vs, declare):
        """Σ_vs body over LANES partial sums, added pairwise at the end.

        One running sum makes every addition wait for the one before it, and C
        compilers may not reorder float additions themselves; LANES independent sums
        (v = LANES*vo + u, v the innermost reduction index) run in parallel and
        vectorise.  For a reduction whose innermost index has a known extent (at
        least 2*LANES alone, LANES under other indices: a weight gradient summing
        over batch, rows and columns) and a body free of nested reductions.
        """
        if not vs or self.ranges[vs[-1]] == B or any(s in self.pending for s in body.free_symbols):
            return False
        v, n, lanes, outer = vs[-1], int(self.ranges[vs[-1]]), self.LANES, list(vs[:-1])
        if n < (2 * lanes if not outer else lanes):
            return False
        vo, u = sp.Dummy(v.name + "o", integer=True), sp.Dummy("u", integer=True)
        self.ranges[vo], self.ranges[u] = n // lanes, lanes
        p = _CPrinter(self)
        parts = f"{acc}_p"
        self._emit(f"real {parts}[{lanes}] = {{{', '.join(['0'] * lanes)}}};")
        with self._loops(outer + [vo, u]):
            self._emit(f"{parts}[{self.loop_var(u)}] += {p.doprint(body.xreplace({v: lanes * vo + u}))};")
        if n % lanes:
            with self._loops(outer):
                with self._inside(Loop(self.loop_var(v), str(n - n % lanes), str(n))):
                    self._emit(f"{parts}[0] += {p.doprint(body)};")
        self._emit(f"{'real ' if declare else ''}{acc} = {_pairwise(parts, lanes)};")
        return True

    def _hoist(self, e, order):
        if isinstance(e, (sp.Sum, LogSumExp, MaxOver, FirstArgmax)):
            vs = [lim[0] for lim in e.limits]
            for lim in e.limits:
                self.ranges[lim[0]] = lim[2] + 1
            free = [s for s in order if s in index_symbols(e, self.ranges) and s not in vs]
            inline_ok = set(free) | (set(vs) if isinstance(e, FirstArgmax) else set()) == set(order)
            body = self._hoist(e.function, order + (vs if not isinstance(e, FirstArgmax) else []))
            if inline_ok:  # computed in the statement's own loops: no temporary array
                mark = sp.Symbol(f"_inline{len(self.pending)}", real=True)  # real: spares sympy proving it
                self.pending[mark] = (type(e), body, vs)
                return mark
            body = self._hoist(e.function, order + vs)
            return self._reduce(type(e), body, vs, free)
        if e.is_Atom or isinstance(e, sp.Indexed) or not e.has(*_REDUCTIONS):
            return e  # not rebuilt: sympy would evaluate every node of a deep formula again
        args = [self._hoist(a, order) for a in e.args]
        return e if all(x is y for x, y in zip(args, e.args)) else e.func(*args)

    def _reduce(self, kind, body, vs, free):
        if free:
            return self._reduce_into_temp(kind, body, vs, free)
        # no loop around it: a block of its own keeps its accumulators' names local
        with self._inside(Block()):
            return self._reduce_into_temp(kind, body, vs, free)

    def _reduce_into_temp(self, kind, body, vs, free):
        labels = free + (vs if kind is FirstArgmax else [])
        name = self._temp(labels)
        log_sum = self._temp(labels) if kind is LogSumExp else None  # and log(sum exp(f - max))
        p = _CPrinter(self)
        with self._loops(free):
            out = f"{name}[{self._linear(self.buffers[name], [*free, *([] if kind is not FirstArgmax else vs)])[0]}]"
            if kind is sp.Sum:
                if not self._split_sum("acc", body, vs, declare=True):
                    self._emit("real acc = 0;")
                    with self._loops(vs):
                        self._emit(f"acc += {p.doprint(self._inline(body))};")
                self._emit(f"{out} = acc;")
            elif kind is MaxOver:
                self._emit("real m = -INFINITY;")
                with self._loops(vs):
                    self._emit(f"{{ real v = {p.doprint(self._inline(body))}; if (v > m || isnan(v)) m = v; }}")
                self._emit(f"{out} = m;")
            elif kind is LogSumExp:  # two temporaries: the max, and log(sum exp(f - max))
                out_ls = f"{log_sum}[{self._linear(self.buffers[log_sum], free)[0]}]"
                self._emit("real m = -INFINITY, s = 0;")
                with self._loops(vs):
                    self._emit(f"{{ real v = {p.doprint(self._inline(body))}; if (v > m || isnan(v)) m = v; }}")
                with self._loops(vs):
                    self._emit(f"s += exp({p.doprint(self._inline(body))} - m);")
                self._emit(f"{out} = m;")
                self._emit(f"{out_ls} = log(s);")
            else:  # FirstArgmax: 1 at the first maximum in row-major order (a NaN wins, the last one, as PyTorch)
                self._emit("real m = -INFINITY; long best = -1, k = 0;")
                with self._loops(vs):
                    self._emit(f"{{ real v = {p.doprint(self._inline(body))}; "
                               f"if (best < 0 || v > m || isnan(v)) {{ m = v; best = k; }} k++; }}")
                self._emit("k = 0;")
                with self._loops(vs):
                    self._emit(f"{out} = (real)(k++ == best);")
        if kind is LogSumExp:
            self.lse_max.add(name)
            self.lse_log.add(log_sum)
            return self._read_temp(name, labels) + self._read_temp(log_sum, labels)
        return self._read_temp(name, labels)

    def _read_temp(self, name, labels):
        """temp[labels]; a one-value temporary is read through a symbol printed as temp[0]."""
        if labels:
            return real_base(name)[tuple(labels)]
        value = sp.Symbol(f"{name}_value", real=True)
        self.vars[value] = f"{name}[0]"
        return value

    def _scatter(self, term, indices, into=None):
        """sum_V G * delta(A, J): a zeroed temporary (or `into`, zeroed), then T[A] += G over V."""
        coeff, term = term.as_independent(sp.KroneckerDelta, as_Add=False)
        limits = list(term.limits) if isinstance(term, sp.Sum) else []
        body = coeff * (term.function if isinstance(term, sp.Sum) else term)
        for v, lo, hi in limits:
            self.ranges[v] = hi + 1
        factors = sp.Mul.make_args(body)
        where = {}
        for d in (f for f in factors if isinstance(f, sp.KroneckerDelta)):
            a, b = d.args
            target, pos = (a, b) if a in indices else (b, a)
            where[target] = pos
        rest = sp.Mul(*[f for f in factors if not isinstance(f, sp.KroneckerDelta)])
        buf = into or self.buffers[self._temp(list(indices))]
        name = buf.name
        with self._inside(Loop("n", "0", _size_code(buf.shape), type="long")):
            self._emit(f"{name}[n] = 0;")
        loops = [j for j in indices if j not in where] + [v for v, _, _ in limits
                                                           if any(where[j].has(v) for j in where)]
        other = [(v, lo, hi) for v, lo, hi in limits if v not in loops]
        g = self._hoist(sp.Sum(rest, *other) if other else rest, loops)
        # a first-argmax over the window the innermost loops run over (a max-pool's adjoint):
        # searched once per window, before those loops, not again at each of its positions
        argmax = [(m, self.pending[m]) for m in g.free_symbols if m in self.pending
                  and self.pending[m][0] is FirstArgmax and 0 < len(self.pending[m][2]) < len(loops)
                  and tuple(self.pending[m][2]) == tuple(loops[-len(self.pending[m][2]):])]
        inner = list(argmax[0][1][2]) if len(argmax) == 1 else []
        with self._loops(loops[:len(loops) - len(inner)]):
            if inner:
                mark, (_, body, vs) = argmax[0]
                result = f"r{self.count}"
                self.count += 1
                g = g.xreplace({mark: self._argmax_equals(self._argmax_search(result, body, vs), vs)})
            with self._loops(loops[len(loops) - len(inner):]):
                g = self._inline(g)
                subs = [where.get(j, j) for j in indices]
                linear, guards = self._linear(buf, subs)
                cond = f"if ({' && '.join(guards)}) " if guards else ""
                self._emit(f"{cond}{name}[{linear}] += {_CPrinter(self).doprint(g)};")
        return real_base(name)[tuple(indices)]


_REDUCTIONS = (sp.Sum, LogSumExp, MaxOver, FirstArgmax)

# nncc_gemm's blocking (runtime.c): tiles MR rows by NR columns, blocks of MC rows, KC
# terms of the sum and NC columns (NC_SLIVERS tiles)
# GEMM_MR: the taller of the two tiles (8 rows where the product runs in AVX-512, else 4)
GEMM_MR, GEMM_NR, GEMM_MC, GEMM_KC, GEMM_NC_SLIVERS = 8, {"float": 16, "double": 8}, 128, 256, 16


def gemm_pack_size(m, n, k, real: str) -> int:
    """The reals nncc_gemm's `pack` holds for an m x k by k x n product: one KC x NC panel
    of the right factor and one MC x KC block of the left, each padded to whole tiles; an
    extent in the batch (B) counts as unbounded."""
    nr = GEMM_NR[real]

    def at_most(extent, tile, cap):
        return cap if sp.sympify(extent).has(B) else min(-(-int(extent) // tile) * tile, cap)
    kc = at_most(k, 1, GEMM_KC)
    return int(kc * (at_most(n, nr, nr * GEMM_NC_SLIVERS) + at_most(m, GEMM_MR, GEMM_MC)))


def _pairwise(parts: str, lanes: int) -> str:
    """parts[0] + ... + parts[lanes - 1] added in pairs, then pairs of pairs."""
    terms = [f"{parts}[{k}]" for k in range(lanes)]
    while len(terms) > 1:
        terms = [f"({a} + {b})" for a, b in zip(terms[::2], terms[1::2])]
    return terms[0]


def _c_int(n):
    return str(int(n))


def _size_code(shape):
    return "*".join("(long)batch" if n == B else str(int(n)) for n in shape) or "1"


# ---- the whole network -----------------------------------------------------------------

@dataclass
class CPlan:
    name: str
    source: str
    real: str
    inputs: list
    targets: list
    params: list  # (name, cname, shape, offset, size, init)
    param_count: int
    work: list  # Buffer
    work_size: str  # C expression in batch
    work_linear: tuple  # (per-sample, constant) element counts
    forward: list
    loss: list
    backward: list
    uses: dict  # function body -> the C arrays its lines read or write
    grads: list
    output: Buffer
    output_size: int
    loss_name: str
    reduce: str
    helpers: tuple  # the runtime helpers the code calls, in runtime.c's order
    step: list = None  # sgd_step's backward lines: each parameter updated once done with
    step_grads: list = None  # Buffer: the parameters' gradients in sgd_step's workspace
    optimizer_text: str = ""  # "adam(beta1=0.9, ...)", for the comments
    update: list = None  # train_step's optimizer lines, after loss_and_grad and the clipping
    update_uses: set = None  # the arrays they read or write
    state_arrays: list = None  # Buffer: the optimizer's state of each trained parameter
    state_count: int = 0  # values in the state array: one params-sized block per kept state
    update_scalars: list = None  # (name, C expression): the scalars the update lines read
    input_grad: list = None  # input_grad's backward lines, when asked for
    input_uses: set = None
    input_grads: list = None  # the C names of the inputs' gradients (arguments of input_grad)


def plan_c(program: Program, real="float") -> CPlan:
    g = program.graph
    buffers = {}
    params, offset = [], 0
    for p in g.params:
        size = int(sp.Mul(*p.shape)) if p.shape else 1
        buffers[p.name] = Buffer(cname(p.name), p.shape, "param", offset)
        buffers[grad_name(p.name)] = Buffer("d" + cname(p.name), p.shape, "grad", offset)
        params.append((p.name, cname(p.name), p.shape, offset, size, p.init))
        offset += size
    work: list[Buffer] = []
    for t in g.tensors.values():
        shape = (B,) if t.classes else (B,) + t.shape  # class indices: one (as a real) per sample
        kind = "input" if t.role in ("input", "target") else "work"
        buffers[t.name] = Buffer(cname(t.name), shape, kind)
        if kind == "work":
            work.append(buffers[t.name])
        buffers[grad_name(t.name)] = Buffer("d" + cname(t.name), shape, "work")
        if kind == "work":
            work.append(buffers[grad_name(t.name)])

    def body(statements):
        """(C lines, the arrays they use, the arrays each statement uses, the statements'
        nodes, one list each)."""
        low = CLowerer(buffers, work, real)
        steps, nodes = [], []
        for st in statements:
            low.used = set()
            start = len(low.nodes)
            for note in st.notes[:-1]:  # the steps fused into this one
                low._emit(f"/* {_comment(note)} */")
            with generating(st.node, st.fused):
                low.assign(st, _comment(st.notes[-1]))
            steps.append(low.used)
            nodes.append(low.nodes[start:])
        helpers.update(low.helpers)
        return low.lines, set().union(*steps), steps, nodes

    helpers = set()
    (forward, forward_uses, forward_steps, _), (loss, loss_uses, loss_steps, _) = \
        body(program.forward), body(program.loss)
    backward, backward_uses, backward_steps, backward_nodes = body(program.backward)
    # sgd_step updates each parameter as soon as its gradient is complete and the backward
    # pass reads it no more: the gradient lives in the workspace, only until then.  A
    # gradient that one matrix product makes whole (dW = δᵀX) needs no space at all: the
    # product goes straight into the parameter, W += -lr δᵀX, once nothing reads W (the
    # product moved after the readers of W, dX = δW, where nothing between needs it first)
    targets = [buffers[st.target].name for st in program.backward]
    order, direct = list(range(len(program.backward))), {}
    for name, c, _, off, size, _ in params:
        writers = [k for k, used in enumerate(backward_steps) if "d" + c in used]
        call = backward_nodes[writers[0]][-1] if len(writers) == 1 and backward_nodes[writers[0]] else None
        if name in program.zero_grads or not isinstance(call, GemmCall) or call.args[11] != "d" + c \
                or c in call.reads:
            continue
        k = writers[0]
        at = order.index(k)
        last = max((order.index(r) for r, used in enumerate(backward_steps) if c in used), default=-1)
        if all(targets[t] not in call.reads | {"d" + c} and "d" + c not in backward_steps[t]
               for t in order[at + 1:last + 1]):
            if last > at:
                order.insert(last, order.pop(at))  # right after the last reader of W
            direct[k] = (c, call.into(f"params + {off}", "-lr", add=True))
    step_grads, updates = [], {}
    for name, c, _, off, size, _ in params:
        uses = [k for k in order if {c, "d" + c} & backward_steps[k]]
        if name in program.zero_grads or not uses or uses[-1] in direct:
            continue
        step_grads.append(Buffer("d" + c, buffers[name].shape, "work"))
        updates.setdefault(uses[-1], []).append((c, off, size))
    step_nodes, step_steps = [], []
    for k in order:
        ns, used = backward_nodes[k], backward_steps[k]
        if k in direct:
            c, call = direct[k]
            step_nodes += ns[:-1] + [Stmt(f"/* {c[2:]} -= lr * its gradient, the product added into it */"), call]
            step_steps.append(used - {"d" + c})
        else:
            step_nodes += ns
            step_steps.append(used)
        for c, off, size in updates.get(k, ()):
            step_nodes.append(Stmt(f"/* {c[2:]} -= lr * its gradient, which is complete and read no more */"))
            step_nodes.append(Loop("n", "0", str(size), [Stmt(f"params[{off} + n] -= lr * d{c}[n];")], type="long"))
            step_steps.append({"d" + c})
    # train_step: the optimizer's element-wise updates, reading the gradients that
    # loss_and_grad wrote into `grad`; each kept state is one params-sized block of `state`
    kept = list(g.optimizer.states)
    state_arrays = []
    for a, (pname, st) in (program.states or {}).items():
        off = next(o for n, _, _, o, _, _ in params if n == pname)
        buffers[a] = Buffer(cname(a), g.param(pname).shape, "state", kept.index(st) * offset + off)
        state_arrays.append(buffers[a])
    # a formula of the step's scalars alone (lr / (1 - beta1^t)) is computed once, before
    # the loops, not for every element (pow and sqrt are calls the compiler may not hoist)
    scalars = {}
    update, update_uses, _, _ = body(tuple(dataclasses.replace(st, expr=_hoisted(st.expr, scalars))
                                           for st in program.update))
    printer = _CPrinter(CLowerer(buffers, [], real))
    update_scalars = [(sym.name, printer.doprint(e)) for e, sym in scalars.items()]
    # input_grad, when asked for: the inputs' gradients go to the caller's arrays
    input_lines, input_uses, input_steps = None, set(), []
    if program.input_backward is not None:
        for t in g.inputs:
            buffers[grad_name(t.name)] = Buffer("d" + cname(t.name), (B,) + t.shape, "output")
        input_lines, input_uses, input_steps, _ = body(program.input_backward)
    # each function's order of uses, with what its template reads at the end: the output
    # that forward copies out, the per-sample losses that the others total; loss_and_grad
    # writes the parameters' gradients to the caller's array, not the workspace
    out, loss_name = buffers[g.output], cname(g.loss)
    in_grad = {w.name for w in step_grads}
    per_sample, constant = memory_plan(work + step_grads, [
        forward_steps + [{out.name}],
        [used - in_grad for used in loss_steps + backward_steps] + [{loss_name}],
        loss_steps + step_steps + [{loss_name}],
        [used - in_grad for used in loss_steps + input_steps] + [{loss_name}]])
    return CPlan(g.name, g.source, real,
                 [(t.name, cname(t.name), t.shape) for t in g.inputs],
                 [(t.name, cname(t.name), () if t.classes else t.shape) for t in g.targets],
                 params, offset, work, f"((size_t)(batch) * {int(per_sample)} + {int(constant)})",
                 (int(per_sample), int(constant)), forward, loss, backward,
                 dict(forward=forward_uses, loss=loss_uses, backward=backward_uses,
                      step=set().union(*step_steps) if step_steps else set()),
                 [(p.name, "d" + cname(p.name), p.name in program.zero_grads) for p in g.params],
                 out, int(sp.Mul(*g.tensors[g.output].shape)) if g.tensors[g.output].shape else 1,
                 loss_name, g.reduce, tuple(h for h in _helpers() if h in helpers),
                 render(step_nodes), step_grads, g.optimizer.name + "(" + ", ".join(
                     f"{n}={v}" for n, v in g.optimizer.options if n != "lr") + ")",
                 update, update_uses, state_arrays, len(kept) * offset, update_scalars, input_lines, input_uses,
                 [("d" + cname(t.name)) for t in g.inputs] if input_lines is not None else [])


def _hoisted(e, scalars: dict):
    """e with each largest real part that reads only train_step's scalars (not a lone symbol,
    a number or a condition) replaced by a symbol of its own, recorded in `scalars` (expr -> symbol)."""
    if isinstance(e, sp.Indexed) or e.is_Atom:
        return e
    if isinstance(e, sp.Expr) and e.free_symbols and e.free_symbols <= set(_STEP_SCALARS) and not e.has(sp.Indexed):
        if e not in scalars:
            scalars[e] = sp.Symbol(f"opt_k{len(scalars)}", real=True)
        return scalars[e]
    return e.func(*[_hoisted(a, scalars) for a in e.args])


def memory_plan(work: list, orders: list) -> tuple:
    """Give each work buffer its offset in the workspace, sharing space between buffers
    that are never live at once; (per-sample, constant) values of the workspace.

    A buffer is live from the first statement using it to the last, in each function's
    order of statements (`orders`: per function, the set of arrays each statement uses);
    two buffers live in the same statement of any function never overlap.  Buffers that
    scale with the batch are packed first (offsets k*batch), the rest after them; each
    goes at the lowest offset free of the buffers it meets (first fit, by first use)."""
    names = {w.name for w in work}
    meets = {n: set() for n in names}
    first = {}
    for order in orders:
        span = {}
        for k, used in enumerate(order):
            for n in sorted(used & names):  # sorted: the same plan under any hash seed
                span[n] = (span.get(n, (k, k))[0], k)
                first.setdefault(n, (len(first), k))
        for a, (a0, a1) in span.items():
            for b, (b0, b1) in span.items():
                if a != b and a0 <= b1 and b0 <= a1:
                    meets[a].add(b)
    zones = []
    for scaled in (True, False):
        placed = {}
        for w in sorted((w for w in work if w.name in first and sp.Mul(*w.shape).has(B) == scaled),
                        key=lambda w: first[w.name]):
            size = int(sp.Mul(*w.shape).coeff(B) if scaled else sp.Mul(*w.shape))
            start = 0
            for lo, hi in sorted(placed[m] for m in meets[w.name] if m in placed):
                if start + size <= lo:
                    break
                start = max(start, hi)
            placed[w.name] = (start, start + size)
        zones.append(placed)
    per_sample = max((hi for _, hi in zones[0].values()), default=0)
    constant = max((hi for _, hi in zones[1].values()), default=0)
    for w in work:
        if w.name in zones[0]:
            w.offset = zones[0][w.name][0] * B
        else:  # constant-size, or never used (no pointer to it is made)
            w.offset = per_sample * B + zones[1].get(w.name, (0, 0))[0]
    return per_sample, constant


@lru_cache(maxsize=None)
def _helpers() -> dict:
    """{name without nncc_: source} of the functions in runtime.c, in its order: each
    begins at a line starting `static ` and ends at the next line that is `}`, with the
    lines right above it that are not blank (a comment and the #if that sets it up)."""
    text = resources.files("nncc.backends.c").joinpath("runtime.c").read_text(encoding="utf-8")
    out, lines = {}, text.splitlines()
    for k, line in enumerate(lines):
        if line.startswith("static "):
            end, start = lines.index("}", k), k
            while start > 0 and lines[start - 1].strip():
                start -= 1
            name = line.split("(")[0].split()[-1].lstrip("*")
            out[name.removeprefix("nncc_")] = "\n".join(lines[start:end + 1])
    return out


def _comment(note) -> str:
    """A Program note as the text of a C comment."""
    text = (f"{note.label}: " if note.label else "") + note.text + (f"  [#{note.anchor}]" if note.anchor else "")
    return text.replace("*/", "* /")


def offset_code(off) -> str:
    off = sp.expand(off)
    per, const = (off.coeff(B), off.subs(B, 0)) if off.has(B) else (0, off)
    if per == 0:
        return str(int(const))
    return f"(size_t)batch * {int(per)} + {int(const)}"


# ---- rendering -------------------------------------------------------------------------

def _pointers_used(named: set, params: list[dict], work: list[dict], arrays: list[str],
                   grads: bool = False) -> dict:
    """The parameter, gradient and workspace pointers a function body uses (`named`), and
    the arguments it never reads (cast to void so -Wextra stays quiet)."""
    used = dict(params=[p for p in params if p["cname"] in named],
                grads=[p for p in params if grads and "d" + p["cname"] in named],
                work=[w for w in work if w["name"] in named])
    pointed = dict(params=bool(used["params"]), grad=bool(used["grads"]), work=bool(used["work"]))
    used["unused"] = [a for a in arrays if a not in named] + [
        a for a in ["params", "work"] + (["grad"] if grads else []) if not pointed[a]]
    return used


def render_c(plan: CPlan, standalone: bool = True, blas: bool = False) -> tuple[str, str]:
    """(header, source) text for a C plan."""
    from ...version import __version__
    from ...templating import environment
    P = plan.name.upper()
    arrays = [dict(name=n, upper=c[2:].upper(), size=int(sp.Mul(*s)) if s else 1, shape=list(s))
              for n, c, s in plan.inputs + plan.targets]
    params = []
    for name, c, shape, offset, size, init in plan.params:
        kind, a, b = init
        params.append(dict(name=name, cname=c, upper=c[2:].upper(), shape=list(shape), offset=offset,
                           size=size, a=repr(float(a)), b=repr(float(b)), normal=int(kind == "normal")))
    inputs = [f"const {plan.name}_real *{c}" for _, c, _ in plan.inputs]
    targets = [f"const {plan.name}_real *{c}" for _, c, _ in plan.targets]
    work = [dict(name=w.name, offset=offset_code(w.offset)) for w in plan.work]
    step_grads = [dict(name=w.name, offset=offset_code(w.offset)) for w in plan.step_grads]
    values = dict(helpers=plan.helpers, helper_source="\n\n".join(_helpers()[h] for h in plan.helpers),
                  standalone=standalone, blas=blas and "gemm" in plan.helpers,
                  name=plan.name, P=P, version=__version__, source=plan.source, real=plan.real,
                  param_count=plan.param_count, per_sample=plan.work_linear[0], constant=plan.work_linear[1],
                  arrays=arrays, params=params, output_size=plan.output_size, output_name=plan.output.name,
                  input_params=", ".join(inputs), all_params=", ".join(inputs + targets),
                  all_args=", ".join(c for _, c, _ in plan.inputs + plan.targets),
                  reduce=plan.reduce, work=work, forward=plan.forward, loss_lines=plan.loss,
                  backward=plan.backward, step=plan.step, output=plan.output.name, loss=plan.loss_name,
                  seed=(("((real)1 / (real)batch)" if plan.reduce == "mean" else "((real)1)")
                        if "seed" in plan.uses["backward"] else None),
                  zero_grads=[dict(name=n, cname=c, size=next(p["size"] for p in params if p["name"] == n))
                              for n, c, z in plan.grads if z for c in [c[1:]]])
    # what each function's template adds to its lines: the output copy, the loss total, the
    # zeroed gradients of parameters the loss does not reach
    zeroing = {f"d{g['cname']}" for g in values["zero_grads"]}
    arrays = [c for _, c, _ in plan.inputs + plan.targets]
    values["uses"] = dict(
        forward=_pointers_used(plan.uses["forward"] | {plan.output.name}, params, work,
                               [c for _, c, _ in plan.inputs]),
        loss=_pointers_used(plan.uses["loss"] | {plan.loss_name}, params, work, arrays),
        loss_and_grad=_pointers_used(plan.uses["loss"] | plan.uses["backward"] | zeroing | {plan.loss_name},
                                     params, work, arrays, grads=True),
        sgd_step=_pointers_used(plan.uses["loss"] | plan.uses["step"] | {plan.loss_name},
                                params, work + step_grads, arrays))
    unused = values["uses"]["sgd_step"]["unused"]
    if step_grads or "params + " in "".join(plan.step):  # the updates write params themselves
        unused[:] = [a for a in unused if a != "params"]
    else:  # nothing to update: the loss reaches no parameter
        unused += [a for a in ("params", "lr") if a not in unused]
    if plan.input_grad is not None:
        values.update(input_grad=plan.input_grad, input_grad_params=", ".join(
            f"real *{c}" for c in plan.input_grads))
        values["uses"]["input_grad"] = _pointers_used(plan.uses["loss"] | plan.input_uses | {plan.loss_name},
                                                      params, work, arrays + plan.input_grads)
        values["seed_input"] = values["seed"] or (("((real)1 / (real)batch)" if plan.reduce == "mean" else "((real)1)")
                                                  if "seed" in plan.input_uses else None)
    by_name = {b.name: b for b in plan.state_arrays}
    values.update(
        update=plan.update, state_count=plan.state_count, optimizer_text=plan.optimizer_text,
        update_scalars=plan.update_scalars,
        update_params=[p for p in params if p["cname"] in plan.update_uses],
        update_grads=[p for p in params if "d" + p["cname"] in plan.update_uses],
        update_states=[dict(name=n, offset=offset_code(by_name[n].offset)) for n in sorted(plan.update_uses)
                       if n in by_name])
    env = environment()
    return (env.get_template("c_header.h.j2").render(**values),
            env.get_template("c_source.c.j2").render(**values))


def training_memory(c, dtype: str = "float32") -> str:
    """One line naming the memory an SGD step of the network takes in C, as planned."""
    plan = plan_c(c.program, "float" if dtype == "float32" else "double")
    size = 4 if dtype == "float32" else 8
    params, (per, const) = plan.param_count * size, (n * size for n in plan.work_linear)

    def total(batch):
        return f"{params + per * batch + const:,} B at batch {batch}"

    packing = "; with the matrix products' packing space" if any(w.name.startswith("pack") for w in plan.work) \
        else ""
    return (f"{c.graph.name}: training memory planned ({dtype}): parameters {params:,} B, workspace "
            f"{per:,} B per sample" + (f" + {const:,} B" if const else "") +
            f" (each gradient in it only until its parameter is updated{packing}); {total(1)}, {total(64)}")


def render_c_files(c, dtype: str = "float32", blas: bool = False) -> dict:
    """{file name: text} of the C sources for a compiled network; with `blas`, the source
    defines NNCC_CBLAS: its matrix products call cblas_?gemm (link a CBLAS)."""
    plan = plan_c(c.program, "float" if dtype == "float32" else "double")
    header, source = render_c(plan, standalone=True, blas=blas)
    return {f"{plan.name}.h": header, f"{plan.name}.c": source}


def render_c_module(c, blas: bool = False) -> str:
    """A Python module with the numpy module's API that builds and runs the C code (cffi);
    with `blas`, its matrix products call OpenBLAS (the scipy-openblas32 wheel's)."""
    from ...version import __version__
    from ..pymodule import module_values, shape_text
    from ...templating import environment
    parts, cdef, work, products = [], [], {}, False
    for suffix, real, dtype in (("f32", "float", "float32"), ("f64", "double", "float64")):
        plan = plan_c(c.program, real)
        plan.name = f"{c.graph.name}_{suffix}"
        header, source = render_c(plan, standalone=False)
        parts += [header, source]
        cdef.append("\n".join(line for line in header.splitlines() if not line.startswith("#")))
        work[dtype] = plan.work_linear
        products = products or "gemm" in plan.helpers
    values = module_values(c.graph)
    layout, start = [], 0
    for p in c.graph.params:
        size = math.prod(int(d) for d in p.shape)
        layout.append(dict(name=p.name, start=start, stop=start + size, shape=shape_text(p.shape)))
        start += size
    values.update(layout=layout, param_count=start, flat_params=True,
                  name=c.graph.name, version=__version__, cdef="\n".join(cdef), c_source="\n".join(parts),
                  work_f32=work["float32"], work_f64=work["float64"],
                  output_shape=repr(tuple(c.graph.tensors[c.graph.output].shape)),
                  output_name=c.graph.output, reduce="mean" if c.graph.reduce == "mean" else "sum",
                  blas=blas and products,  # no matrix product to give BLAS: nothing to link
                  input_grads=c.program.input_backward is not None)
    return environment().get_template("c_module.py.j2").render(**values)
