"""The runtime helpers of generated numpy modules, as real source: each function is
copied verbatim into a module that calls it (backends/numpy/module.py), so that the
module stays standalone and imports only numpy.  Here they are linted and unit-tested.
"""
import numpy as np


def _sigmoid(z, out=None):
    # 1/(1 + exp(-z)), as PyTorch computes it, into out if given (it may be z itself):
    # where exp(-z) overflows (z below about -88.7 in float32, -709 in float64) it is inf,
    # quietly, and the sigmoid 0
    s = np.negative(z, out=np.empty_like(z) if out is None else out)
    with np.errstate(over="ignore"):
        np.exp(s, out=s)
    np.add(s, 1, out=s)
    return np.reciprocal(s, out=s)


def _erf(z):
    # numpy has no erf.  Below 1.5: erf(x) = 2/sqrt(pi) x exp(-x^2) (1 + r1 (1 + r2 (...))),
    # r_n = 2x^2/(2n+1), a series of positive terms; from 1.5 to 6: 1 - erfc(x), erfc(x) =
    # exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))); beyond 6 erf is 1 in
    # float64.  Within 5 units in the last place of the correctly rounded value.
    a = np.abs(z)
    x = np.minimum(a, 1.5)
    x2 = x * x
    s = np.ones_like(x)
    for n in range(30, 0, -1):
        s = 1 + (2 * x2 / (2 * n + 1)) * s
    near = 1.1283791670955126 * x * np.exp(-x2) * s
    b = np.clip(a, 1.5, 6.0)
    k = np.zeros_like(b)
    for n in range(70, 0, -1):
        k = (n / 2) / (b + k)
    far = 1 - 0.5641895835477563 * np.exp(-b * b) / (b + k)
    out = np.where(a < 1.5, near, np.where(a < 6.0, far, 1.0).astype(z.dtype))
    return np.where(np.isnan(z), z, np.copysign(out, z))


def _logsumexp(a, axis):
    m = a.max(axis=axis, keepdims=True)
    return np.squeeze(m, axis=axis) + np.log(np.exp(a - m).sum(axis=axis))


def _clamped_log(a, floor):
    # log(0) = -inf is expected here and clamped, as PyTorch's binary cross-entropy
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(a), floor)


def _reach(start, stride, n, k, dilation=1):
    # the lowest and highest index a[start + stride*i + dilation*p] reads, i < n and p < k
    return (start + min(0, stride * (n - 1)) + min(0, dilation * (k - 1)),
            start + max(0, stride * (n - 1)) + max(0, dilation * (k - 1)))


def _patches(a, windows):
    # im2col as a view: for each (axis, start, stride, n, k[, dilation]) in windows, axis i
    # of the result reads a[start + stride*i + dilation*p] with p a new trailing axis
    # (zeros outside a)
    pad = [(0, 0)] * a.ndim
    for axis, start, stride, n, k, *dilation in windows:
        lo, hi = _reach(start, stride, n, k, *dilation)
        pad[axis] = (max(0, -lo), max(0, hi + 1 - a.shape[axis]))
    if any(p != (0, 0) for p in pad):
        padded = np.zeros([s + lo + hi for s, (lo, hi) in zip(a.shape, pad)], dtype=a.dtype)
        padded[tuple(slice(lo, lo + s) for s, (lo, _) in zip(a.shape, pad))] = a
        a = padded
    # the view by hand (sliding_window_view's checks cost more than a small layer's copy)
    shape, strides, kernel = list(a.shape), list(a.strides), []
    corner = [slice(None)] * a.ndim
    for axis, start, stride, n, k, *dilation in windows:
        corner[axis] = slice(start + pad[axis][0], None)
        shape[axis], strides[axis] = n, a.strides[axis] * stride
        kernel.append((k, a.strides[axis] * (dilation[0] if dilation else 1)))
    return np.lib.stride_tricks.as_strided(a[tuple(corner)], shape + [k for k, _ in kernel],
                                           strides + [s for _, s in kernel], writeable=False)


def _im2col(a, windows, perm, splits=(), out=None):
    # _patches(a, windows).transpose(perm), copied by one gather: a 6-D strided copy runs
    # numpy's inner loop over a few elements at a time.  Each (axis, s) in splits first
    # splits a window position axis of the patches into (position // s, position % s).
    # The index, made once per shape, counts a's elements from 1, 0 standing for the
    # padding's zeros
    key = (a.shape, windows, perm, splits)
    index = _IM2COL_INDEX.get(key)
    if index is None:
        if len(_IM2COL_INDEX) >= 32:  # many shapes: keep the latest ones only
            _IM2COL_INDEX.clear()
        positions = np.arange(1, a.size + 1).reshape(a.shape)
        index = _patches(positions, windows)
        shape = list(index.shape)
        for axis, s in sorted(splits, reverse=True):
            shape[axis:axis + 1] = [shape[axis] // s, s]
        index = np.ascontiguousarray(index.reshape(shape).transpose(perm))
        _IM2COL_INDEX[key] = index
    flat = np.empty(a.size + 1, a.dtype)
    flat[0] = 0
    flat[1:] = a.reshape(-1)
    return np.take(flat, index, out=out)


_IM2COL_INDEX = {}


def _unpatches(g, shape, windows):
    # the adjoint of _patches: add each kernel offset's slice of g back into place, one
    # strided add per offset (no np.add.at), with the batch axis innermost when it is
    # longer than the last axis: numpy is slow on short inner loops
    rank, nk = len(shape), len(windows)
    pad = [(0, 0)] * rank
    for axis, start, stride, n, k, *dilation in windows:
        lo, hi = _reach(start, stride, n, k, *dilation)
        pad[axis] = (max(0, -lo), max(0, hi + 1 - shape[axis]))
    order = list(range(1, rank)) + [0] if nk and shape[0] > shape[-1] else list(range(rank))
    out = np.zeros([shape[a] + sum(pad[a]) for a in order], dtype=g.dtype)
    if nk:  # kernel axes first, each offset's slice one contiguous block
        g = np.ascontiguousarray(g.transpose(list(range(rank, rank + nk)) + order))
    for offsets in np.ndindex(*(w[4] for w in windows)):
        index = [slice(None)] * rank
        for (axis, start, stride, n, k, *dilation), p in zip(windows, offsets):
            first = start + pad[axis][0] + p * (dilation[0] if dilation else 1)
            last = first + stride * (n - 1)
            index[axis] = slice(first, last + 1, stride) if stride > 0 else \
                slice(first, last - 1 if last > 0 else None, stride)
        out[tuple(index[a] for a in order)] += g[offsets] if nk else g
    crop = [slice(lo, lo + s) for s, (lo, hi) in zip(shape, pad)]
    return out[tuple(crop[a] for a in order)].transpose(np.argsort(order))


def _window_slices(a, axes, copy=True):
    # a's slices at each offset of a small window (axes), in row-major order of the
    # offsets: views where each is long runs of contiguous elements (a tiled array,
    # layout.py), else (with copy) views of a copy with the window axes moved first:
    # numpy is many times slower on short strided inner loops
    k = len(axes)
    rest = sorted((a.strides[d], a.shape[d]) for d in range(a.ndim) if d not in axes)
    run, step = 1, a.itemsize
    for stride, n in rest:
        if stride != step:
            break
        run, step = run * n, step * n
    if run < 16 and copy:
        a, axes = np.ascontiguousarray(np.moveaxis(a, axes, range(k))), tuple(range(k))
    where = [slice(None)] * a.ndim
    slices = []
    offsets = [()]
    for d in axes:
        offsets = [o + (i,) for o in offsets for i in range(a.shape[d])]
    for offset in offsets:
        for d, o in zip(axes, offset):
            where[d] = o
        slices.append(a[tuple(where)][...])  # an array even when every axis is a window axis
    return slices


def _tiles(a, axes):
    # a with its window axes as one, a view, if they are consecutive in a contiguous a
    # (a tiled array, layout.py, stores each window offset as one contiguous block); else None
    if not a.flags.c_contiguous or list(axes) != list(range(axes[0], axes[0] + len(axes))):
        return None
    return a.reshape(a.shape[:axes[0]] + (-1,) + a.shape[axes[-1] + 1:])


def _max_over(a, axes):
    # max over a few window axes as elementwise maxima of whole slices
    tiles = _tiles(a, axes)
    if tiles is not None:
        return np.maximum.reduce(tiles, axis=axes[0])[...]  # an array even when every axis is a window axis
    if np.prod([a.shape[d] for d in axes]) > 16:
        return a.max(axis=axes)
    slices = _window_slices(a, axes)
    out = np.copy(slices[0], order="K")
    for v in slices[1:]:
        np.maximum(out, v, out=out)
    return out


def _first_argmax(a, axes, out=None):
    # 1 at the first maximum over `axes` in row-major order, else 0; a NaN wins, the
    # last one if several, as in PyTorch's CPU max-pool.  A small window is walked
    # offset by offset over whole slices (_window_slices), the result in a's memory order
    # (or into out, an array of a's shape)
    k = len(axes)
    hot = np.empty_like(a) if out is None else out
    tiles = _tiles(a, axes)
    if tiles is not None and hot.flags.c_contiguous:  # each offset a block: whole-array operations
        w = axes[0]
        top = np.maximum.reduce(tiles, axis=w, keepdims=True)
        if not np.isnan(top).any():
            first = np.equal(tiles, top)
            at = [first[(slice(None),) * w + (slice(n, n + 1),)] for n in range(tiles.shape[w])]  # views
            seen = at[0].copy()
            for f in at[1:]:  # a maximum is the first where none before it was one
                np.greater(f, seen, out=f)
                np.logical_or(seen, f, out=seen)
            np.copyto(hot.reshape(tiles.shape), first)
            return hot
    if np.prod([a.shape[d] for d in axes]) > 16:
        moved = np.moveaxis(a, axes, range(a.ndim - k, a.ndim))
        flat = moved.reshape(moved.shape[:a.ndim - k] + (-1,))
        at, nan = flat.argmax(axis=-1), np.isnan(flat)
        if nan.any():  # argmax picks the first NaN
            at = np.where(nan.any(axis=-1), flat.shape[-1] - 1 - nan[..., ::-1].argmax(axis=-1), at)
        first = np.arange(flat.shape[-1]) == at[..., None]
        hot[...] = np.moveaxis(first.reshape(moved.shape), range(a.ndim - k, a.ndim), axes)
        return hot
    slices = _window_slices(a, axes)
    hots = _window_slices(hot, axes, copy=False)
    # before[n]: the maximum of the slices before n; an element is the first maximum
    # where it equals the whole window's maximum and everything before it is smaller
    before = [None, slices[0]]
    for v in slices[1:-1]:
        before.append(np.maximum(before[-1], v))
    top = np.maximum(before[-1], slices[-1]) if len(slices) > 1 else slices[0]
    smaller = np.empty_like(top)
    for v, h, b in zip(slices, hots, before):
        np.equal(v, top, out=h)
        if b is not None:
            np.multiply(h, np.less(b, top, out=smaller), out=h)
    if np.isnan(top).any():  # windows holding a NaN (no element equals NaN): the last NaN
        taken = np.zeros(top.shape, dtype=bool)
        for v, h in zip(reversed(slices), reversed(hots)):
            last = (v != v) & ~taken
            taken |= last
            h[...] = np.where(np.isnan(top), last, h)
    return hot


def _route_max(a, axes, g, out=None, positive=False, top=None):
    # g (extent 1 at the window axes) where a holds the first maximum of its window over
    # `axes`, else 0: _first_argmax(a, axes) * g, the max-pool's backward; with positive,
    # only where that maximum is above 0 (times a > 0: the relu's backward before it).  In
    # a tiled array (each window offset one block) the maxima of all offsets are found in
    # one comparison; top, if given, is _max_over(a, axes) as the forward pass computed it
    hot = np.empty_like(a) if out is None else out
    tiles = _tiles(a, axes)
    if tiles is not None and hot.flags.c_contiguous:
        w = axes[0]
        top = np.maximum.reduce(tiles, axis=w) if top is None else top
        hit = np.equal(tiles, np.expand_dims(top, w))
        pos = np.greater(top, 0) if positive else None
        if _first_only(hit, w, top, pos):
            each = np.squeeze(g, axes) if pos is None else np.multiply(np.squeeze(g, axes), pos)
            np.multiply(hit, np.expand_dims(each, w), out=hot.reshape(tiles.shape))
            return hot
    hot = np.multiply(_first_argmax(a, axes, hot), g, out=hot)
    return np.multiply(hot, np.greater(a, 0), out=hot) if positive else hot


def _first_only(hit, w, top, pos=None):
    # hit (axis w: the window offsets) kept only at each window's first offset holding its
    # maximum top; with pos, only in the windows pos marks (a relu's output: the others are
    # all zero, get no gradient, and hold their maximum at every offset).  False when some
    # window has no hit (a NaN in it): the caller's slow path takes NaN's rule.  Windows
    # with a tie are found by counting, and only those are rewritten
    k = hit.shape[w]
    found = np.count_nonzero(hit)
    if pos is None:
        if found == top.size and not np.isnan(np.vdot(top, top)):
            return True
    elif found == k * (top.size - np.count_nonzero(top)) + np.count_nonzero(pos):
        return True
    counts = np.add.reduce(hit, axis=w, dtype=np.uint8 if k < 256 else np.intp)
    if pos is None and not counts.all():
        return False
    tied = np.unravel_index(np.flatnonzero(counts > 1 if pos is None else (counts > 1) & pos), top.shape)
    by_window = np.moveaxis(hit, w, -1)
    first = by_window[tied].argmax(axis=1)
    by_window[tied] = False
    by_window[tied + (first,)] = True
    return True


def _window(a, axis, start, size, stride=1):
    # a[start + stride*i] for i < size along axis (stride of either sign), reading zeros
    # outside a's extent: i runs from lo to hi - 1 inside it
    n = a.shape[axis]
    if stride > 0:
        lo, hi = max(0, -(start // stride)), min(size, (n - 1 - start) // stride + 1)
    else:
        lo, hi = max(0, -((n - 1 - start) // -stride)), min(size, start // -stride + 1)
    shape = list(a.shape)
    shape[axis] = size
    out = np.zeros(shape, dtype=a.dtype)
    if hi > lo:
        first, last = start + stride * lo, start + stride * (hi - 1)
        into, read = [slice(None)] * a.ndim, [slice(None)] * a.ndim
        into[axis] = slice(lo, hi)
        read[axis] = slice(first, last + 1, stride) if stride > 0 else \
            slice(first, last - 1 if last > 0 else None, stride)
        out[tuple(into)] = a[tuple(read)]
    return out
