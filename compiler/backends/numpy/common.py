"""Numpy lines -> the same lines computing each repeated operation once.

The loss's lines and the backward pass's are lowered statement by statement, so an
operation both read -- the quadratic loss's `a - y`, say, which its derivative reads
again -- is written out twice.  Here an operation on arrays that several places of one
function body compute from the same values becomes a line of its own, `_cN = ...`,
before the first of them, and each of them reads `_cN`.  numpy evaluates every operand
eagerly and each operation alike wherever it runs, so the values are the same bits.

Also here: the loss's total.  When the per-sample loss is c times a sum of squares and
nothing but the total reads it, the total is c times one dot product of the terms with
themselves (two operations where the sum per sample, the scaling and the sum over the
batch take four).
"""
from __future__ import annotations

import ast
import dataclasses


# numpy's functions whose value depends on their operands alone
_PURE = {"exp", "log", "tanh", "abs", "sign", "sqrt", "negative", "square", "maximum", "minimum",
         "logaddexp", "where", "reciprocal"}
# the runtime helpers (backends/numpy/runtime.py) of the same kind; each makes a new array
_PURE_HELPERS = {"_sigmoid", "_erf", "_logsumexp", "_clamped_log", "_max_over", "_first_argmax", "_route_max"}
_OPERATIONS = (ast.BinOp, ast.UnaryOp, ast.Compare, ast.Call)
# what else a pure operation may hold (no conditional evaluation: IfExp, BoolOp)
_PLAIN = _OPERATIONS + (ast.Name, ast.Constant, ast.Attribute, ast.Subscript, ast.Slice, ast.Tuple,
                        ast.operator, ast.unaryop, ast.cmpop, ast.expr_context, ast.keyword)


def total_line(loss_var: str, target: str, lines: list) -> tuple:
    """(lines, scale): `lines` (the loss's) with a last line `target = ` the sum of `loss_var`
    over the batch, and the number (code, or "") the total is to be multiplied by.  When the
    line computing `loss_var` is c times a sum of squares that nothing else reads, that line
    becomes the dot product of the terms with themselves, and c the scale."""
    plain = _new_line(lines[-1], target, f"np.add.reduce({loss_var}, axis=None)", lines[-1].quiet)
    if lines[-1].target != loss_var or any(_reads(x, loss_var) for x in lines[:-1]):
        return lines + [plain], ""
    last = lines[-1]
    terms = _scaled_squares(ast.parse(last.code, mode="eval").body)
    if terms is None:
        return lines + [plain], ""
    scale, terms = terms
    return lines[:-1] + [dataclasses.replace(last, target=target, code=f"np.vdot({terms}, {terms})")], scale


def routed(lines: list, shapes: dict, forward: list) -> tuple:
    """(lines, whether any changed): a line `g * _first_argmax(a, axes)` (the max-pool's
    backward), with g constant over each window, made `_route_max(a, axes, g)`: g routed
    to each window's first maximum without the one-hot array.  Where a = np.maximum(y, 0)
    (a line of `forward`) and the only reader of the result is `d_y = result*(y > 0)` (the
    relu's backward), that line goes into this one as positive=True: at a window's first
    maximum, y > 0 exactly where the maximum is, which is a quarter of the comparisons."""
    from .buffers import infer_shape
    relu = {}  # a -> y, of each line a = np.maximum(y, 0)
    for line in forward:
        tree = ast.parse(line.code, mode="eval").body
        if isinstance(tree, ast.Call) and ast.unparse(tree.func) == "np.maximum" and len(tree.args) == 2 and \
                isinstance(tree.args[1], ast.Constant) and tree.args[1].value == 0 and isinstance(tree.args[0], ast.Name):
            relu[line.target] = tree.args[0].id
    out, changed, folded = [], False, set()
    for k, line in enumerate(lines):
        if k in folded:
            continue
        tree = ast.parse(line.code, mode="eval").body
        if isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.Mult):
            for mask, g in ((tree.right, tree.left), (tree.left, tree.right)):
                if isinstance(mask, ast.Call) and isinstance(mask.func, ast.Name) and \
                        mask.func.id == "_first_argmax" and len(mask.args) == 2 and not mask.keywords:
                    axes = ast.literal_eval(mask.args[1])
                    a, shape = infer_shape(mask.args[0], shapes), infer_shape(g, shapes)
                    if a is not None and shape is not None and len(shape) == len(a) and \
                            all(shape[n] == 1 for n in axes):
                        arg = ast.unparse(mask.args[0])
                        written = line.written or f"{line.target} = {line.code}"
                        code = f"_route_max({arg}, {axes}, {ast.unparse(g)})"
                        j = _relu_reader(lines, k, relu.get(arg))
                        if j is not None:
                            folded.add(j)
                            code = code[:-1] + ", positive=True)"
                            written += "\n" + (lines[j].written or f"{lines[j].target} = {lines[j].code}")
                            comment = "\n".join(c for c in (line.comment, lines[j].comment) if c)
                            line = dataclasses.replace(line, target=lines[j].target, comment=comment,
                                                       anchors=line.anchors + lines[j].anchors)
                        line = dataclasses.replace(line, code=code, written=written)
                        changed = True
                    break
        out.append(line)
    return out, changed


def _relu_reader(lines: list, k: int, y: str | None):
    """The index of the line `d_y = t*(y > 0)` (or `(y > 0)*t`), t line k's target, when it is
    the only line reading t; else None."""
    if y is None:
        return None
    t = lines[k].target
    readers = [j for j, line in enumerate(lines) if j != k and _reads(line, t)]
    if len(readers) != 1:
        return None
    tree = ast.parse(lines[readers[0]].code, mode="eval").body
    if not (isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.Mult)):
        return None
    for value, test in ((tree.left, tree.right), (tree.right, tree.left)):
        if isinstance(value, ast.Name) and value.id == t and isinstance(test, ast.Compare) and \
                len(test.ops) == 1 and isinstance(test.ops[0], ast.Gt) and \
                isinstance(test.left, ast.Name) and test.left.id == y and \
                isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value == 0:
            return readers[0]
    return None


def hoist(parts: list, shapes: dict) -> tuple:
    """(parts, shapes): consecutive parts of one body (lists of Line) with each operation
    computed in two places or more from the same values made a line of its own; `shapes`
    gains the shapes of the new lines (None for the batch axis) where they are known."""
    from .buffers import infer_shape  # the rewriter's own inference of shapes
    lines = [line for part in parts for line in part]
    trees = [ast.parse(line.code, mode="eval").body for line in lines]
    versions = _versions(lines)
    lazy = {k for k, tree in enumerate(trees) if any(isinstance(x, (ast.IfExp, ast.BoolOp)) for x in ast.walk(tree))}
    found = []  # (key, keys of the operations around it) of each operation
    for k, tree in enumerate(trees):
        if k not in lazy:
            _occurrences(tree, versions[k], (), found)
    counts = {}
    for key, _ in found:
        counts[key] = counts.get(key, 0) + 1
    repeated = {key for key, n in counts.items() if n > 1}
    # an operation always computed inside a larger one computed once goes with it
    shared = set()
    for key, around in found:
        if key in repeated and not repeated.intersection(around):
            shared.add(key)
    shared = {key for key in shared if sum(1 for k2, around in found
                                          if k2 == key and not repeated.intersection(around)) > 1}
    if not shared:
        return parts, shapes
    shapes = dict(shapes)
    made = {}  # key -> (its variable, the line index it goes before)
    taken = {line.target for line in lines}
    fresh = (f"_c{k}" for k in range(10 ** 6))
    before = {}  # line index -> the new lines before it
    for k, tree in enumerate(trees):
        if k in lazy:
            continue

        def replace(node):
            key = _key(node, versions[k]) if isinstance(node, _OPERATIONS) and _pure(node) else None
            if key in shared:
                if key not in made:
                    inner = replace_children(node)
                    shape = infer_shape(inner, shapes)
                    if shape is None:
                        return replace_children(node)
                    v = next(n for n in fresh if n not in taken)
                    taken.add(v)
                    shapes[v] = shape
                    made[key] = v
                    before.setdefault(k, []).append(
                        _new_line(lines[k], v, ast.unparse(inner), lines[k].quiet))
                return ast.Name(made[key], ast.Load())
            return replace_children(node)

        def replace_children(node):
            for field, value in ast.iter_fields(node):
                if isinstance(value, ast.expr):
                    setattr(node, field, replace(value))
                elif isinstance(value, list):
                    setattr(node, field, [replace(v) if isinstance(v, ast.expr) else v for v in value])
            return node
        trees[k] = replace(tree) if not isinstance(tree, ast.Name) else tree
    out, k = [], 0
    for part in parts:
        new = []
        for line in part:
            new.extend(before.get(k, ()))
            code = ast.unparse(trees[k])
            new.append(dataclasses.replace(line, code=code, written=line.written or f"{line.target} = {line.code}")
                       if code != line.code else line)
            k += 1
        out.append(new)
    return out, shapes


def _new_line(like, target: str, code: str, quiet):
    """A line of the function body `like` is in, computing target = code."""
    return dataclasses.replace(like, target=target, code=code, comment="", quiet=quiet, anchors=(), reads=(),
                               into=False)


def _versions(lines) -> list:
    """For each line, the line that last bound each name before it (or wrote into the
    array it names): two reads of a name are of one value when this agrees."""
    current, out = {}, []
    for k, line in enumerate(lines):
        out.append(dict(current))
        current[line.target] = k
    return out


def _occurrences(node, versions: dict, around: tuple, found: list):
    """(key, the keys of the operations around it) of each pure operation in node, in `found`."""
    if isinstance(node, _OPERATIONS) and _pure(node):
        key = _key(node, versions)
        found.append((key, around))
        around = around + (key,)
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.expr):
            _occurrences(child, versions, around, found)


def _pure(node) -> bool:
    """An operation of numbers, names, views and numpy's pure functions, reading a name."""
    named = False
    for x in ast.walk(node):
        if isinstance(x, ast.Name):
            named = named or x.id != "np"
        elif isinstance(x, ast.Call):
            f = x.func
            if isinstance(f, ast.Name) and f.id in _PURE_HELPERS and not x.keywords:
                continue
            if not isinstance(f, ast.Attribute):
                return False
            numpy = isinstance(f.value, ast.Name) and f.value.id == "np"
            if not (numpy and f.attr in _PURE or not numpy and f.attr in ("sum", "max")):
                return False
        elif not isinstance(x, _PLAIN):
            return False
    return named


def _key(node, versions: dict):
    names = sorted({x.id for x in ast.walk(node) if isinstance(x, ast.Name)})
    return ast.dump(node), tuple((n, versions.get(n)) for n in names)


def _reads(line, name: str) -> bool:
    return any(isinstance(x, ast.Name) and x.id == name for x in ast.walk(ast.parse(line.code, mode="eval")))


def _scaled_squares(node):
    """(" * c" or " / c" or "", code of E) when node is `[c *] (E ** 2).sum(axis=...)` or
    `... / c` with c a number; None otherwise."""
    scale = ""
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div)):
        number = node.right if isinstance(node.op, ast.Div) or _number(node.right) else node.left
        rest = node.left if number is node.right else node.right
        if not _number(number):
            return None
        scale = f" * {ast.unparse(number)}" if isinstance(node.op, ast.Mult) else f" / {_paren(ast.unparse(number))}"
        node = rest
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "sum"
            and not node.args and [k.arg for k in node.keywords] == ["axis"]):
        return None
    squared = node.func.value
    if isinstance(squared, ast.BinOp) and isinstance(squared.op, ast.Pow) and \
            isinstance(squared.right, ast.Constant) and squared.right.value == 2:
        return scale, ast.unparse(squared.left)
    return None


def _paren(code: str) -> str:
    return code if code.replace(".", "").replace("_", "").isalnum() else f"({code})"


def _number(node) -> bool:
    return all(isinstance(x, (ast.Constant, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop)) for x in ast.walk(node)) \
        and all(isinstance(x.value, (int, float)) and not isinstance(x.value, bool)
                for x in ast.walk(node) if isinstance(x, ast.Constant))
