"""How the numpy module stores the arrays a non-overlapping window reduction reads.

A 2x2 max-pool reads relu[b, c, 2*i + p, 2*j + q].  Stored row-major, numpy reduces that
with inner loops two elements long, and its backward pass the same.  Stored tiled instead,
as [c, p, q, b, i, j] -- each window offset one contiguous block, the layout hand-tuned
numpy uses -- the pool is elementwise maxima of whole blocks, and the convolution that
makes the array writes it so straight from its matrix product (its patches gathered in
that order).  The elementwise steps between (relu, its mask in the backward pass) are
stored the same way, so that each reads and writes contiguously: a tiling spreads from
the pool's operand to every array read or written at the same positions.

  Layout     which logical axes are tiled (axis k holds s*outer + inner, inner < s), and
             the storage order: the axes that are not the batch and not tiled, the
             inner parts, the batch, the outer parts;
  splits     the index symbols a statement splits (i -> s*i_o + i_i) to write or read a
             tiled array as it lies: its free indices (a tiled target), or the summed
             ones (a weight gradient summing over the positions).

Only values a function keeps to itself are tiled (not inputs, parameters, what a function
returns), and only where every statement writing one can be split.  Any other read of a
tiled array (a shifted window, say) sees it in logical order through a copy.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from ...autodiff.derive import B, row_major
from ...ops.symbolic import FirstArgmax, LogSumExp, MaxOver


@dataclass(frozen=True)
class Layout:
    factors: tuple  # ((logical axis, tile size), ...), by axis
    axes: tuple  # storage order: (logical axis, part); part "" whole, "o" outer, "i" inner

    def extents(self, shape) -> tuple:
        """The storage shape for a logical one."""
        f = dict(self.factors)
        return tuple(shape[k] if part == "" else shape[k] // f[k] if part == "o" else f[k] for k, part in self.axes)

    def logical_order(self) -> list:
        """The storage axes' positions in logical order (each tiled axis as outer, inner)."""
        f = dict(self.factors)
        split = [(k, p) for k in range(1 + max(a for a, _ in self.axes))
                 for p in (("o", "i") if k in f else ("",))]
        return [self.axes.index(a) for a in split]


def make_layout(shape, factors: dict) -> Layout:
    batch = [k for k, n in enumerate(shape) if n == B]
    whole = [(k, "") for k in range(len(shape)) if k not in factors and k not in batch]
    inner = [(k, "i") for k in sorted(factors)]
    outer = [(k, "o") for k in sorted(factors)]
    return Layout(tuple(sorted(factors.items())), tuple(whole + inner + [(k, "") for k in batch] + outer))


def split_names(v) -> tuple:
    """The outer and inner index symbols of a split index (no user index has a quote)."""
    return sp.Symbol(f"{v.name}'o", integer=True), sp.Symbol(f"{v.name}'i", integer=True)


def plan(statements, shapes: dict, fixed: set) -> dict:
    """name -> Layout for the arrays of one function body that a window reduction reads
    as whole tiles, and those the tiling spreads to; `fixed` names are never tiled."""
    writers = {}
    for st in statements:
        writers.setdefault(st.target, []).append(st)
    factors: dict = {}  # name -> {axis: tile size}

    def tile(name, axis, s) -> bool:
        shape = shapes.get(name)
        if name in fixed or name not in writers or shape is None or axis in factors.get(name, {}):
            return False
        if any(n != B and _int(n) is None for n in shape) or shape[axis] == B or _int(shape[axis]) % s or s < 2:
            return False
        if not all(_writes_splittable(st, axis, s) for st in writers[name]):
            return False
        factors.setdefault(name, {})[axis] = s
        return True

    for st in statements:  # the seeds: a window reduction reading whole tiles
        for r in st.expr.atoms(MaxOver, FirstArgmax):
            bound = {lim[0]: lim[2] + 1 for lim in r.limits}
            ranges = {**st.ranges, **bound}
            for read in r.function.atoms(sp.Indexed):
                name = read.base.label.name
                for k, sub in enumerate(read.indices):
                    parts = _pair(sub, ranges, (shapes.get(name) or ())[k:k + 1])
                    if parts and parts[1] in bound:
                        tile(name, k, ranges[parts[1]])
    changed = True
    while changed:  # ... spreading to what is read or written at the same positions
        changed = False
        for st in statements:
            split = splits(st, _layouts(factors, shapes), shapes)
            if not split:
                continue
            ranges = {**st.ranges, **_bound_ranges(st.expr)}
            accesses = [(st.target, st.indices)] if st.variables is None else []
            accesses += [(r.base.label.name, r.indices) for r in st.expr.atoms(sp.Indexed)]
            for name, subs in accesses:
                for k, v in enumerate(subs):
                    if v in split and ranges.get(v) == (shapes.get(name) or (None,) * (k + 1))[k]:
                        changed |= tile(name, k, split[v])
    return _layouts(factors, shapes)


def _layouts(factors, shapes) -> dict:
    return {name: make_layout(shapes[name], f) for name, f in factors.items()}


def splits(st, layouts: dict, shapes: dict) -> dict:
    """index symbol -> tile size: the indices statement st splits to write its target and
    read its operands as they are stored."""
    split: dict = {}
    if st.variables is not None:  # a flattening write: reads of tiled arrays go through a copy
        return split
    target = layouts.get(st.target)
    if target is not None:
        for k, s in target.factors:
            split[st.indices[k]] = s
    bound = _bound_ranges(st.expr)
    # indices bound by another reduction, or summed ones a scatter sends (delta(k, i + p)),
    # stay whole: a read of a tiled array over them goes through a copy
    others = {lim[0] for r in st.expr.atoms(MaxOver, LogSumExp, FirstArgmax) for lim in r.limits}
    others |= {x for d in st.expr.atoms(sp.KroneckerDelta) for x in d.free_symbols if x in bound}
    ranges = {**st.ranges, **bound}
    for read in st.expr.atoms(sp.Indexed):
        lay = layouts.get(read.base.label.name)
        if lay is None:
            continue
        shape = shapes[read.base.label.name]
        for k, s in lay.factors:
            v = read.indices[k]
            if isinstance(v, sp.Symbol) and v not in others and ranges.get(v) == shape[k] and shape[k] % s == 0:
                split.setdefault(v, s)
    if target is not None:  # an index on an axis the target keeps whole is not split
        whole = {st.indices[k] for k, part in target.axes if part == ""}
        split = {v: s for v, s in split.items() if v not in whole}
    return split


def _bound_ranges(e) -> dict:
    return {lim[0]: lim[2] + 1 for s in e.atoms(sp.Sum) for lim in s.limits}


def _int(n) -> int | None:
    n = sp.sympify(n)
    return int(n) if n.is_Integer else None


def _pair(sub, ranges, extent) -> tuple | None:
    """(outer, inner) if sub == s*outer + inner over their ranges, covering `extent`."""
    syms = sorted((x for x in sub.free_symbols if x in ranges), key=lambda x: x.name)
    if len(syms) != 2 or not extent:
        return None
    order = row_major(sub, syms, ranges, extent[0])
    return tuple(order) if order is not None else None


def _writes_splittable(st, axis, s) -> bool:
    """Can statement st write its target with axis `axis` tiled by s?  Its index there is a
    plain index, and each scatter onto it (a pool's backward pass) lands whole tiles."""
    if st.variables is not None:
        return False
    v = st.indices[axis]
    if not isinstance(v, sp.Symbol) or st.ranges.get(v) is None or st.ranges[v] % s:
        return False
    ranges = {**st.ranges, **_bound_ranges(st.expr)}
    for d in st.expr.atoms(sp.KroneckerDelta):
        a, b = d.args
        if v in (a, b):
            read = b if a == v else a
            parts = _pair(read, ranges, (ranges[v],))
            if not parts or ranges[parts[1]] != s:
                return False
    return True
