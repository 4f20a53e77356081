"""Numpy lines -> the same values through fewer or cheaper operations, where a pattern of
the lowered lines says more than each line alone.

  the loss's total   the sum over the batch of the per-sample loss, a line of its own; when
                     the loss is c times a sum of a product of two arrays (a sum of squares;
                     cross-entropy's -Σ log(p)·y) that nothing else reads, one dot product
                     of the two (where the product, the sum per sample, the scaling and the
                     sum over the batch take four operations);
  the max-pool's     `g * _first_argmax(a, axes)` with g constant over each window becomes
  backward           `_route_max(a, axes, g)`: g routed to each window's first maximum
                     without the one-hot array; and where a is a relu's output read by
                     nothing but the relu's backward, that backward goes into it (at a
                     window's first maximum the relu's input is above 0 exactly where the
                     maximum is: a quarter of the comparisons); the maximum the forward
                     pass took is passed in (common.py then computes it once).
"""
from __future__ import annotations

import ast
import dataclasses

from .common import new_line


def total_line(loss_var: str, target: str, lines: list, shapes: dict) -> tuple:
    """(lines, value): `lines` (the loss's) with a last line `target = ` the sum of `loss_var`
    over the batch, and the code of the loss's sum in double precision from it.  When the
    line computing `loss_var` is c times a sum over each sample of a product of two arrays
    of one shape (a square, c·Σ E², or -Σ log(p)·y) that nothing else reads, that line
    becomes their dot product, and c is applied to the total."""
    total = f"float({target})"
    plain = new_line(lines[-1], target, f"np.add.reduce({loss_var}, axis=None)", lines[-1].quiet)
    if lines[-1].target != loss_var or any(_reads(x, loss_var) for x in lines[:-1]):
        return lines + [plain], total
    last = lines[-1]
    found = _scaled_product(ast.parse(last.code, mode="eval").body, shapes)
    if found is None:
        return lines + [plain], total
    sign, scale, left, right = found
    as_derived = last.written or f"{last.target} = {last.code}"
    return lines[:-1] + [dataclasses.replace(last, target=target, code=f"np.vdot({left}, {right})",
                                             written=as_derived)], f"{sign}{total}{scale}"


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
                        pooled = f"_max_over({arg}, {axes})"
                        if any(pooled in x.code for x in forward):  # the forward's maximum, computed once
                            code = code[:-1] + f", top={pooled})"
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


def _reads(line, name: str) -> bool:
    return any(isinstance(x, ast.Name) and x.id == name for x in ast.walk(ast.parse(line.code, mode="eval")))


def _scaled_product(node, shapes: dict):
    """(sign, scale, code of A, code of B) when node is `[-][c *] (A * B).sum(axis=...)` (or
    `... / c`, or `(E ** 2)...`: A and B both E) with c a number and A, B of one known shape;
    sign "-" or "", scale " * c", " / c" or ""; None otherwise."""
    from .buffers import infer_shape
    sign = scale = ""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        sign, node = "-", node.operand
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
    product = node.func.value
    if isinstance(product, ast.BinOp) and isinstance(product.op, ast.Pow) and \
            isinstance(product.right, ast.Constant) and product.right.value == 2:
        return sign, scale, ast.unparse(product.left), ast.unparse(product.left)
    if isinstance(product, ast.BinOp) and isinstance(product.op, ast.Mult):
        left, right = infer_shape(product.left, shapes), infer_shape(product.right, shapes)
        if left is not None and left == right:
            return sign, scale, ast.unparse(product.left), ast.unparse(product.right)
    return None


def _paren(code: str) -> str:
    return code if code.replace(".", "").replace("_", "").isalnum() else f"({code})"


def _number(node) -> bool:
    return all(isinstance(x, (ast.Constant, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop)) for x in ast.walk(node)) \
        and all(isinstance(x.value, (int, float)) and not isinstance(x.value, bool)
                for x in ast.walk(node) if isinstance(x, ast.Constant))
