"""The model zoo every gradient test runs over: .nn sources, input domains and PyTorch twins.

A `Model` is one .nn program plus what the tests need to exercise it:

  domains  how to draw each input and target (default: inputs uniform(-1, 1),
           targets uniform(0, 1)); chosen away from kinks and outside-domain values;
  twin     the same network written directly in PyTorch, `twin(P, X, Y) -> (output, loss)`
           with P the parameters by their nncc names, X the inputs and Y the targets by
           name (all torch tensors), the loss already reduced over the batch;
  marks    pytest marks, e.g. a strict xfail for a known compiler bug.

Tables: ELEMENTWISE (one row per prelude function), then the softmaxes, the losses,
DAG features and user definitions.  `examples()` discovers examples/*.nn.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

try:  # the twins are only called when torch is there (test_torch importorskips it)
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = F = None

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


# ---- input domains ---------------------------------------------------------------------

@dataclass(frozen=True)
class Uniform:
    lo: float = -1.0
    hi: float = 1.0

    def draw(self, rng, shape):
        return rng.uniform(self.lo, self.hi, size=shape)


@dataclass(frozen=True)
class AwayFromZero:
    """Random sign times uniform(lo, hi): keeps relu/abs/leaky inputs off their kink."""
    lo: float = 0.1
    hi: float = 2.0

    def draw(self, rng, shape):
        return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(self.lo, self.hi, size=shape)


@dataclass(frozen=True)
class OneHot:
    """One-hot over the feature axes of each sample."""

    def draw(self, rng, shape):
        batch, features = shape[0], int(np.prod(shape[1:]))
        out = np.zeros((batch, features))
        out[np.arange(batch), rng.integers(0, features, size=batch)] = 1.0
        return out.reshape(shape)


@dataclass(frozen=True)
class Simplex:
    """A probability vector per sample (positive, summing to 1)."""

    def draw(self, rng, shape):
        z = rng.normal(size=(shape[0], int(np.prod(shape[1:]))))
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        return p.reshape(shape)


@dataclass(frozen=True)
class Binary:
    def draw(self, rng, shape):
        return rng.integers(0, 2, size=shape).astype(np.float64)


DEFAULT_INPUT = Uniform(-1.0, 1.0)
DEFAULT_TARGET = Uniform(0.0, 1.0)


@dataclass(frozen=True)
class Model:
    id: str
    source: str
    domains: dict = field(default_factory=dict)
    twin: Callable | None = None
    batch: int = 5
    marks: tuple = ()
    file: str = ""  # the name errors and docstrings use

    @property
    def file_name(self) -> str:
        return self.file or f"{self.id}.nn"


def program(name: str, body: str, inputs=None, targets=None, defs: str = "") -> str:
    """A whole .nn program: header, declarations, definitions and body."""
    inputs = inputs if inputs is not None else {"x": [4]}
    targets = targets if targets is not None else {"y": [3]}
    lines = [f"network {name.replace('-', '_')}", ""]
    lines += [f"input {n}: [{', '.join(map(str, s))}]" for n, s in inputs.items()]
    lines += [f"target {n}: [{', '.join(map(str, s))}]" for n, s in targets.items()]
    if defs:
        lines += ["", textwrap.dedent(defs).strip()]
    lines += ["", textwrap.dedent(body).strip(), ""]
    return "\n".join(lines)


# ---- torch helpers for the twins -------------------------------------------------------

def lin(P, name, h):
    """torch.nn.Linear with the weight (out, in) and optional bias of nncc layer `name`."""
    return F.linear(h, P[f"{name}.weight"], P.get(f"{name}.bias"))


def reduce(per_sample, how="mean"):
    return per_sample.mean() if how == "mean" else per_sample.sum()


def quadratic(a, y):
    return 0.5 * ((a - y) ** 2).flatten(1).sum(1)


def bce(p, y):
    return F.binary_cross_entropy(p, y, reduction="none").flatten(1).sum(1)


def mse(a, y):
    return F.mse_loss(a, y, reduction="none").flatten(1).mean(1)


# ---- (b) every prelude operator ----------------------------------------------------------

@dataclass(frozen=True)
class Elementwise:
    name: str
    kwargs: str  # keyword arguments as written in .nn, e.g. "slope=0.2"
    domain: object  # where its argument is drawn from in the direct model
    torch_fn: Callable
    positive: bool = False  # only defined on positive numbers (log, sqrt)


ELEMENTWISE = (
    Elementwise("sigmoid", "", Uniform(-4, 4), lambda z: torch.sigmoid(z)),
    Elementwise("tanh", "", Uniform(-3, 3), lambda z: torch.tanh(z)),
    Elementwise("relu", "", AwayFromZero(), lambda z: F.relu(z)),
    Elementwise("leaky_relu", "", AwayFromZero(), lambda z: F.leaky_relu(z)),
    Elementwise("leaky_relu", "slope=0.2", AwayFromZero(), lambda z: F.leaky_relu(z, 0.2)),
    Elementwise("softplus", "", Uniform(-4, 4), lambda z: F.softplus(z)),
    Elementwise("elu", "", AwayFromZero(), lambda z: F.elu(z)),
    Elementwise("elu", "alpha=0.5", AwayFromZero(), lambda z: F.elu(z, 0.5)),
    Elementwise("silu", "", Uniform(-4, 4), lambda z: F.silu(z)),
    Elementwise("gelu", "", Uniform(-4, 4), lambda z: F.gelu(z)),
    # wide enough to reach both of its evaluation ranges (below 1.5, 1.5 to 6) and beyond
    Elementwise("erf", "", Uniform(-7, 7), lambda z: torch.erf(z)),
    Elementwise("exp", "", Uniform(-2, 2), lambda z: torch.exp(z)),
    Elementwise("log", "", Uniform(0.2, 3), lambda z: torch.log(z), positive=True),
    Elementwise("identity", "", Uniform(-2, 2), lambda z: z),
    Elementwise("abs", "", AwayFromZero(), lambda z: torch.abs(z)),
    Elementwise("sqrt", "", Uniform(0.2, 3), lambda z: torch.sqrt(z), positive=True),
)


def _op_id(op: Elementwise) -> str:
    return op.name + ("-" + op.kwargs.replace("=", "").replace(".", "") if op.kwargs else "")


def elementwise_models():
    out = []
    for op in ELEMENTWISE:
        call_kw = f", {op.kwargs}" if op.kwargs else ""
        stage = f"{op.name}({op.kwargs})" if op.kwargs else op.name

        # the function straight on an input drawn from its domain: tests f and f' pointwise
        def direct_twin(P, X, Y, f=op.torch_fn):
            a = f(X["x"])
            return a, reduce(quadratic(a, Y["y"]))

        out.append(Model(
            f"op-{_op_id(op)}-direct",
            program(f"op_{op.name}", f"a = {op.name}(x{call_kw})\nloss = quadratic(a, y)",
                    targets={"y": [4]}),
            {"x": op.domain}, direct_twin))

        # between two dense layers, as a network uses it (positive-only ones after a sigmoid)
        pre = " |> sigmoid" if op.positive else ""

        def chain_twin(P, X, Y, f=op.torch_fn, positive=op.positive):
            h = lin(P, "dense_1", X["x"])
            h = torch.sigmoid(h) if positive else h
            a = lin(P, "dense_2", f(h))
            return a, reduce(quadratic(a, Y["y"]))

        out.append(Model(
            f"op-{_op_id(op)}-between-dense",
            program(f"op_{op.name}", f"a = x |> dense(5){pre} |> {stage} |> dense(3)\n"
                                     "loss = quadratic(a, y)"),
            {}, chain_twin))
    return out


def softmax_models():
    out = []
    for name, f in (("softmax", lambda z: F.softmax(z, dim=1)),
                    ("log_softmax", lambda z: F.log_softmax(z, dim=1))):
        def direct_twin(P, X, Y, f=f):
            a = f(X["x"])
            return a, reduce(quadratic(a, Y["y"]))

        def dense_twin(P, X, Y, f=f):
            a = f(lin(P, "dense_1", X["x"]))
            return a, reduce(quadratic(a, Y["y"]))

        out.append(Model(f"op-{name}-direct",
                         program(name, f"a = {name}(x)\nloss = quadratic(a, y)", {"x": [5]}, {"y": [5]}),
                         {"x": Uniform(-3, 3)}, direct_twin))
        out.append(Model(f"op-{name}-after-dense",
                         program(name, f"a = x |> dense(4) |> {name}\nloss = quadratic(a, y)",
                                 targets={"y": [4]}),
                         {}, dense_twin))
    return out


def loss_models():
    out = []
    for how in ("mean", "sum"):
        kw = "sum " if how == "sum" else ""

        def quad_twin(P, X, Y, how=how):
            a = lin(P, "dense_1", X["x"])
            return a, reduce(quadratic(a, Y["y"]), how)

        def mse_twin(P, X, Y, how=how):
            a = lin(P, "dense_1", X["x"])
            if how == "mean":
                return a, torch.nn.MSELoss()(a, Y["y"])
            return a, mse(a, Y["y"]).sum()

        out.append(Model(f"loss-quadratic-{how}",
                         program("quad", f"a = x |> dense(3)\nloss = {kw}quadratic(a, y)"),
                         {"y": Uniform(-2, 2)}, quad_twin))
        out.append(Model(f"loss-mse-{how}",
                         program("mse", f"a = x |> dense(3)\nloss = {kw}mse(a, y)"),
                         {"y": Uniform(-2, 2)}, mse_twin))

        def bce_twin(P, X, Y, how=how):
            p = torch.sigmoid(lin(P, "dense_1", X["x"]))
            return p, reduce(bce(p, Y["y"]), how)

        out.append(Model(f"loss-bce-after-sigmoid-{how}",
                         program("bce", f"p = x |> dense(3) |> sigmoid\nloss = {kw}binary_cross_entropy(p, y)"),
                         {"y": Binary()}, bce_twin))

        def sce_twin(P, X, Y, how=how):
            z = lin(P, "dense_1", X["x"])
            labels = Y["y"].argmax(dim=1)
            return z, F.cross_entropy(z, labels, reduction=how)

        out.append(Model(f"loss-sce-onehot-{how}",
                         program("sce", f"z = x |> dense(4)\nloss = {kw}softmax_cross_entropy(z, y)",
                                 targets={"y": [4]}),
                         {"y": OneHot()}, sce_twin))

    # binary cross-entropy straight on probabilities in (0.05, 0.95)
    for tname, tdom in (("binary", Binary()), ("soft", Uniform(0, 1))):
        def bce_direct(P, X, Y):
            return X["p"], reduce(bce(X["p"], Y["y"]))

        out.append(Model(f"loss-bce-direct-{tname}-targets",
                         program("bce", "loss = binary_cross_entropy(p, y)", {"p": [3]}, {"y": [3]}),
                         {"p": Uniform(0.05, 0.95), "y": tdom}, bce_direct))

    # softmax cross-entropy straight on logits, one-hot and probability targets
    def sce_labels(P, X, Y):
        return X["z"], F.cross_entropy(X["z"], Y["y"].argmax(dim=1))

    def sce_probs(P, X, Y):
        return X["z"], F.cross_entropy(X["z"], Y["y"])

    src = program("sce", "loss = softmax_cross_entropy(z, y)", {"z": [5]}, {"y": [5]})
    out.append(Model("loss-sce-direct-onehot", src, {"z": Uniform(-3, 3), "y": OneHot()}, sce_labels))
    out.append(Model("loss-sce-direct-probabilities", src, {"z": Uniform(-3, 3), "y": Simplex()}, sce_probs))

    def sce_probs_dense(P, X, Y):
        z = lin(P, "dense_1", X["x"])
        return z, F.cross_entropy(z, Y["y"])

    out.append(Model("loss-sce-probabilities-after-dense",
                     program("sce", "z = x |> dense(5)\nloss = softmax_cross_entropy(z, y)", targets={"y": [5]}),
                     {"y": Simplex()}, sce_probs_dense))
    return out


def window_models():
    """conv2d, the pools and flatten, straight on inputs and inside a small network."""
    out = []
    convs = (  # (id, call, input shape, torch keywords, output shape)
        ("conv2d", "conv2d(3, 3)", [2, 6, 6], dict(), [3, 4, 4]),
        ("conv2d-padding", "conv2d(3, 3, padding=1)", [2, 5, 5], dict(padding=1), [3, 5, 5]),
        ("conv2d-stride-padding", "conv2d(3, 3, stride=2, padding=1)", [2, 6, 6], dict(stride=2, padding=1),
         [3, 3, 3]),
        ("conv2d-kernel2-stride2", "conv2d(4, 2, stride=2)", [1, 7, 7], dict(stride=2), [4, 3, 3]),
        ("conv2d-no-bias", "conv2d(3, 3, bias=false)", [2, 5, 5], dict(), [3, 3, 3]),
    )
    for cid, call, shape, kw, oshape in convs:
        def conv_twin(P, X, Y, kw=kw):
            a = F.conv2d(X["x"], P["conv2d_1.weight"], P.get("conv2d_1.bias"), **kw).flatten(1)
            return a, reduce(quadratic(a, Y["y"]))

        out.append(Model(f"op-{cid}", program("conv", f"a = x |> {call} |> flatten\nloss = quadratic(a, y)",
                                                {"x": shape}, {"y": [int(np.prod(oshape))]}),
                         {}, conv_twin))
    pools = (
        ("maxpool2d", "maxpool2d(2)", [2, 6, 6], lambda x: F.max_pool2d(x, 2), [2, 3, 3]),
        ("maxpool2d-stride", "maxpool2d(3, stride=2)", [2, 7, 7], lambda x: F.max_pool2d(x, 3, 2), [2, 3, 3]),
        ("avgpool2d", "avgpool2d(2)", [2, 6, 6], lambda x: F.avg_pool2d(x, 2), [2, 3, 3]),
        ("avgpool2d-stride", "avgpool2d(3, stride=2)", [2, 7, 7], lambda x: F.avg_pool2d(x, 3, 2), [2, 3, 3]),
        ("avgpool2d-odd-size", "avgpool2d(2)", [1, 5, 5], lambda x: F.avg_pool2d(x, 2), [1, 2, 2]),
        ("flatten", "identity", [2, 3, 4], lambda x: x, [2, 3, 4]),
    )
    for pid, call, shape, f, oshape in pools:
        def pool_twin(P, X, Y, f=f):
            a = f(X["x"]).flatten(1)
            return a, reduce(quadratic(a, Y["y"]))

        out.append(Model(f"op-{pid}", program("pool", f"a = x |> {call} |> flatten\nloss = quadratic(a, y)",
                                                {"x": shape}, {"y": [int(np.prod(oshape))]}),
                         {}, pool_twin))

    def convnet(P, X, Y):
        h = F.max_pool2d(torch.tanh(F.conv2d(X["x"], P["conv2d_1.weight"], P["conv2d_1.bias"], padding=1)), 2)
        z = lin(P, "dense_1", h.flatten(1))
        return z, F.cross_entropy(z, Y["y"].argmax(dim=1))

    out.append(Model("op-conv-pool-flatten-dense", program("convnet", """
        h = x |> conv2d(3, 3, padding=1) |> tanh |> maxpool2d(2)
        z = h |> flatten |> dense(4)
        loss = softmax_cross_entropy(z, y)
    """, {"x": [2, 6, 6]}, {"y": [4]}), {"y": OneHot()}, convnet, batch=3))
    return out


# ---- (c) DAG features ---------------------------------------------------------------------

def dag_models():
    out = []

    def fanout(P, X, Y):
        h = torch.tanh(lin(P, "dense_1", X["x"]))
        g = lin(P, "dense_2", h)
        k = lin(P, "dense_3", h)
        a = g * k + torch.sigmoid(g)
        return a, reduce(quadratic(a, Y["y"]))

    out.append(Model("dag-fanout", program("fanout", """
        h = x |> dense(5) |> tanh
        g = dense(h, 3)
        k = dense(h, 3)
        a = g * k + sigmoid(g)
        loss = quadratic(a, y)
    """), {}, fanout))

    def residual(P, X, Y):
        h = torch.tanh(lin(P, "dense_1", X["x"]))
        r = F.relu(lin(P, "dense_2", h) + h)
        a = lin(P, "dense_3", r)
        return a, reduce(quadratic(a, Y["y"]))

    out.append(Model("dag-residual", program("residual", """
        h = x |> dense(4) |> tanh
        r = relu(dense(h, 4) + h)
        a = r |> dense(3)
        loss = quadratic(a, y)
    """), {}, residual))

    def concat(P, X, Y):
        a = torch.tanh(lin(P, "dense_1", X["x"]))
        b = torch.sigmoid(lin(P, "dense_2", X["u"]))
        c = torch.cat([a, b, X["x"]], dim=1)
        out_ = lin(P, "dense_3", c)
        return out_, reduce(quadratic(out_, Y["y"]))

    out.append(Model("dag-concat", program("concat", """
        a = x |> dense(3) |> tanh
        b = u |> dense(2) |> sigmoid
        c = concat(a, b, x)
        o = c |> dense(3)
        loss = quadratic(o, y)
    """, {"x": [4], "u": [2]}), {}, concat))

    def several(P, X, Y):
        h = torch.tanh(lin(P, "dense_1", X["x"]) + lin(P, "dense_2", X["u"]))
        a = lin(P, "dense_3", h)
        p = torch.sigmoid(lin(P, "dense_4", h))
        return a, reduce(quadratic(a, Y["y"]) + bce(p, Y["t"]))

    out.append(Model("dag-several-inputs-and-targets", program("several", """
        h = tanh(dense(x, 4) + dense(u, 4))
        a = h |> dense(3)
        p = h |> dense(2) |> sigmoid
        loss = quadratic(a, y) + binary_cross_entropy(p, t)
    """, {"x": [4], "u": [3]}, {"y": [3], "t": [2]}), {"t": Binary()}, several))

    def arithmetic(P, X, Y):
        h = torch.sigmoid(lin(P, "dense_1", X["x"]))
        g = torch.exp(lin(P, "dense_2", X["x"]))
        a = (2 * h - 1) + h / 3 + (1 - h) * g - h / g + h ** 2 - 0.5 * g
        a = -a
        return a, reduce(quadratic(a, Y["y"]))

    out.append(Model("dag-arithmetic-with-numbers", program("arith", """
        h = x |> dense(3) |> sigmoid
        g = x |> dense(3) |> exp
        a = -((2 * h - 1) + h / 3 + (1 - h) * g - h / g + h ^ 2 - 0.5 * g)
        loss = quadratic(a, y)
    """), {}, arithmetic))

    def named(P, X, Y):
        b = torch.sigmoid(lin(P, "hidden", X["x"]))
        a = torch.sigmoid(lin(P, "out", b))
        return a, reduce(quadratic(a, Y["y"]))

    out.append(Model("dag-named-layers", program("named", """
        b = x |> dense(5, name="hidden") |> sigmoid
        a = b |> dense(3, name="out") |> sigmoid
        loss = quadratic(a, y)
    """), {}, named))

    def no_bias(P, X, Y):
        assert "dense_1.bias" not in P
        a = lin(P, "dense_2", torch.tanh(lin(P, "dense_1", X["x"])))
        return a, reduce(quadratic(a, Y["y"]))

    out.append(Model("dag-dense-without-bias", program("nobias", """
        a = x |> dense(5, bias=false) |> tanh |> dense(3)
        loss = quadratic(a, y)
    """), {}, no_bias))

    def output_hidden(P, X, Y):
        h = torch.tanh(lin(P, "dense_1", X["x"]))
        a = lin(P, "dense_2", h)
        return h, reduce(quadratic(a, Y["y"]))

    out.append(Model("dag-output-names-hidden", program("outp", """
        h = x |> dense(5) |> tanh
        a = h |> dense(3)
        output h
        loss = quadratic(a, y)
    """), {}, output_hidden))

    def unused_branch(P, X, Y):
        a = lin(P, "dense_1", X["x"])
        return a, reduce(quadratic(a, Y["y"]))

    out.append(Model("dag-param-not-reaching-loss", program("unused", """
        a = x |> dense(3)
        side = x |> dense(2) |> tanh
        loss = quadratic(a, y)
    """), {}, unused_branch))

    for choice in ("normal", "xavier", "he", "zeros", "uniform"):
        def init_twin(P, X, Y):
            a = lin(P, "dense_2", torch.tanh(lin(P, "dense_1", X["x"])))
            return a, reduce(quadratic(a, Y["y"]))

        out.append(Model(f"dag-init-{choice}", program("inits", f"""
            a = x |> dense(5, init="{choice}") |> tanh |> dense(3)
            loss = quadratic(a, y)
        """), {}, init_twin))
    return out


# ---- (d) user definitions: nothing is hand-written ------------------------------------------

USER_DEFS = """
    fn swish(z)    = z * sigmoid(z)
    fn softsign(z) = z / (1 + abs(z))
    fn leaky(z)    = where(z > 0, z, 0.01 * z)
    fn scaled(z, k = 2) = k * tanh(z / k)
    fn weighted_quadratic(a[i], y[i]) = sum(i: (1 + y[i]) * (a[i] - y[i])^2)
    fn mean_abs(a[i], y[i]) = mean(i: abs(a[i] - y[i]))

    layer bilinear(u: [m], v: [p], n) {
        param weight: [n, m, p]
        param bias: [n]
        y[i] = sum(j, k: u[j] * weight[i, j, k] * v[k]) + bias[i]
    }
"""


def user_models():
    out = []
    fns = {
        "swish": (lambda z: z * torch.sigmoid(z), Uniform(-4, 4)),
        "softsign": (lambda z: F.softsign(z), AwayFromZero()),
        "leaky": (lambda z: F.leaky_relu(z, 0.01), AwayFromZero()),
        "scaled": (lambda z: 2 * torch.tanh(z / 2), Uniform(-3, 3)),
    }
    for name, (f, dom) in fns.items():
        def direct(P, X, Y, f=f):
            a = f(X["x"])
            return a, reduce(quadratic(a, Y["y"]))

        def chain(P, X, Y, f=f):
            a = lin(P, "dense_2", f(lin(P, "dense_1", X["x"])))
            return a, reduce(quadratic(a, Y["y"]))

        out.append(Model(f"user-fn-{name}-direct",
                         program(f"user_{name}", f"a = {name}(x)\nloss = quadratic(a, y)",
                                 targets={"y": [4]}, defs=USER_DEFS), {"x": dom}, direct))
        out.append(Model(f"user-fn-{name}-between-dense",
                         program(f"user_{name}", f"a = x |> dense(5) |> {name} |> dense(3)\nloss = quadratic(a, y)",
                                 defs=USER_DEFS), {}, chain))

    def scaled_option(P, X, Y):
        a = 0.5 * torch.tanh(lin(P, "dense_1", X["x"]) / 0.5)
        return a, reduce(quadratic(a, Y["y"]))

    out.append(Model("user-fn-option", program("user_opt", "a = x |> dense(3) |> scaled(k=0.5)\n"
                                                           "loss = quadratic(a, y)", defs=USER_DEFS),
                     {}, scaled_option))

    out.append(Model("user-loss-weighted-quadratic",
                     program("user_loss", "a = x |> dense(3) |> tanh\nloss = weighted_quadratic(a, y)", defs=USER_DEFS),
                     {}, _weighted))

    def mean_abs(P, X, Y):
        a = lin(P, "dense_1", X["x"])
        return a, reduce(F.l1_loss(a, Y["y"], reduction="none").mean(1), "sum")

    out.append(Model("user-loss-mean-abs-sum",
                     program("user_l1", "a = x |> dense(3)\nloss = sum mean_abs(a, y)", defs=USER_DEFS),
                     {"y": Uniform(3, 4)}, mean_abs))  # targets far from a: |.| off its kink

    def bilinear(P, X, Y):
        h = torch.tanh(lin(P, "dense_1", X["x"]))
        b = torch.einsum("bj,ijk,bk->bi", h, P["bilinear_1.weight"], X["u"]) + P["bilinear_1.bias"]
        return b, reduce(quadratic(b, Y["y"]))

    out.append(Model("user-layer-bilinear", program("bilinear", """
        h = x |> dense(3) |> tanh
        b = bilinear(h, u, 4)
        loss = quadratic(b, y)
    """, {"x": [4], "u": [2]}, {"y": [4]}, defs=USER_DEFS), {}, bilinear))

    def bilinear_torch(P, X, Y):
        b = F.bilinear(X["x"], X["u"], P["bl.weight"], P["bl.bias"])
        return b, reduce(quadratic(b, Y["y"]))

    out.append(Model("user-layer-bilinear-as-torch", program("bilinear", """
        b = bilinear(x, u, 3, name="bl")
        loss = quadratic(b, y)
    """, {"x": [4], "u": [2]}, {"y": [3]}, defs=USER_DEFS), {}, bilinear_torch))

    # reads that are not windows of a sum: a shift, a finite difference, a crop, a strided
    # subsample (past the end: zeros), and the max-pool of the language reference as written
    shifts = """
        layer diff(x: [n]) {
            y[i] = x[i + 1] - x[i] for i < n - 1
        }
        layer crop(x: [n]) {
            y[i] = x[i] for i < n - 2
        }
        layer pairs(x: [n]) {
            y[i] = x[2*i] * x[2*i + 1] - x[i + 3] for i < n / 2 + 1
        }
        layer pool(x: [c, h, w], kernel, stride = kernel) {
            y[ch, i, j] = max(p, q: x[ch, i*stride + p, j*stride + q])
                for i < (h - kernel) / stride + 1, j < (w - kernel) / stride + 1
        }
    """

    def shifted(P, X, Y):
        h = lin(P, "dense_1", X["x"])
        padded = F.pad(h, (0, 1))  # h[9] reads zero
        d = h[:, 1:] - h[:, :-1]
        pr = padded[:, 0:9:2] * padded[:, 1:10:2] - h[:, 3:8]
        a = torch.cat([lin(P, "dense_2", d)[:, :4], pr], 1)
        q = F.max_pool2d(X["u"], 3, 2).flatten(1)
        return torch.cat([a, q], 1), reduce(quadratic(a, Y["y"]) + quadratic(q, Y["t"]))

    out.append(Model("user-layer-shift-crop-subsample", program("shifts", """
        h = x |> dense(9)
        a = concat(h |> diff |> dense(6) |> crop, pairs(h))
        q = u |> pool(3, stride=2) |> flatten
        o = concat(a, q)
        output o
        loss = quadratic(a, y) + quadratic(q, t)
    """, {"x": [4], "u": [2, 7, 7]}, {"y": [9], "t": [18]}, defs=shifts), {}, shifted))

    def shared_names(P, X, Y):
        a = torch.tanh(lin(P, "dense_1", torch.sigmoid(lin(P, "h", X["x"]))))
        return a, reduce(quadratic(a, Y["y"]))

    # a layer named like the tensor it feeds, and a tensor named like an automatic label
    out.append(Model("user-names-shared-by-layer-and-tensor", program("names", """
        h = x |> dense(4, name="h") |> sigmoid
        dense_2 = h |> dense(3)
        a = dense_2 |> tanh
        loss = quadratic(a, y)
    """), {}, shared_names))

    def reference(P, X, Y):
        h = F.max_pool2d(F.relu(F.conv2d(X["x"], P["conv2d_1.weight"], P["conv2d_1.bias"], padding=1)), 2)
        a = lin(P, "dense_1", h.flatten(1))
        return a, reduce(quadratic(a, Y["y"]))

    # the definitions of the language reference, word for word, replacing the prelude's
    out.append(Model("user-language-reference-definitions", program("reference", """
        a = x |> conv2d(3, 3, padding=1) |> relu |> maxpool2d(2) |> flatten |> dense(3)
        loss = quadratic(a, y)
    """, {"x": [2, 6, 6]}, defs=REFERENCE_DEFS), {}, reference, batch=3))

    def constants(P, X, Y):
        a = torch.tanh(lin(P, "dense_1", X["x"]))
        r = a / torch.sqrt((a ** 2).mean(1, keepdim=True)) * P["rms_1.g"]
        b = 2 ** r
        d = Y["y"] - b
        pinball = torch.where(d > 0, 0.9 * d, -0.1 * d).sum(1)
        return b, reduce(pinball)

    # constants that numpy would make float64 scalars (sqrt(3), log 2) and a where()
    # between two numbers (the pinball loss's derivative): float32 must stay float32
    out.append(Model("user-constants-keep-the-dtype", program("constants", """
        b = x |> dense(3) |> tanh |> rms
        loss = pinball(2 ^ b, y)
    """, defs="""
        fn pinball(a[i], y[i]) = sum(i: where(y[i] > a[i], 0.9 * (y[i] - a[i]), 0.1 * (a[i] - y[i])))

        layer rms(x: [k]) {
            param g: [k] init uniform(0.5, 1.5)
            y[i] = x[i] / sqrt(mean(j: x[j]^2)) * g[i]
        }
    """), {}, constants))

    def huber_twice(P, X, Y):
        h = lin(P, "dense_1", X["x"])
        per = F.huber_loss(h, Y["y"], delta=0.5, reduction="none").sum(1)
        return h, reduce(per + h.sum(1))

    # a fn's option used inside its reduction, and one tensor given for two arguments
    out.append(Model("user-fn-option-in-a-sum-and-one-tensor-twice", program("huber", """
        h = x |> dense(3)
        loss = huber(h, y, d=0.5) + smaller(h, h)
    """, defs="""
        fn huber(a[i], y[i], d = 1) = sum(i: where(abs(a[i] - y[i]) < d, 0.5 * (a[i] - y[i])^2,
                                                   d * (abs(a[i] - y[i]) - 0.5 * d)))
        fn smaller(a[i], b[i]) = sum(i: min(a[i], b[i]))
    """), {"y": Uniform(-3, 3)}, huber_twice))

    def prelu(P, X, Y):
        a = F.prelu(lin(P, "dense_1", X["x"]), P["prelu_1.a"])
        return a, reduce(quadratic(a, Y["y"]))

    # a constant subscript: one parameter shared by every element
    out.append(Model("user-layer-constant-subscript", program("prelu", """
        a = x |> dense(3) |> prelu
        loss = quadratic(a, y)
    """, defs="""
        layer prelu(x: [k]) {
            param a: [1] init uniform(0.1, 0.3)
            y[i] = where(x[i] > 0, x[i], a[0] * x[i])
        }
    """), {}, prelu))

    def gelu_powers(P, X, Y):
        h = lin(P, "dense_1", X["x"])
        g = 0.5 * h * (1 + torch.tanh(0.7978845608 * (h + 0.044715 * h ** 3)))
        a = torch.tanh(lin(P, "dense_2", g)) ** 3
        return a, reduce(quadratic(a, Y["y"]))

    # activations no output form exists for (the derivative stays in the input's terms)
    out.append(Model("user-fn-gelu-and-a-cube", program("gelu", """
        a = x |> dense(4) |> gelu |> dense(3) |> cube_tanh
        loss = quadratic(a, y)
    """, defs="""
        fn gelu(z) = 0.5 * z * (1 + tanh(0.7978845608 * (z + 0.044715 * z^3)))
        fn cube_tanh(z) = tanh(z)^3
    """), {}, gelu_powers))

    def causal(P, X, Y):
        w = P["causal_1.weight"]
        a = F.conv1d(F.pad(X["u"], (2, 0)), w.flip(-1)[None]).flatten(1)
        return a, reduce(quadratic(a, Y["y"]))

    # a window read backwards (x[i - p]): a causal convolution, zeros before the start
    out.append(Model("user-layer-causal-convolution", program("causal", """
        a = u |> causal(3)
        loss = quadratic(a, y)
    """, {"u": [2, 6]}, {"y": [6]}, defs="""
        layer causal(x: [c, w], kernel) {
            param weight: [c, kernel]
            y[i] = sum(ci, p: weight[ci, p] * x[ci, i - p]) for i < w
        }
    """), {}, causal))

    def reversed_(P, X, Y):
        h = lin(P, "dense_1", X["x"])
        a = h.flip(1) * h
        return a, reduce(quadratic(a, Y["y"]))

    # a read backwards: the reversal x[k - 1 - i]
    out.append(Model("user-layer-reversal", program("reverse", """
        h = x |> dense(4)
        a = reverse(h) * h
        loss = quadratic(a, y)
    """, targets={"y": [4]}, defs="""
        layer reverse(x: [k]) {
            y[i] = x[k - 1 - i] for i < k
        }
    """), {}, reversed_))
    return out


REFERENCE_DEFS = """
    fn quadratic(a[i], y[i]) = 0.5 * sum(i: (a[i] - y[i])^2)

    layer dense(x: [k], n, bias = true) {
        param weight: [n, k]  init uniform(-1/sqrt(k), 1/sqrt(k))
        param bias:   [n]     init uniform(-1/sqrt(k), 1/sqrt(k))
        y[i] = sum(j: weight[i, j] * x[j]) + bias[i]
    }

    layer conv2d(x: [c, h, w], out, kernel, stride = 1, padding = 0) {
        param weight: [out, c, kernel, kernel]
        param bias:   [out]
        y[o, i, j] = sum(ci, p, q: weight[o, ci, p, q]
                     * x[ci, i*stride + p - padding, j*stride + q - padding]) + bias[o]
            for i < (h + 2*padding - kernel) / stride + 1,
                j < (w + 2*padding - kernel) / stride + 1
    }

    layer maxpool2d(x: [c, h, w], kernel, stride = kernel) {
        y[ch, i, j] = max(p, q: x[ch, i*stride + p, j*stride + q])
            for i < (h - kernel) / stride + 1, j < (w - kernel) / stride + 1
    }
"""


def _weighted(P, X, Y):
    a = torch.tanh(lin(P, "dense_1", X["x"]))
    return a, reduce(((1 + Y["y"]) * (a - Y["y"]) ** 2).sum(1))


# ---- the examples -----------------------------------------------------------------------

def _nielsen(P, X, Y):
    a = torch.sigmoid(lin(P, "dense_2", torch.sigmoid(lin(P, "dense_1", X["x"]))))
    return a, reduce(quadratic(a, Y["y"]))


def _xor(P, X, Y):
    h = torch.tanh(lin(P, "dense_1", X["x"]))
    p = torch.sigmoid(lin(P, "dense_2", h))
    return p, F.binary_cross_entropy(p, Y["y"])  # one feature: the batch mean is torch's mean


def _zhou(P, X, Y):
    b = torch.sigmoid(lin(P, "hidden", X["x"]))
    yhat = torch.sigmoid(lin(P, "out", b))
    return yhat, reduce(quadratic(yhat, Y["y"]))


def _digits(P, X, Y):
    h = F.relu(lin(P, "dense_1", X["x"]))
    z = lin(P, "dense_2", h)
    return z, F.cross_entropy(z, Y["y"].argmax(dim=1))


def _linear42(P, X, Y):
    y = lin(P, "dense_1", X["x"])
    return y, (y ** 2).sum()


def _lenet(P, X, Y):
    h = F.max_pool2d(F.relu(F.conv2d(X["x"], P["conv2d_1.weight"], P["conv2d_1.bias"], padding=1)), 2)
    g = F.relu(F.conv2d(h, P["conv2d_2.weight"], P["conv2d_2.bias"], padding=1))
    z = lin(P, "dense_1", g.flatten(1))
    return z, F.cross_entropy(z, Y["y"].argmax(dim=1))


def _residual(P, X, Y):
    def conv(k, h):
        return F.conv2d(h, P[f"conv2d_{k}.weight"], P[f"conv2d_{k}.bias"], padding=1)

    stem = F.relu(conv(1, X["x"]))
    body = conv(3, F.relu(conv(2, stem)))
    block = F.relu(body + stem)
    z = lin(P, "dense_1", F.avg_pool2d(block, 2).flatten(1))
    return z, F.cross_entropy(z, Y["y"].argmax(dim=1))


EXAMPLE_EXTRAS = {  # domains and PyTorch twins of the examples that have one
    "nielsen": dict(domains={"x": Uniform(0, 1)}, twin=_nielsen, batch=3),
    "xor": dict(domains={"x": Binary(), "y": Binary()}, twin=_xor, batch=4),
    "zhou": dict(twin=_zhou),
    "digits": dict(domains={"x": Uniform(0, 1), "y": OneHot()}, twin=_digits),
    "linear42": dict(twin=_linear42),
    "lenet": dict(domains={"x": Uniform(0, 1), "y": OneHot()}, twin=_lenet, batch=3),
    "residual": dict(domains={"x": Uniform(0, 1), "y": OneHot()}, twin=_residual, batch=3),
}


def example_paths():
    return sorted(EXAMPLES.glob("*.nn"))


def examples():
    out = []
    for path in example_paths():
        extra = EXAMPLE_EXTRAS.get(path.stem, {})
        out.append(Model(f"example-{path.stem}", path.read_text(encoding="utf-8"),
                         extra.get("domains", {}), extra.get("twin"), extra.get("batch", 5),
                         file=f"examples/{path.name}"))
    return out


def operator_models():
    return elementwise_models() + softmax_models() + loss_models() + window_models()


def zoo():
    """Every model: examples, prelude operators, DAG features and user definitions."""
    return examples() + operator_models() + dag_models() + user_models()
