"""The training loop of `nncc train`: epochs of train_step over shuffled batches, the
validation metric, the best parameters kept as a checkpoint, a resumable run, a curve.

A checkpoint is one .npz, written after every epoch: the best parameters so far
("param/<name>", what load_params reads), the last epoch's parameters and optimizer state
("last/param/<name>", "last/state/step", "last/state/<kept>/<name>"), that epoch and the
history of the run, so that --resume continues where it stopped as if it never had (each
epoch's shuffle is drawn from the seed and the epoch alone).  It is written to a temporary
file first and renamed: an interrupted run never leaves half a checkpoint.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import Fitted


class TrainError(Exception):
    """A run that cannot go on, in plain words."""


@dataclass
class History:
    train_loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    best_epoch: int = 0

    def best_score(self, k: int) -> float:
        """Higher is better: the validation accuracy, else minus the validation (or training) loss."""
        if self.val_accuracy:
            return self.val_accuracy[k]
        return -(self.val_loss[k] if self.val_loss else self.train_loss[k])


def train(module, data: Fitted, *, epochs: int, batch_size: int, lr: float, seed: int, max_norm=None,
          checkpoint: Path | None = None, resume: Path | None = None, init: Path | None = None, say=print,
          progress=None) -> tuple:
    """(the best params, history) after `epochs` epochs (counting those of a resumed run);
    `init`: start from these saved parameters (load_params) instead of init_params."""
    dtype = data.x_train.dtype
    params = module.init_params(seed, dtype)
    if init is not None:
        try:
            params = module.load_params(init, dtype)
        except (OSError, ValueError) as exc:
            raise TrainError(f"cannot start from {init}: {exc}") from None
    state = module.init_state(params)
    history, start = History(), 0
    if resume is not None:
        params, state, history, start = _read_checkpoint(module, resume, dtype)
        say(f"resumed from {resume} after epoch {start}")
    n = len(data.x_train)
    best = {name: a.copy() for name, a in params.items()}
    if resume is not None:
        best = _read_best(module, resume, dtype)
    began = time.perf_counter()
    for epoch in range(start + 1, epochs + 1):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        total = 0.0
        batches = range(0, n, batch_size)
        if progress is not None:
            batches = progress(batches, desc=f"epoch {epoch}/{epochs}")
        for k in batches:
            idx = order[k:k + batch_size]
            arrays = (data.x_train[idx],) if data.y_train is None else (data.x_train[idx], data.y_train[idx])
            total += module.train_step(params, state, *arrays, lr=lr, max_norm=max_norm) * len(idx)
        loss = total / n
        if not math.isfinite(loss):
            raise TrainError(f"the training loss became {loss} in epoch {epoch}; try a smaller learning rate "
                             f"(--lr) or clipping (--max-norm)")
        history.train_loss.append(loss)
        line = f"epoch {epoch:3d}  train loss {loss:.4f}"
        if len(data.x_val):
            history.val_loss.append(_mean_loss(module, params, data.x_val, data.y_val, batch_size))
            line += f"  val loss {history.val_loss[-1]:.4f}"
            if data.labels_val is not None:
                history.val_accuracy.append(_accuracy(module, params, data.x_val, data.labels_val, batch_size))
                line += f"  val accuracy {history.val_accuracy[-1]:.2%}"
        k = len(history.train_loss) - 1
        if history.best_epoch == 0 or history.best_score(k) > history.best_score(history.best_epoch - 1):
            history.best_epoch = epoch
            for name, a in params.items():
                np.copyto(best[name], a)
            line += "  (best)"
        if checkpoint is not None:
            _write_checkpoint(module, checkpoint, best, params, state, history, epoch)
        say(line)
    say(f"{epochs - start} epochs in {time.perf_counter() - began:.1f} s; best epoch {history.best_epoch}"
        + (f", val accuracy {history.val_accuracy[history.best_epoch - 1]:.2%}" if history.val_accuracy else ""))
    return best, history


def _mean_loss(module, params, x, y, batch_size) -> float:
    total, step = 0.0, 4 * batch_size
    for k in range(0, len(x), step):
        arrays = (x[k:k + step],) if y is None else (x[k:k + step], y[k:k + step])
        total += module.loss(params, *arrays) * len(arrays[0])
    return total / len(x)


def _accuracy(module, params, x, labels, batch_size) -> float:
    hits = 0
    for k in range(0, len(x), 4 * batch_size):
        out = module.forward(params, x[k:k + 4 * batch_size])
        hits += int(np.sum(out.reshape(len(out), -1).argmax(axis=1) == labels[k:k + 4 * batch_size]))
    return hits / len(x)


def _write_checkpoint(module, path: Path, best, params, state, history: History, epoch: int) -> None:
    arrays = {f"param/{name}": best[name] for name in module.PARAM_SHAPES}
    arrays.update({f"last/param/{name}": params[name] for name in module.PARAM_SHAPES})
    arrays["last/state/step"] = np.array(state["step"])
    for kept in module.STATE_NAMES:
        arrays.update({f"last/state/{kept}/{name}": a for name, a in state[kept].items()})
    arrays["epoch"] = np.array(epoch)
    arrays["optimizer"] = np.array(module.OPTIMIZER[0])
    for key in ("train_loss", "val_loss", "val_accuracy"):
        arrays[f"history/{key}"] = np.array(getattr(history, key), np.float64)
    arrays["history/best_epoch"] = np.array(history.best_epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _read_checkpoint(module, path: Path, dtype) -> tuple:
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TrainError(f"cannot read the checkpoint {path} ({exc})") from None
    with f:
        keys = set(f.keys())
        if "epoch" not in keys or "last/state/step" not in keys:
            raise TrainError(f"{path} is not a checkpoint of nncc train")
        if str(f["optimizer"]) != module.OPTIMIZER[0]:
            raise TrainError(f"{path} was written by a run with the optimizer {f['optimizer']}, this one uses "
                             f"{module.OPTIMIZER[0]}")
        params = module.init_params(0, dtype)
        state = module.init_state(params)
        for name, shape in module.PARAM_SHAPES.items():
            _restore(path, f, f"last/param/{name}", params[name], shape)
            for kept in module.STATE_NAMES:
                _restore(path, f, f"last/state/{kept}/{name}", state[kept][name], shape)
        state["step"] = int(f["last/state/step"])
        history = History(*(list(f[f"history/{k}"]) for k in ("train_loss", "val_loss", "val_accuracy")),
                          int(f["history/best_epoch"]))
        return params, state, history, int(f["epoch"])


def _read_best(module, path: Path, dtype) -> dict:
    best = module.init_params(0, dtype)
    with np.load(path, allow_pickle=False) as f:
        for name, shape in module.PARAM_SHAPES.items():
            _restore(path, f, f"param/{name}", best[name], shape)
    return best


def _restore(path, f, key, into, shape) -> None:
    if key not in f:
        raise TrainError(f"{path} has no {key}: it was written for another network")
    if f[key].shape != shape:
        raise TrainError(f"{path}: {key} has shape {f[key].shape}, this network's is {shape}")
    np.copyto(into, f[key], casting="same_kind")


def save_curve(history: History, path: Path, title: str) -> None:
    """The losses (and the validation accuracy) by epoch, as a PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TrainError("drawing the curve needs matplotlib: pip install 'nncc[train]'") from None
    epochs = range(1, len(history.train_loss) + 1)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(epochs, history.train_loss, label="train loss")
    if history.val_loss:
        ax.plot(epochs, history.val_loss, label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    lines, labels = ax.get_legend_handles_labels()
    if history.val_accuracy:
        acc = ax.twinx()
        acc.plot(epochs, history.val_accuracy, color="tab:green", label="validation accuracy")
        acc.set_ylabel("accuracy")
        more = acc.get_legend_handles_labels()
        lines, labels = lines + more[0], labels + more[1]
    ax.legend(lines, labels, loc="center right")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
