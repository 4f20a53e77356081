"""Data for `nncc train`: a scikit-learn set or a .npz / .csv file, fitted to the network.

    load(spec)          -> Raw: features (n, ...) and targets (n,) or (n, ...)
    fit(raw, module)    -> Fitted: the arrays train_step takes, split and scaled

A set's features fill the network's input in row-major order (the digits' 64 values
are an input [64] or [1, 8, 8] alike); whole-number targets are class labels, given as they are to a target class[k], one-hot
to a target [k] (k at least the number of classes) or to a target [1] as 0/1;
other targets must have the target's shape.  What does not fit is a DataError that
names the shape the network expects.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# name -> (scikit-learn loader, how its features are scaled)
SKLEARN = {"digits": ("load_digits", "pixels"), "iris": ("load_iris", "standard"),
           "breast_cancer": ("load_breast_cancer", "standard"), "wine": ("load_wine", "standard")}


class DataError(Exception):
    """Data that does not fit, in plain words."""


@dataclass(frozen=True)
class Raw:
    name: str
    x: np.ndarray  # (n, ...) float64
    t: np.ndarray  # (n,) labels or values, or (n, ...) values
    scaling: str  # "pixels": already in [0, 1]; "standard": z-scored by the training part; "none"


@dataclass(frozen=True)
class Fitted:
    x_train: np.ndarray
    y_train: np.ndarray | None  # None for a network without a target
    x_val: np.ndarray
    y_val: np.ndarray | None
    labels_val: np.ndarray | None  # class labels of the validation part, when there are classes
    classes: int  # 0 when the targets are values
    sample_shape: tuple = ()  # one sample's values as the set gives them (after any resampling)


def load(spec: str) -> Raw:
    """A scikit-learn set by name, or a .npz (arrays x and y) or .csv file (last column the target)."""
    if spec in SKLEARN:
        loader, scaling = SKLEARN[spec]
        try:
            import sklearn.datasets
        except ImportError:
            raise DataError(f"the {spec} set comes with scikit-learn: pip install 'nncc[train]'") from None
        bunch = getattr(sklearn.datasets, loader)()
        x = np.asarray(bunch.data, np.float64)
        return Raw(spec, x / 16.0 if spec == "digits" else x, np.asarray(bunch.target), scaling)
    path = Path(spec)
    if path.suffix.lower() not in (".npz", ".csv"):
        raise DataError(f"unknown data '{spec}': name one of {', '.join(SKLEARN)}, or a .npz or .csv file")
    if not path.is_file():
        raise DataError(f"cannot read {spec}: no such file")
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                keys = list(f.keys())
                if "x" not in keys or "y" not in keys:
                    raise DataError(f"{spec} holds {', '.join(map(repr, keys)) or 'nothing'}; nncc train reads "
                                    f"the arrays 'x' (one row per sample) and 'y' (targets or class labels)")
                x, t = np.asarray(f["x"]), np.asarray(f["y"])
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {spec} as a .npz file ({exc})") from None
        if not np.issubdtype(x.dtype, np.number) or not np.issubdtype(t.dtype, np.number):
            raise DataError(f"{spec}: 'x' and 'y' must hold numbers")
        return Raw(path.name, x.astype(np.float64), t, "none")
    return Raw(path.name, *_csv(path), "standard")


def _csv(path: Path):
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if rows and not _numbers(rows[0]):  # a header
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path} has no rows of numbers")
    width = len(rows[0])
    for k, r in enumerate(rows):
        if len(r) != width or not _numbers(r):
            raise DataError(f"{path}: row {k + 1} is not {width} numbers separated by commas")
    if width < 2:
        raise DataError(f"{path}: each row needs features and, last, a target")
    table = np.array([[float(c) for c in r] for r in rows])
    t = table[:, -1]
    return table[:, :-1], (t.astype(np.int64) if np.all(t == np.round(t)) else t)


def _numbers(row) -> bool:
    try:
        return all(math.isfinite(float(c)) for c in row)
    except ValueError:
        return False


def fit(raw: Raw, module, val_fraction: float, seed: int, dtype) -> Fitted:
    """raw shaped as the network's one input and one target, shuffled (seed) and split."""
    if len(module.INPUT_SHAPES) != 1 or len(module.TARGET_SHAPES) > 1:
        raise DataError(f"nncc train feeds a network with one input and at most one target; this one has "
                        f"inputs {', '.join(module.INPUT_SHAPES)} and targets {', '.join(module.TARGET_SHAPES)}")
    (x_name, x_shape), = module.INPUT_SHAPES.items()
    n = len(raw.x)
    size = math.prod(x_shape)
    if raw.name == "digits" and _square(size) > 8 and (len(x_shape) == 1 or x_shape[-1] == x_shape[-2]):
        raw = Raw(raw.name, _resampled(raw.x.reshape(n, 8, 8), _square(size)), raw.t, raw.scaling)
    per_sample = math.prod(raw.x.shape[1:])
    if per_sample != size:
        raise DataError(f"{raw.name} has {per_sample} values per sample, but the network's input '{x_name}' is "
                        f"{list(x_shape)} ({size} values)"
                        + (f"; declare input {x_name}: [{per_sample}] or a shape of {per_sample} values"
                           if per_sample else ""))
    x = raw.x.reshape((n,) + tuple(x_shape))
    t = raw.t
    classes = 0
    if not module.TARGET_SHAPES:  # a loss of the output alone: the targets go unused
        y_shape, y = (), None
    elif np.issubdtype(t.dtype, np.integer) and t.ndim == 1:
        (y_name, y_shape), = module.TARGET_SHAPES.items()
        if t.min() < 0:
            raise DataError(f"{raw.name}: class labels must be 0, 1, 2, ...; found {t.min()}")
        classes = int(t.max()) + 1
        declared = getattr(module, "TARGET_CLASSES", {}).get(y_name)
        if declared is not None:  # `class[k]`: the labels themselves
            if classes > declared:
                raise DataError(f"{raw.name} has {classes} classes, but the network's target '{y_name}' is "
                                f"class[{declared}]")
            y, y_shape = t.astype(np.int64), (declared,)
        elif tuple(y_shape) == (1,) and classes <= 2:
            y = t.astype(np.float64).reshape(n, 1)
        elif len(y_shape) == 1 and y_shape[0] >= classes and classes > 1:
            y = np.eye(y_shape[0])[t]
        else:
            raise DataError(f"{raw.name} has {classes} classes, but the network's target '{y_name}' is "
                            f"{list(y_shape)}; for class labels declare target {y_name}: [{classes}] (one-hot)"
                            + (f" or [1] (two classes)" if classes <= 2 else ""))
    else:
        (y_name, y_shape), = module.TARGET_SHAPES.items()
        if t.shape[1:] != tuple(y_shape) and not (t.ndim == 1 and tuple(y_shape) == (1,)):
            raise DataError(f"{raw.name} has targets of shape {list(t.shape[1:])} per sample, but the "
                            f"network's target '{y_name}' is {list(y_shape)}")
        y = t.astype(np.float64).reshape((n,) + tuple(y_shape))
    if not 0 <= val_fraction < 1:
        raise DataError(f"the validation fraction must be at least 0 and below 1; got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    if n - n_val < 1:
        raise DataError(f"{raw.name} has {n} samples: too few to train on")
    val, train = order[:n_val], order[n_val:]
    if raw.scaling == "standard":  # by the training part's statistics alone
        mean = x[train].mean(axis=0)
        std = x[train].std(axis=0)
        x = (x - mean) / np.where(std > 0, std, 1.0)
    labels_val = t[val] if classes > 1 and len(y_shape) == 1 and y_shape[0] >= classes else None
    kind = y.dtype if y is not None and y.dtype.kind == "i" else dtype  # class indices stay integers
    ys = (None, None) if y is None else (y[train].astype(kind), y[val].astype(kind))
    return Fitted(x[train].astype(dtype), ys[0], x[val].astype(dtype), ys[1], labels_val, classes, raw.x.shape[1:])


def _square(size: int) -> int:
    """s where size is s*s (s > 1), else 0; digits are resampled up to s x s, never down."""
    s = math.isqrt(size)
    return s if s > 1 and s * s == size else 0


def _resampled(images: np.ndarray, s: int) -> np.ndarray:
    """8x8 images as s x s, by bilinear interpolation between pixel centres (so that a
    network of 28x28 inputs, Nielsen's, trains on the bundled digits)."""
    def weights(n):
        pos = np.clip((np.arange(s) + 0.5) * n / s - 0.5, 0, n - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        w = np.zeros((s, n))
        w[np.arange(s), lo] += 1 - (pos - lo)
        w[np.arange(s), hi] += pos - lo
        return w
    a = weights(images.shape[1])
    return np.einsum("ip,npq,jq->nij", a, images, a)
