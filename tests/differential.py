"""Differential checks of one .nn program: numpy module, C module and finite differences.

`check_source(source, file)` compiles a program with both backends and returns a
`Report`; `check_many(programs)` does the same for many, building the C of a whole
group as one extension (one cffi build costs about a second, most of it fixed: the
Python headers, the glue and the link).

What is compared, on the same parameters and data:

  numpy float64  vs  C float64   forward, loss, loss_and_grad, sgd_step   relative 1e-12
  numpy float64  vs  central finite differences of numpy's loss            relative 1e-9
  numpy float32  vs  C float32   the same four                            relative 1e-3

Relative means: the largest absolute difference of an array over its largest absolute
value (so one tiny component is judged at the scale of its array, as round-off is).
C and numpy may differ by more only where numpy itself moves that much when every
input moves by a couple of units in the last place: the difference of two large terms
that nearly cancel, or a gradient that is truly zero, is round-off whoever computes it.

Finite differences: the directional derivative along a random unit direction of all
parameters, then of each parameter alone, by the 5-point stencil
(f(-2h) - 8 f(-h) + 8 f(h) - f(2h)) / 12h, whose truncation error is O(h^4), at h = 1e-3
and h / 2, combined by Richardson extrapolation ((16 fd(h/2) - fd(h)) / 15).  What the
estimate cannot resolve is the two stencils' disagreement plus the rounding of the loss
(measured: how far the loss moves when its inputs move by round-off, how far it strays
from a straight line over steps of 1e-9, and what its sixth differences over steps of
h / 2 leave, each over h).  The gradient is judged at the first of up to `FD_POINTS`
random points where every direction resolves the tolerance; where none does (kinks, overflow, a slope that is truly ~0), each
direction is judged at the best point against ten times what it resolves, and the
program is inconclusive only if that is coarser than 1e-4.  Errors are relative to
max(|fd|, |analytic|, FD_FLOOR * (1 + |L|)).

A compile refusal (NNError) is fine when both backends refuse with the same message;
any other exception, a C compiler warning (built with -Wall -Wextra -Werror) or a
non-finite float64 value is a failure.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import tempfile
import time
import traceback
import types
from dataclasses import dataclass, field

import numpy as np

from nncc.api import compile_source
from nncc.backends.c.codegen import render_c_module
from nncc.errors import NNError

WARNING_FLAGS = ["-Wall", "-Wextra", "-Werror"]
TOL_C64 = 1e-12
TOL_FD = 1e-9
TOL_C32 = 1e-3
FD_STEP = 1e-3
MICRO_STEP = 1e-9  # for measuring the loss's rounding: the curve is straight at this scale
FD_FLOOR = 1e-6
FD_POINTS = 4
# where no point resolves TOL_FD: a direction whose estimate resolves RESOLVED_LIMIT is
# judged at RESOLVED_MARGIN times its resolution
RESOLVED_LIMIT = 1e-4
RESOLVED_MARGIN = 10
BATCH = 6  # the C code takes dot products four samples at a time: one block and two left over
# None: build as the C module does (-O3); "-O1" etc. trades optimizer coverage for speed
OPTIMIZE = os.environ.get("NNCC_DIFF_OPT") or None
# C and numpy may differ by what numpy itself moves when every input moves by
# ROUNDOFF_ULPS units in the last place (the worst of ROUNDOFF_POINTS such moves),
# times ROUNDOFF_MARGIN
ROUNDOFF_ULPS = 2
ROUNDOFF_POINTS = 2
ROUNDOFF_MARGIN = 10
# the data are of size 1, so a difference below ROUNDOFF_FLOOR units of round-off is
# round-off of terms that cancelled (Q - 1e-30 x - Q is 0 in one evaluation order,
# -1e-30 x in another; l - l + 1e-6 m is 1e-6 m, or that plus 1e-17)
ROUNDOFF_FLOOR = 16
# float32 values beyond this are overflow territory, where the two backends may
# legitimately round to inf at different steps: compared only for agreeing on it
F32_LIMIT = 1e30


@dataclass
class Report:
    file: str
    source: str
    status: str = "ok"  # ok | refused | disagree | error | inconclusive
    problems: list = field(default_factory=list)
    refusal: str | None = None
    compile_seconds: float = 0.0
    worst: dict = field(default_factory=dict)

    def fail(self, kind: str, message: str) -> None:
        # "error" (an exception, a warning) outranks "disagree" (wrong numbers)
        self.problems.append(f"{kind}: {message}")
        if kind == "error" or self.status not in ("error",):
            self.status = "error" if kind == "error" else "disagree"

    def text(self) -> str:
        head = f"{self.file}: {self.status}"
        if self.refusal:
            head += f" (refused: {self.refusal})"
        return "\n".join([head] + ["  " + p for p in self.problems])


@dataclass
class Prepared:
    """A program after compiling: the numpy module, the C module's text, or why not."""
    report: Report
    numpy_module: types.ModuleType | None = None
    c_text: str | None = None
    c_name: str | None = None
    c_module: types.ModuleType | None = None


def _tail(exc: BaseException) -> str:
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return "".join(lines)[-1500:].strip()


def _refusal(exc: NNError) -> str:
    return exc.render() if hasattr(exc, "render") else str(exc)


def prepare(source: str, file: str) -> Prepared:
    """Compile with the front end, then render the numpy module and the C module."""
    report = Report(file, source)
    prep = Prepared(report)
    t0 = time.perf_counter()
    try:
        compiled = compile_source(source, file)
    except NNError as exc:
        # the front end is shared: a refusal here is the same for both backends
        report.status, report.refusal = "refused", _refusal(exc)
        report.compile_seconds = time.perf_counter() - t0
        return prep
    except Exception as exc:  # noqa: BLE001 - any other exception is what we look for
        report.compile_seconds = time.perf_counter() - t0
        report.fail("error", f"compile_source raised {type(exc).__name__}\n{_tail(exc)}")
        return prep
    outcomes = {}
    try:
        text = compiled.numpy_module()
        module = types.ModuleType(f"nncc_diff_{compiled.graph.name}")
        exec(compile(text, f"<nncc {file}>", "exec"), module.__dict__)
        prep.numpy_module = module
        outcomes["numpy"] = None
    except NNError as exc:
        outcomes["numpy"] = _refusal(exc)
    except Exception as exc:  # noqa: BLE001
        report.fail("error", f"numpy backend raised {type(exc).__name__}\n{_tail(exc)}")
        outcomes["numpy"] = "exception"
    try:
        prep.c_text = render_c_module(compiled)
        prep.c_name = compiled.graph.name
        outcomes["c"] = None
    except NNError as exc:
        outcomes["c"] = _refusal(exc)
    except Exception as exc:  # noqa: BLE001
        report.fail("error", f"C backend raised {type(exc).__name__}\n{_tail(exc)}")
        outcomes["c"] = "exception"
    report.compile_seconds = time.perf_counter() - t0
    if report.status == "error":
        return prep
    if outcomes["numpy"] != outcomes["c"]:
        report.fail("disagree", f"backends refuse differently: numpy {outcomes['numpy']!r}, C {outcomes['c']!r}")
    elif outcomes["numpy"] is not None:
        report.status, report.refusal = "refused", outcomes["numpy"]
    return prep


# ---- building the C --------------------------------------------------------------------
#
# The C module builds its extension at import, in `_lib_module = _build()`.  That one
# line is replaced by a call to a provider we pass in: first to collect the module's
# _CDEF, _SOURCE and _COMPILE_ARGS, then, once one extension holds the C of a whole
# group, to hand that extension to each module.  Every function name in the C starts
# with the network's name, and the sources #undef their short names at the end, so the
# programs of a group (each named differently) share one file.

_BUILD_LINE = re.compile(r"^_lib_module\s*=\s*_build\(\)\s*$", re.M)
_ARGS_LINE = re.compile(r"^_COMPILE_ARGS\s*=\s*(.+)$", re.M)


class _Collected(Exception):
    pass


def _exec_c_module(text: str, file: str, provider) -> types.ModuleType:
    if not _BUILD_LINE.search(text):
        raise RuntimeError("the C module no longer builds in `_lib_module = _build()`: update tests/differential.py")
    text = _BUILD_LINE.sub("_lib_module = __differential_provider__(globals())", text, count=1)
    module = types.ModuleType("nncc_diff_c")
    module.__dict__["__differential_provider__"] = provider
    exec(compile(text, f"<c module {file}>", "exec"), module.__dict__)
    return module


def _collect(text: str, file: str) -> tuple[str, str, list]:
    got = {}

    def provider(g):
        got.update(cdef=g["_CDEF"], source=g["_SOURCE"], args=list(g["_COMPILE_ARGS"]))
        raise _Collected

    try:
        _exec_c_module(text, file, provider)
    except _Collected:
        pass
    return got["cdef"], got["source"], got["args"]


def _build_extension(parts: list[tuple[str, str, list]], folder: str):
    """One cffi extension from the (cdef, source, args) of several modules."""
    import cffi
    cdef = "\n".join(p[0] for p in parts)
    source = "\n".join(p[1] for p in parts)
    args = []
    for p in parts:
        args += [a for a in p[2] if a not in args]
    args += [a for a in WARNING_FLAGS if a not in args]
    if OPTIMIZE is not None:
        args = [a for a in args if not a.startswith("-O")] + [OPTIMIZE]
    digest = hashlib.sha256((cdef + source + repr(args)).encode()).hexdigest()[:16]
    name = f"_nncc_diff_{digest}"
    builder = cffi.FFI()
    builder.cdef(cdef)
    builder.set_source(name, source, libraries=["m"] if os.name != "nt" else [], extra_compile_args=args)
    tmp = tempfile.mkdtemp(prefix="build-", dir=folder)
    # cffi (distutils) prints the compiler's command lines: keep them off the output
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            try:
                path = builder.compile(tmpdir=tmp)
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
    finally:
        os.close(saved)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_c(preps: list[Prepared], folder: str, group: int = 16) -> None:
    """Build the C of every prepared program, `group` programs per extension.

    A group whose build fails is built again one program at a time, so that the
    failure (a compiler warning, an error) lands on the program that caused it.
    """
    todo = []
    for prep in preps:
        if prep.c_text is None or prep.report.status != "ok":
            continue
        try:
            todo.append((prep, _collect(prep.c_text, prep.report.file)))
        except Exception as exc:  # noqa: BLE001
            prep.report.fail("error", f"C module text does not run: {type(exc).__name__}\n{_tail(exc)}")
    groups, current, names = [], [], set()
    for item in todo:
        if len(current) >= group or item[0].c_name in names:
            groups.append(current)
            current, names = [], set()
        current.append(item)
        names.add(item[0].c_name)
    if current:
        groups.append(current)
    for members in groups:
        try:
            lib = _build_extension([parts for _, parts in members], folder)
        except Exception as exc:  # noqa: BLE001
            if len(members) == 1:
                members[0][0].report.fail("error", f"C build failed ({type(exc).__name__}): "
                                                   f"{_compiler_message(exc)}")
                continue
            for m in members:
                build_c([m[0]], folder, group=1)
            continue
        for prep, _ in members:
            try:
                prep.c_module = _exec_c_module(prep.c_text, prep.report.file, lambda g, lib=lib: lib)
            except Exception as exc:  # noqa: BLE001
                prep.report.fail("error", f"C module does not load: {type(exc).__name__}\n{_tail(exc)}")


def _compiler_message(exc: BaseException) -> str:
    # distutils hides the compiler's output in the exception chain; show the warnings
    text = str(exc)
    for e in (exc.__cause__, exc.__context__):
        if e is not None:
            text += " " + str(e)
    return text[-2000:]


# ---- comparing -------------------------------------------------------------------------

def relative(a, b, floor: float = 0.0) -> float:
    """max |a - b| over max(max |b|, floor); nan, inf and shape mismatches count as
    infinitely far."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    same_nonfinite = (~np.isfinite(a) | ~np.isfinite(b))
    if same_nonfinite.any():
        if not np.array_equal(np.isnan(a), np.isnan(b)) or \
                not np.array_equal(np.where(np.isinf(a), a, 0), np.where(np.isinf(b), b, 0)):
            return float("inf")
        a, b = np.where(same_nonfinite, 0, a), np.where(same_nonfinite, 0, b)
    scale = max(float(np.max(np.abs(b), initial=0.0)), float(floor))
    diff = float(np.max(np.abs(a - b), initial=0.0))
    if diff == 0:
        return 0.0
    return diff / scale if scale > 0 else float("inf")


def draw_data(module, seed: int, dtype=np.float64, batch: int = BATCH):
    """Inputs uniform(-1, 1) and targets uniform(0.05, 0.95): targets then suit every
    loss of the prelude (probabilities for the cross-entropies)."""
    rng = np.random.default_rng(seed)
    inputs = [rng.uniform(-1, 1, (batch,) + tuple(s)).astype(dtype) for s in module.INPUT_SHAPES.values()]
    targets = [rng.uniform(0.05, 0.95, (batch,) + tuple(s)).astype(dtype) for s in module.TARGET_SHAPES.values()]
    return inputs, targets


def draw_params(module, seed: int, dtype=np.float64):
    """init_params moved by a little noise, so that `init zeros` puts no unit on a kink."""
    rng = np.random.default_rng(seed + 1000)
    params = module.init_params(seed, np.float64)
    return {k: (np.asarray(v, np.float64) + 0.1 * rng.standard_normal(v.shape)).astype(dtype)
            for k, v in params.items()}


def _record(report: Report, kind: str, error: float) -> None:
    report.worst[kind] = max(report.worst.get(kind, 0.0), error)


def _results(m, params, inputs, targets) -> dict:
    """What a module computes at one point: {what: value}, in a fixed order."""
    arrays = inputs + targets
    out = {"forward": m.forward(params, *inputs)}
    value, grads = m.loss_and_grad(params, *arrays)
    out["loss_and_grad value"] = value
    out["loss"] = m.loss(params, *arrays)
    for k in sorted(grads):
        out[f"grad {k}"] = grads[k]
    stepped = {k: v.copy() for k, v in params.items()}
    out["sgd_step value"] = m.sgd_step(stepped, *arrays, lr=0.1)
    for k in sorted(stepped):
        out[f"sgd_step {k}"] = stepped[k]
    return out


def _nudged(arrays, rng, dtype):
    """Each value moved by a few units in its last place: what round-off does to an input."""
    eps = np.finfo(dtype).eps
    return [(a * (1 + ROUNDOFF_ULPS * eps * rng.choice([-1.0, 1.0], size=np.shape(a)))).astype(dtype)
            for a in arrays]


def _compare_backends(report: Report, n, c, dtype, tol: float, seed: int) -> None:
    """C against numpy; a difference counts only beyond both the tolerance and what
    numpy itself moves by when its inputs move by round-off (its condition: the
    difference of two large near-equal terms, a gradient that is truly zero and so
    all round-off, cannot be judged closer than that)."""
    label = np.dtype(dtype).name
    params = draw_params(n, seed, dtype)
    inputs, targets = draw_data(n, seed, dtype)
    ref = None
    if dtype == np.float32:
        # overflow in float32 is the program's, not a disagreement: compare only where
        # the float64 values stay well inside float32's range
        ref = _results(n, {k: v.astype(np.float64) for k, v in params.items()},
                       [a.astype(np.float64) for a in inputs], [a.astype(np.float64) for a in targets])
        ref64 = max(float(np.max(np.abs(v), initial=0)) for v in ref.values())
        if not np.isfinite(ref64) or ref64 > F32_LIMIT:
            _record(report, f"{label} skipped (overflow)", 1.0)
            return
    got_n = _results(n, params, inputs, targets)
    got_c = _results(c, params, inputs, targets)
    if list(got_c) != list(got_n):
        report.fail("disagree", f"{label}: results differ in kind: C {list(got_c)} numpy {list(got_n)}")
        return
    rng = np.random.default_rng(seed + 3)
    nudged = []
    for _ in range(ROUNDOFF_POINTS):
        keys = sorted(params)
        moved = _nudged([params[k] for k in keys] + inputs + targets, rng, dtype)
        nudged.append(_results(n, dict(zip(keys, moved[:len(keys)])), moved[len(keys):len(keys) + len(inputs)],
                               moved[len(keys) + len(inputs):]))
    for what, want in got_n.items():
        got = got_c[what]
        if np.asarray(got).dtype != np.asarray(want).dtype or (np.ndim(want) and np.asarray(want).dtype != dtype):
            report.fail("disagree", f"{label} {what}: dtype C {np.asarray(got).dtype} numpy {np.asarray(want).dtype}")
        # a difference of ROUNDOFF_FLOOR units of round-off is allowed whatever the size
        floor = ROUNDOFF_FLOOR * float(np.finfo(dtype).eps) / tol
        err = relative(got, want, floor)
        noise = max(relative(other[what], want, floor) for other in nudged)
        if ref is not None:  # float32: numpy's own distance from the float64 answer counts too
            noise = max(noise, relative(want, ref[what], floor))
        _record(report, f"C vs numpy {label}", err)
        if not err <= max(tol, ROUNDOFF_MARGIN * noise) or err == float("inf"):  # nan or inf against a number
            report.fail("disagree", f"{label} {what}: C vs numpy relative {err:.3g} > {tol:g}"
                                    f" (numpy's own round-off {noise:.2g}; C {_brief(got)}, numpy {_brief(want)})")
        elif err > tol:
            _record(report, f"C vs numpy {label} judged at round-off", err)
    if dtype == np.float64:
        for what, want in got_n.items():
            if not np.all(np.isfinite(want)):
                report.fail("disagree", f"float64 numpy {what} is not finite: {_brief(want)}")


def _brief(a) -> str:
    a = np.asarray(a)
    if a.size <= 4:
        return np.array2string(a.ravel(), precision=17)
    return f"{a.shape} first {np.array2string(a.ravel()[:3], precision=17)}"


def _stencil(f, h):
    return (f(-2 * h) - 8 * f(-h) + 8 * f(h) - f(2 * h)) / (12 * h)


def _fd_at_point(n, seed: int):
    """{direction: (relative error, estimate disagreement)} at one random point."""
    params = draw_params(n, seed)
    inputs, targets = draw_data(n, seed)
    arrays = inputs + targets
    value, grads = n.loss_and_grad(params, *arrays)
    rng = np.random.default_rng(seed + 7)
    floor = FD_FLOOR * (1 + abs(value))
    # how far the loss moves when its inputs move by round-off: the rounding of a loss whose
    # terms cancel is that of its terms, not of the (smaller) loss
    keys = sorted(params)
    wobble = 0.0
    for _ in range(ROUNDOFF_POINTS):
        moved = _nudged([params[k] for k in keys] + arrays, rng, np.float64)
        wobble = max(wobble, abs(n.loss(dict(zip(keys, moved[:len(keys)])), *moved[len(keys):]) - value))
    out = {}
    groups = [("all parameters", sorted(params))] + [(k, [k]) for k in sorted(params)]
    for label, names in groups:
        v = {k: rng.standard_normal(params[k].shape) for k in names}
        norm = np.sqrt(sum(float((d ** 2).sum()) for d in v.values())) or 1.0
        v = {k: d / norm for k, d in v.items()}

        def f(t):
            return n.loss({**params, **{k: params[k] + t * v[k] for k in names}}, *arrays)

        fd1, fd2 = _stencil(f, FD_STEP), _stencil(f, FD_STEP / 2)
        # Richardson: the stencil's error goes as h^4, so (16 fd(h/2) - fd(h)) / 15 cancels it
        fd = (16 * fd2 - fd1) / 15
        an = sum(float((grads[k] * v[k]).sum()) for k in names)
        scale = max(abs(fd), abs(an), floor)
        # what the estimate cannot resolve: its truncation (fd1 against fd2) and the rounding
        # of the loss values it differences (a loss of 1e13 moves in steps of 2e-3)
        rounding = max(4 * np.finfo(np.float64).eps * max(abs(value), abs(f(2 * FD_STEP)), abs(f(-2 * FD_STEP))),
                       4 * wobble, 4 * _staircase(f), 4 * _jitter(f)) / FD_STEP
        out[label] = (abs(fd - an) / scale, (abs(fd1 - fd2) / 15 + rounding) / scale, fd, an)
    return out


def _jitter(f) -> float:
    """The loss's rounding at the stencil's own scale: its sixth differences over steps of
    FD_STEP / 2, where a smooth curve leaves ~h^6 f^(6) and roundings of size a leave
    ~17a.  It sees plateaus wider than MICRO_STEP: log(1 - sigmoid(z)) near z = 20 keeps
    one value over steps of 1e-7 in z, as 1 + exp(-z) moves in steps of eps."""
    y = np.array([f(FD_STEP / 2 * k) for k in range(-4, 5)])
    return float(np.max(np.abs(np.diff(y, 6)))) / 17


def _staircase(f) -> float:
    """How far f strays from a straight line over steps of MICRO_STEP, where the function
    itself is straight: the loss's rounding as finite differences meet it (a loss through
    log(1 - sigmoid(z)) near sigmoid 1 moves in steps of eps / (1 - sigmoid))."""
    y = np.array([f(MICRO_STEP * k) for k in range(-2, 3)])
    return float(np.max(np.abs(y[2:] - 2 * y[1:-1] + y[:-2]))) / 2  # zero on a straight line


def _check_fd(report: Report, n, seed: int) -> None:
    """Judge the gradient at the first point where every direction's estimate resolves
    TOL_FD.  Where none does (a gradient that is truly ~0 has no relative error to
    speak of; a loss of 1e13 hides small slopes), judge each direction at the best
    point to what its estimate can resolve, if that is within RESOLVED_LIMIT."""
    if not n.PARAM_SHAPES:
        return
    points = []
    for attempt in range(FD_POINTS):
        point = _fd_at_point(n, seed + 101 * attempt)
        if all(noise <= TOL_FD for _, noise, _, _ in point.values()):
            for label, (err, _, fd, an) in point.items():
                _record(report, "numpy vs finite differences", err)
                if not err <= TOL_FD:
                    report.fail("disagree", f"finite differences along {label}: relative {err:.3g} > {TOL_FD:g}"
                                            f" (fd {fd!r}, analytic {an!r})")
            return
        points.append(point)
    best = min(points, key=lambda p: max(noise for _, noise, _, _ in p.values()))
    resolved = max(noise for _, noise, _, _ in best.values()) <= RESOLVED_LIMIT
    for label, (err, noise, fd, an) in best.items():
        # at the best point, a gross error shows whatever the noise; where the noise is
        # small, an error beyond a few times the noise is one too
        limit = max(TOL_FD, RESOLVED_MARGIN * noise) if resolved else max(1e-3, 100 * noise)
        if not err <= limit:
            report.fail("disagree", f"finite differences along {label}: relative {err:.3g}, beyond what the "
                                    f"estimate resolves ({limit:.2g}; fd {fd!r}, analytic {an!r})")
        elif resolved:
            _record(report, "numpy vs finite differences, judged at the estimate's resolution", err)
    if report.status == "ok" and not resolved:
        report.status = "inconclusive"
        report.problems.append("finite differences: no smooth point found (kinks or overflow)")


def check_prepared(prep: Prepared, seed: int = 0) -> Report:
    report = prep.report
    if report.status in ("refused", "error") or prep.numpy_module is None:
        return report
    n, c = prep.numpy_module, prep.c_module
    try:
        if c is not None:
            _compare_backends(report, n, c, np.float64, TOL_C64, seed)
            _compare_backends(report, n, c, np.float32, TOL_C32, seed)
        _check_fd(report, n, seed)
    except Exception as exc:  # noqa: BLE001
        report.fail("error", f"running raised {type(exc).__name__}\n{_tail(exc)}")
    return report


def check_many(programs, folder: str | None = None, group: int = 16, seed: int = 0) -> list[Report]:
    """Reports for [(source, file)], the C of up to `group` programs built as one extension."""
    import warnings
    own = folder is None
    tmp = tempfile.TemporaryDirectory(prefix="nncc-diff-") if own else None
    folder = tmp.name if own else folder
    try:
        with warnings.catch_warnings():
            # numpy's own overflow warnings in a program are not failures; values are judged
            warnings.simplefilter("ignore", RuntimeWarning)
            with np.errstate(all="ignore"):
                preps = [prepare(src, file) for src, file in programs]
                build_c(preps, folder, group)
                return [check_prepared(p, seed) for p in preps]
    finally:
        if tmp is not None:
            tmp.cleanup()


def check_source(source: str, file: str = "<differential>.nn", folder: str | None = None, seed: int = 0) -> Report:
    return check_many([(source, file)], folder, group=1, seed=seed)[0]
