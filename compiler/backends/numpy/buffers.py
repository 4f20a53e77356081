"""Numpy lines -> the same lines writing into buffers that the module keeps between calls.

Each line's numpy expression is rewritten bottom-up: an operation whose result's shape and
kind (real or boolean) are known -- a ufunc, a matrix product, a sum or max over axes --
gets `out=` a buffer.  The same ufuncs on the same operands in the same order as the
allocating code: the same bits, without the allocations (a big array is mapped page by
page each time it is made anew, which for a wide layer's gradient costs more than adding
it into the weights).  Where a call costs more than the arithmetic of a small layer, the
call is the cheaper one: a matrix product is np.dot's (the same BLAS product as
np.matmul's, for half the overhead), a sum over one axis of a matrix a product with ones
(the same terms added in BLAS's order), a number the function computes at run time a 0-d
array set once (numpy converts a Python number on every call), and an operation on an
array of one element writes a buffer other than its operands' (numpy takes a slow path
for one in place).

  a line's value    a buffer of the function's workspace, free again after the last line
                    that reads the value or a view of it; values handed to the caller
                    (forward's output, loss_and_grad's gradients) are made fresh;
  in place          an elementwise operation writes into its first operand when that is
                    a temporary of the same line with the result's shape;
  temporaries       a line's other intermediate values: buffers free again once the
                    operation reading them is done;
  anything else     (np.where, helpers, views) is left as written, reading its operands'
                    buffers.

A buffer is (shape, boolean?); shapes hold None for the batch axis.  Only the extents
the Program states are trusted: the line's own shape is checked against what its
operations compute.
"""
from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass

BATCH = None  # the batch axis in a buffer's shape

_BINARY = {ast.Add: "add", ast.Sub: "subtract", ast.Mult: "multiply", ast.Div: "true_divide",
           ast.BitAnd: "bitwise_and", ast.BitOr: "bitwise_or"}
_COMPARE = {ast.Gt: "greater", ast.GtE: "greater_equal", ast.Lt: "less", ast.LtE: "less_equal",
            ast.Eq: "equal", ast.NotEq: "not_equal"}
_UNARY_CALLS = {"exp", "log", "tanh", "abs", "sign", "sqrt", "negative", "square"}
_BINARY_CALLS = {"maximum", "minimum", "logaddexp"}
_REDUCE = {"sum": "add", "max": "maximum"}
# calls whose result is a new array that nothing else holds (written in place by its reader)
_FRESH_CALLS = {"where", "tensordot", "einsum", "zeros_like", "_sigmoid", "_erf", "_clamped_log",
                "_logsumexp", "_unpatches", "_max_over", "_first_argmax", "_route_max", "_window"}


# helpers that take out= a buffer of the shape the Program gives their line
_OUT_HELPERS = {"_im2col", "_route_max"}


# the numbers a generated function binds before the lines that read them; an operation
# reads one as a 0-d array of the dtype (numpy converts a Python number on every call)
_RUNTIME_SCALARS = {"seed", "lr", "clip", "step"}

# the nodes of an expression of numbers alone
_ARITHMETIC = (ast.Constant, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop)


@dataclass
class _Info:
    shape: tuple | None = None  # None: unknown; () a scalar
    kind: str | None = None  # "f" real array, "b" boolean array, "s" Python number; None unknown
    fresh: bool = False  # a new array no name holds
    op: str | None = None  # how it is rewritten: "elementwise", "matmul", "reduce"


class Workspace:
    """The buffers of one function body: which are free, and which values hold which."""

    def __init__(self):
        self.constants: list = []  # the numbers read as arrays of the dtype (a Python number
        # costs numpy a conversion on every call, a third of a small operation's time)
        self.buffers: list = []  # (shape, boolean?)
        self.free: list = []  # buffer indices free for reuse
        self.holders: dict = {}  # buffer index -> the bindings whose value lives in it
        self.scalars: dict = {}  # code of a number computed at run time -> its 0-d buffer

    def take(self, shape, kind) -> int:
        key = (shape, kind == "b")
        for k in self.free:
            if self.buffers[k] == key:
                self.free.remove(k)
                return k
        self.buffers.append(key)
        return len(self.buffers) - 1

    def constant(self, value, shape=None) -> str:
        """A number as an array of the dtype: 0-d, or filled to `shape` (np.maximum and
        np.minimum take a path five times slower with a 0-d operand than with two arrays)."""
        key = value if shape is None else (value, shape)
        if key not in self.constants:
            self.constants.append(key)
        return constant_name(self.constants.index(key))

    def release(self, k: int):
        if not self.holders.get(k):
            self.free.append(k)


def name(k) -> str:
    """A workspace buffer's variable, or the array a line writes into (a name)."""
    return k if isinstance(k, str) else f"_b{k}"


def constant_name(k: int) -> str:
    return f"_k{k}"


def plan_body(parts: list, shapes: dict, returned: set, kept: set) -> tuple:
    """(parts, buffers, constants) of one function body made of consecutive parts (lists of
    lines): their lines rewritten to write into buffers, `shapes` the full shape of each named
    array (None for the batch axis), `returned` the names handed to the caller, `kept` those
    read after the last line."""
    placed = _plan_lines([line for part in parts for line in part], shapes, returned, kept)
    lines, buffers, constants = placed
    out, start = [], 0
    for part in parts:
        out.append([x for written in lines[start:start + len(part)] for x in written])
        start += len(part)
    return tuple(out), buffers, constants


def _plan_lines(lines: list, shapes: dict, returned: set, kept: set) -> tuple:
    trees = [ast.parse(line.code, mode="eval").body for line in lines]
    # each binding of a name (a line assigning it), and the last line reading it
    binding, last = {}, {}
    for k, (line, tree) in enumerate(zip(lines, trees)):
        for n in {x.id for x in ast.walk(tree) if isinstance(x, ast.Name)}:
            if n in binding:
                last[binding[n]] = k
        binding[line.target] = k
        last.setdefault(k, k)
    end = len(lines)
    for n in kept | returned:
        if n in binding:
            last[binding[n]] = end
    dying = {}  # line -> the bindings it reads for the last time
    for b_id, at in last.items():
        dying.setdefault(at, []).append(b_id)
    ws = Workspace()
    holds = {}  # binding -> the buffers its value may live in
    out = []
    setters = {}  # line -> the 0-d buffers first read there
    env = {}  # name -> the buffers its current value may live in
    for k, (line, tree) in enumerate(zip(lines, trees)):
        known = set(ws.scalars)
        rewriter = _Rewriter(shapes, ws, env)
        rewriter.infer(tree)
        shape = shapes.get(line.target)
        info = tree.info
        if info.shape is not None and shape is not None and info.shape != shape:
            raise AssertionError(f"line {line.target} = {line.code}: computes shape {info.shape}, "
                                 f"the Program says {shape}")
        escapes = line.target in returned
        if line.into:  # into the array the target names: its own variable stays bound to it
            rewriter.no_heir = line.target in rewriter.names  # it reads the array it overwrites
            if info.op and info.shape == shape and info.kind == "f":
                code = rewriter.emit(tree, line.target)
            else:
                code = f"np.copyto({line.target}, {rewriter._plain(tree)})"
            held = set()
        elif shape is not None and not escapes and isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) \
                and tree.func.id in _OUT_HELPERS:
            dest = ws.take(shape, "f")
            code, held = f"{line.code[:-1]}, out={name(dest)})", {dest}
        elif shape is not None and info.shape is not None and info.op and not escapes and info.kind in ("f", "b"):
            dest = ws.take(shape, info.kind)
            code = rewriter.emit(tree, dest)
            held = {dest}
            if _nesting(code) > MAX_NESTING:  # each operation a call: a long sum nests deeply
                code, held = line.code, set()
                ws.free.append(dest)
        else:
            code = rewriter._plain(tree)
            held = set()
            if not (info.fresh or info.op):
                # a value that is not new may be a view of any array this line read, its
                # temporaries too: they stay until the value dies
                held = set().union(*[env.get(n, set()) for n in rewriter.names], rewriter.temps_done)
                rewriter.temps_done = []
            if escapes and held:
                code, held = f"{_paren(code)}.copy()", set()
        for b in held:
            ws.holders.setdefault(b, set()).add(k)
        holds[k] = held
        env[line.target] = held
        # the buffers of bindings read for the last time here are free after this line
        for b_id in dying.get(k, ()):
            for buf in holds.get(b_id, ()):
                ws.holders[buf].discard(b_id)
                ws.release(buf)
        for t in rewriter.temps_done:
            ws.release(t)
        if code != line.code or line.written:  # the plain expression stays readable above the calls
            note = line.written or f"{line.target} = {line.code}"
            line = dataclasses.replace(line, comment=f"{line.comment}\n{note}" if line.comment else note)
        out.append(dataclasses.replace(line, code=code))
        setters[k] = [c for c in ws.scalars if c not in known]
    return _with_setters(out, setters, ws.scalars), tuple(ws.buffers), tuple(ws.constants)


def _with_setters(lines: list, setters: dict, scalars: dict) -> list:
    """lines, each a list of the lines to write in its place: a 0-d buffer of a run-time number
    is set just before the first line reading it (inside the same errstate block: a line of
    its own quieting nothing would split one)."""
    out = []
    for k, line in enumerate(lines):
        out.append([dataclasses.replace(line, target=name(scalars[code]), code=f"{name(scalars[code])}[()] = {code}",
                                        comment="", into=True, anchors=(), reads=())
                    for code in setters.get(k, ())] + [line])
    return out


def infer_shape(node, shapes: dict):
    """The shape of an expression's array value (None for the batch axis), or None when it
    is not known or not an array."""
    info = _Rewriter(shapes, Workspace(), {}).infer(node)
    return info.shape if info.kind in ("f", "b") else None


class _Rewriter:
    def __init__(self, shapes, ws, env):
        self.shapes = shapes
        self.ws = ws
        self.env = env  # name -> buffers its value may live in
        self.names = set()  # names this line reads
        self.temps_done = []  # temporaries to free once the line is done
        # the destination is an array the line also reads: only the last operation may write it
        self.no_heir = False

    # ---- pass 1: shape and kind of every node
    def infer(self, node) -> _Info:
        info = self._infer(node)
        node.info = info
        return info

    def _infer(self, node) -> _Info:
        if isinstance(node, ast.Constant):
            return _Info((), "s") if isinstance(node.value, (int, float)) and not isinstance(node.value, bool) \
                else _Info()
        if isinstance(node, ast.Name):
            self.names.add(node.id)
            if node.id in self.shapes:
                return _Info(self.shapes[node.id], "f")
            return _Info((), "s") if node.id in ("batch", "seed", "lr", "step", "clip") else _Info()
        if isinstance(node, ast.BinOp):
            a, b = self.infer(node.left), self.infer(node.right)
            kind = _kind(type(node.op), a.kind, b.kind)
            shape = _broadcast(a.shape, b.shape)
            if isinstance(node.op, ast.MatMult):
                return _Info(_matmul(a.shape, b.shape), "f" if a.kind == b.kind == "f" else None, True,
                             "matmul" if a.kind == b.kind == "f" else None)
            if isinstance(node.op, ast.Pow):
                square = isinstance(node.right, ast.Constant) and node.right.value == 2
                return _Info(shape, kind, a.kind != "s", "elementwise" if square and a.kind == "f" else None)
            arrays = "s" not in (a.kind, b.kind) or {a.kind, b.kind} == {"s", "f"}
            if type(node.op) in _BINARY and kind in ("f", "b") and arrays:
                return _Info(shape, kind, True, "elementwise")
            return _Info(shape, kind, kind not in (None, "s"))
        if isinstance(node, ast.UnaryOp):
            a = self.infer(node.operand)
            if isinstance(node.op, ast.USub) and a.kind == "f":
                return _Info(a.shape, "f", True, "elementwise")
            if isinstance(node.op, ast.Invert) and a.kind == "b":
                return _Info(a.shape, "b", True, "elementwise")
            return _Info(a.shape, a.kind, a.kind not in (None, "s"))
        if isinstance(node, ast.Compare):
            parts = [self.infer(x) for x in [node.left] + node.comparators]
            if len(node.ops) != 1 or type(node.ops[0]) not in _COMPARE:
                return _Info()
            a, b = parts
            ok = a.kind in ("f", "s") and b.kind in ("f", "s") and "f" in (a.kind, b.kind)
            return _Info(_broadcast(a.shape, b.shape), "b", True, "elementwise" if ok else None)
        if isinstance(node, ast.Subscript):
            a = self.infer(node.value)
            self._infer_all(node.slice)
            return _Info(_subscript(a.shape, node.slice), a.kind, _view_fresh(a)) if a.kind in ("f", "b") else _Info()
        if isinstance(node, ast.Attribute):
            a = self.infer(node.value)
            if node.attr == "T" and a.shape is not None:
                return _Info(a.shape[::-1], a.kind, _view_fresh(a))
            return _Info()
        if isinstance(node, ast.Call):
            return self._infer_call(node)
        self._infer_all(node)
        return _Info()

    def _infer_all(self, node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.infer(child)

    def _infer_call(self, node) -> _Info:
        f = node.func
        args = [self.infer(a) for a in node.args]
        for kw in node.keywords:
            self.infer(kw.value)
        module_call = _module_call(node)
        if isinstance(f, ast.Attribute) and not module_call:  # a method
            a = self.infer(f.value)
            if f.attr in _REDUCE and a.kind == "f" and not node.args and a.shape is not None:
                axes = _axis(node)
                if axes is None or not axes or any(not 0 <= x < len(a.shape) for x in axes):
                    return _Info()
                return _Info(tuple(n for x, n in enumerate(a.shape) if x not in axes), "f", True, "reduce")
            if f.attr == "reshape" and a.shape is not None:
                return _Info(_extents(node.args), a.kind, _view_fresh(a))
            if f.attr == "transpose" and a.shape is not None and len(node.args) == 1:
                perm = _ints(node.args[0])
                if perm is not None and sorted(perm) == list(range(len(a.shape))):
                    return _Info(tuple(a.shape[p] for p in perm), a.kind, _view_fresh(a))
            if f.attr == "astype":
                return _Info(a.shape, "f", True)
            if f.attr == "copy":
                return _Info(a.shape, a.kind, True)
            return _Info()
        called = f.attr if module_call else f.id if isinstance(f, ast.Name) else None
        if called == "float" and not module_call:
            return _Info((), "s")
        fresh = called in _FRESH_CALLS
        if module_call and not node.keywords and all(a.kind in ("f", "s") for a in args) and \
                any(a.kind == "f" for a in args) and \
                ((called in _UNARY_CALLS and len(args) == 1) or (called in _BINARY_CALLS and len(args) == 2)):
            shape = args[0].shape if len(args) == 1 else _broadcast(args[0].shape, args[1].shape)
            return _Info(shape, "f", True, "elementwise")
        if called == "tensordot" and module_call and len(args) == 2:
            shape = _tensordot_shape(node, args)
            if shape is not None:
                return _Info(shape, "f", True, "tensordot")
        if called == "where" and len(args) == 3:
            shape = _broadcast(args[0].shape, _broadcast(args[1].shape, args[2].shape))
            kind = "f" if "f" in (args[1].kind, args[2].kind) else None
            return _Info(shape, kind, True)
        if called == "broadcast_to" and len(args) == 2 and isinstance(node.args[1], ast.Tuple):
            # a read-only view; of a Python number, a float64 one
            return _Info(_extents(node.args[1].elts), args[0].kind if args[0].kind in ("f", "b") else None)
        if called == "_sigmoid" and len(args) == 1 and args[0].kind == "f":  # a helper taking out
            return _Info(args[0].shape, "f", True, "elementwise")
        if called == "_max_over" and len(args) == 2 and args[0].kind == "f" and args[0].shape is not None:
            axes = _ints(node.args[1])  # a new array: the operand's shape less the window axes
            if axes is not None:
                return _Info(tuple(n for d, n in enumerate(args[0].shape) if d not in axes), "f", True)
        if called == "_first_argmax" and len(args) == 2 and args[0].kind == "f":  # ... of its operand's shape
            return _Info(args[0].shape, "f", True, "elementwise")
        return _Info(None, None, fresh)

    # ---- pass 2: out= buffers
    def emit(self, node, dest) -> str:
        """Code for node, writing into buffer `dest` (an index) if given and node is an
        operation rewritten; its result's buffer, if a temporary, is node.buffer."""
        info = node.info
        node.buffer = None
        if info.op is None or info.shape is None or info.kind not in ("f", "b"):
            if dest is not None:
                raise AssertionError("a destination for an operation that is not rewritten")
            return self._plain(node)
        operands = _operands(node)
        if info.op == "elementwise":
            # one operand of the result's shape may take our buffer (it is computed
            # there, then we compute in place), or lend us its temporary
            same = [c for c in operands if c.info.shape == info.shape and c.info.kind == info.kind]
            if _single(info.shape):
                # numpy takes a path three times slower for an operation in place on an array
                # of one element (a batch of one, one output): each writes a buffer of its own
                same = []
            heir = next((c for c in same if c.info.op), None) if dest is not None and not self.no_heir else None
            filled = info.shape if isinstance(node, ast.Call) and _module_call(node) and \
                node.func.attr in ("maximum", "minimum") else None
            codes = [self._constant(child, filled) or (filled is None and self._scalar(child))
                     or self.emit(child, dest if child is heir else None)
                     for child in operands]
            out = dest
            if out is None:
                lender = next((c for c in same if c.buffer is not None), None)
                if lender is not None:
                    out, lender.buffer = lender.buffer, None
                else:
                    out = self.ws.take(info.shape, info.kind)
            for child in operands:
                if child.buffer is not None:
                    self.temps_done.append(child.buffer)
            node.buffer = out if dest is None else None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_sigmoid":
                # the helper's four operations written out (a call costs more than a small
                # layer's operation; the line quiets exp's overflow, as the helper does)
                one = self.ws.constant(1)
                b = [name(out)] * 4
                if _single(info.shape):
                    b[:3] = [name(self.ws.take(info.shape, "f")) for _ in range(3)]
                    self.temps_done.extend(int(x[2:]) for x in b[:3])
                return f"np.reciprocal(np.add(np.exp(np.negative({codes[0]}, {b[0]}), {b[1]}), {one}, {b[2]}), {b[3]})"
            return _call(node, codes, out)
        # a matrix product or a reduction reads whole operands: its buffer is none of them
        codes = [self.emit(child, None) for child in operands]
        out = dest if dest is not None else self.ws.take(info.shape, info.kind)
        for child in operands:
            if child.buffer is not None:
                self.temps_done.append(child.buffer)
        node.buffer = out if dest is None else None
        summed = operands[0].info.shape if info.op == "reduce" and node.func.attr == "sum" else None
        if summed is not None and len(info.shape) == 1 and isinstance(out, int):
            # a sum over every axis but the first or the last as a product with ones: numpy's
            # reduction costs twice BLAS's call on a small array (a bias's gradient)
            axes = set(_axis(node))
            kept = [d for d in range(len(summed)) if d not in axes]
            if kept in ([0], [len(summed) - 1]):
                extents = tuple(n for d, n in enumerate(summed) if d in axes)
                ones = self.ws.constant(1, extents)
                if len(summed) == 2:
                    pair = (codes[0], ones) if kept == [0] else (ones, codes[0])
                else:
                    n = "batch" if info.shape[0] is BATCH else info.shape[0]
                    pair = (f"{_paren(codes[0])}.reshape({n}, -1)", f"{ones}.reshape(-1)") if kept == [0] else \
                        (f"{ones}.reshape(-1)", f"{_paren(codes[0])}.reshape(-1, {n})")
                return f"np.dot({pair[0]}, {pair[1]}, {name(out)})"
        return _call(node, codes, out)

    def _constant(self, node, shape=None) -> str | None:
        """The name of a number the workspace holds as an array, for an operand that is
        a number (computed here, in double precision, as Python would at run time)."""
        if node.info.kind != "s" or not all(isinstance(x, _ARITHMETIC) for x in ast.walk(node)):
            return None
        if any(isinstance(x, ast.Constant) and (isinstance(x.value, bool) or not isinstance(x.value, (int, float)))
               for x in ast.walk(node)):
            return None
        node.buffer = None
        value = eval(compile(ast.Expression(node), "<constant>", "eval"), {"__builtins__": {}})  # numbers only
        return self.ws.constant(value, shape) if isinstance(value, (int, float)) else None

    def _scalar(self, node) -> str | None:
        """The 0-d buffer holding a number the function computes at run time (-lr / batch,
        say) for an operand that is one, set once before the first line reading it."""
        if node.info.kind != "s" or not all(isinstance(x, _ARITHMETIC + (ast.Name, ast.Load)) for x in ast.walk(node)):
            return None
        if not any(isinstance(x, ast.Name) for x in ast.walk(node)) or \
                not all(x.id in _RUNTIME_SCALARS for x in ast.walk(node) if isinstance(x, ast.Name)):
            return None
        node.buffer = None
        code = ast.unparse(node)
        if code not in self.ws.scalars:
            self.ws.scalars[code] = self.ws.take((), "f")  # never released: it is the function's
        return name(self.ws.scalars[code])

    def _plain(self, node) -> str:
        """Node as written, its rewritable sub-operations writing into temporaries."""
        class Inner(ast.NodeTransformer):
            def visit(inner, child):
                if child is node or not hasattr(child, "info"):
                    return inner.generic_visit(child)
                c = child.info
                if c.op and c.shape is not None and c.kind in ("f", "b"):
                    code = self.emit(child, None)
                    if child.buffer is not None:
                        self.temps_done.append(child.buffer)
                    return ast.parse(code, mode="eval").body
                return inner.generic_visit(child)
        return ast.unparse(Inner().visit(node))


def _single(shape) -> bool:
    """Is an array of this shape one element at a batch of one?"""
    return all(n is BATCH or n == 1 for n in shape)


def _view_fresh(a: _Info) -> bool:
    """Is a view of a value with info `a` a new array nothing else holds?  Not if the value
    is an operation: that is written into a buffer of the workspace."""
    return a.fresh and not a.op


def _operands(node) -> list:
    if isinstance(node, ast.BinOp):
        return [node.left] if isinstance(node.op, ast.Pow) else [node.left, node.right]  # x**2: square(x)
    if isinstance(node, ast.UnaryOp):
        return [node.operand]
    if isinstance(node, ast.Compare):
        return [node.left, node.comparators[0]]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _REDUCE \
            and not _module_call(node):
        return [node.func.value]
    return list(node.args)


def _call(node, codes, out) -> str:
    """The operation as a call writing into buffer `out`: positionally, which numpy parses
    faster than a keyword, except for a reduction (axis= and out= say what they are) and
    maximum and minimum (numpy deprecates their positional out)."""
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.MatMult) and isinstance(out, int) and \
                len(node.left.info.shape) == len(node.right.info.shape) == 2:
            # into a buffer of the workspace (C-contiguous, of the dtype, as np.dot's out
            # must be): the same BLAS product as np.matmul's, at half its call's cost
            return f"np.dot({codes[0]}, {codes[1]}, {name(out)})"
        f = "matmul" if isinstance(node.op, ast.MatMult) else "square" if isinstance(node.op, ast.Pow) \
            else _BINARY[type(node.op)]
    elif isinstance(node, ast.UnaryOp):
        f = "negative" if isinstance(node.op, ast.USub) else "invert"
    elif isinstance(node, ast.Compare):
        f = _COMPARE[type(node.ops[0])]
    elif isinstance(node.func, ast.Name):  # a runtime helper
        return f"{node.func.id}({', '.join(codes)}, {name(out)})"
    elif node.func.attr == "tensordot":  # as tensordot does it: reshapes and one matrix product, into out
        (a, b), (ax, bx) = (x.info.shape for x in node.args), (_ints(p) for p in node.keywords[0].value.elts)
        n = len(ax)
        k = _extent_product(a[ax[0]:ax[0] + n])
        m = _extent_product(a[:ax[0]] + a[ax[0] + n:])
        cols = _extent_product(b[:bx[0]] + b[bx[0] + n:])
        first = f"{_paren(codes[0])}.reshape({m}, {k})" if ax[0] else f"{_paren(codes[0])}.reshape({k}, {m}).T"
        second = f"{_paren(codes[1])}.reshape({k}, {cols})" if not bx[0] else f"{_paren(codes[1])}.reshape({cols}, {k}).T"
        shape = ", ".join("batch" if x is BATCH else str(x) for x in node.info.shape)
        return f"np.dot({first}, {second}, out={name(out)}.reshape({m}, {cols})).reshape({shape})"
    elif node.func.attr in _REDUCE and not _module_call(node):
        axis = ast.unparse(next(kw.value for kw in node.keywords if kw.arg == "axis"))
        return f"np.{_REDUCE[node.func.attr]}.reduce({codes[0]}, axis={axis}, out={name(out)})"
    else:
        f = node.func.attr
    if f in ("maximum", "minimum"):
        return f"np.{f}({', '.join(codes)}, out={name(out)})"
    return f"np.{f}({', '.join(codes)}, {name(out)})"


def _tensordot_shape(node, args):
    """The shape of np.tensordot(a, b, axes=(a's last n axes, b's first n)), when one matrix
    product of the two reshaped does it with at most one extent in each reshape holding the
    batch (then written -1); else None."""
    if len(node.keywords) != 1 or node.keywords[0].arg != "axes" or not isinstance(node.keywords[0].value, ast.Tuple):
        return None
    parts = node.keywords[0].value.elts
    if len(parts) != 2 or any(not isinstance(p, ast.List) for p in parts):
        return None
    (a, b), (ax, bx) = (x.shape for x in args), (_ints(p) for p in parts)
    if a is None or b is None or not ax or bx is None or len(ax) != len(bx) or any(x.kind != "f" for x in args):
        return None
    n = len(ax)
    # each operand's contracted axes in order, and leading or trailing: a reshape, transposed or not
    for shape, axes in ((a, ax), (b, bx)):
        if axes not in (list(range(n)), list(range(len(shape) - n, len(shape)))):
            return None
    if tuple(a[x] for x in ax) != tuple(b[x] for x in bx):
        return None
    free_a, free_b = a[:ax[0]] + a[ax[0] + n:], b[:bx[0]] + b[bx[0] + n:]
    m, k, cols = (_extent_product(e) for e in (free_a, a[ax[0]:ax[0] + n], free_b))
    if m == k == "-1" or k == cols == "-1" or m == cols == "-1":
        return None
    return tuple(free_a) + tuple(free_b)


def _extent_product(shape) -> str:
    """The number of elements of axes `shape` as code: a number, or -1 when the batch is one."""
    n = 1
    for x in shape:
        if x is BATCH:
            return "-1"
        n *= x
    return str(n)


def _module_call(node) -> bool:
    """Is node a call np.f(...)?"""
    f = node.func
    return isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "np"


def _kind(op, a, b):
    if a is None or b is None:
        return None
    if "f" in (a, b):
        return "f" if "b" not in (a, b) or op is not ast.Pow else None
    if a == b == "b":
        return "b" if op in (ast.BitAnd, ast.BitOr, ast.Mult, ast.Add) else None
    if a == b == "s":
        return "s"
    return None  # a boolean array and a Python number: numpy's default types


def _broadcast(a, b):
    if a is None or b is None:
        return None
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x == y:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif y == 1:
            out.append(x)
        else:  # the batch against a number: only equal at one batch size
            return None
    return tuple(out)


def _matmul(a, b):
    if a is None or b is None or not a or not b:
        return None
    if len(a) == 2 and len(b) == 2:
        return (a[0], b[1]) if a[1] == b[0] else None
    if len(a) == 1 and len(b) == 2:
        return (b[1],) if a[0] == b[0] else None
    if len(a) == 2 and len(b) == 1:
        return (a[0],) if a[1] == b[0] else None
    return None


def _axis(node):
    """The axes of a reduction's axis= keyword as a tuple, or None."""
    if len(node.keywords) != 1 or node.keywords[0].arg != "axis":
        return None
    v = node.keywords[0].value
    if isinstance(v, ast.Constant) and isinstance(v.value, int):
        return (v.value,)
    return tuple(_ints(v)) if _ints(v) is not None else None


def _ints(node):
    if isinstance(node, (ast.Tuple, ast.List)) and \
            all(isinstance(e, ast.Constant) and isinstance(e.value, int) for e in node.elts):
        return [e.value for e in node.elts]
    return None


def _extents(args):
    out = []
    for a in args:
        if isinstance(a, ast.Name) and a.id == "batch":
            out.append(BATCH)
        elif isinstance(a, ast.Constant) and isinstance(a.value, int) and a.value >= 0:
            out.append(a.value)
        else:
            return None
    return tuple(out)


def _subscript(shape, index):
    """The shape of a[index] for slices, None (a new axis) and integers."""
    if shape is None:
        return None
    items = index.elts if isinstance(index, ast.Tuple) else [index]
    out, axis = [], 0
    for item in items:
        if isinstance(item, ast.Constant) and item.value is None:
            out.append(1)
            continue
        if axis >= len(shape):
            return None
        n = shape[axis]
        axis += 1
        if isinstance(item, ast.Constant) and isinstance(item.value, int):
            continue
        if not isinstance(item, ast.Slice):
            return None
        parts = [_int(p) for p in (item.lower, item.upper, item.step)]
        if parts == [None, None, None] and all(p is None for p in (item.lower, item.upper, item.step)):
            out.append(n)
            continue
        if n is BATCH or any(p is False for p in parts):
            return None
        out.append(len(range(n)[slice(*parts)]))
    return tuple(out) + tuple(shape[axis:])


def _int(node):
    """An int for a slice part, None for a missing one, False otherwise."""
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return -node.operand.value
    return False


# brackets in one line: CPython refuses 200, and a sum of n terms as calls nests n deep
MAX_NESTING = 100


def _nesting(code: str) -> int:
    depth = top = 0
    for ch in code:
        if ch in "([{":
            depth += 1
            top = max(top, depth)
        elif ch in ")]}":
            depth -= 1
    return top


def _paren(code: str) -> str:
    return code if code.isidentifier() or code.endswith(")") and code.startswith(("np.", "_")) else f"({code})"
