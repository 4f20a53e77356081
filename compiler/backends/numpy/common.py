"""Numpy lines -> the same lines computing each repeated operation once.

The loss's lines and the backward pass's are lowered statement by statement, so an
operation both read -- the quadratic loss's `a - y`, say, which its derivative reads
again -- is written out twice.  Here an operation on arrays that several places of one
function body compute from the same values becomes a line of its own, `_cN = ...`,
before the first of them, and each of them reads `_cN`.  numpy evaluates every operand
eagerly and each operation alike wherever it runs, so the values are the same bits.
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


def hoist(parts: list, shapes: dict) -> tuple:
    """(parts, shapes): consecutive parts of one body (lists of Line) with each operation
    computed in two places or more from the same values made a line of its own; `shapes`
    gains the shapes of the new lines (None for the batch axis) where they are known.
    Repeated until nothing changes: an operation inside a shared one and once elsewhere
    is computed twice until the shared one is a line of its own."""
    while True:
        parts, shapes, changed = _hoist_once(parts, shapes)
        if not changed:
            return parts, shapes


def _hoist_once(parts: list, shapes: dict) -> tuple:
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
        return parts, shapes, False
    shapes = dict(shapes)
    made = {}  # key -> the variable holding its value
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
                        return inner
                    v = next(n for n in fresh if n not in taken)
                    taken.add(v)
                    shapes[v] = shape
                    made[key] = v
                    before.setdefault(k, []).append(
                        new_line(lines[k], v, ast.unparse(inner), lines[k].quiet))
                return ast.Name(made[key], ast.Load())
            return replace_children(node)

        def replace_children(node):
            for field, value in ast.iter_fields(node):
                if isinstance(value, ast.expr):
                    setattr(node, field, replace(value))
                elif isinstance(value, list):
                    for v in value:
                        if isinstance(v, ast.keyword):
                            v.value = replace(v.value)
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
    return out, shapes, bool(made)


def new_line(like, target: str, code: str, quiet):
    """A line of the function body `like` is in, computing target = code."""
    return dataclasses.replace(like, target=target, code=code, comment="", quiet=quiet, anchors=(), reads=(),
                               into=False, written="")


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
        if isinstance(child, ast.keyword):
            child = child.value
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
