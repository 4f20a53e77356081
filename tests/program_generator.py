"""Random valid .nn programs over the whole language, for differential testing.

`generate(rng, name)` writes one program from a `random.Random` (the long campaign);
`programs()` is the same generator as a hypothesis strategy (shrinkable: every choice
is an integer drawn from hypothesis).  Programs are small (extents 1-6) and valid by
construction: shapes are tracked, window extents computed, and every formula has a
well-defined gradient almost everywhere (log, sqrt and division only of positive
forms, exp only of bounded ones), so that a refusal or a non-finite value points at the
compiler rather than at the program.

Data the programs expect (tests/differential.py draws it): inputs uniform(-1, 1),
targets uniform(0.05, 0.95) - probabilities, as binary_cross_entropy needs.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

# constants of every magnitude and spelling the grammar accepts
SMALL = ["1e-30", "1e-12", "0.000001", "1E-7", ".5", "0.25", "1e-3"]
PLAIN = ["2", "3", "0.5", "1.5", "5.", "0.7978845608028654", "0.044715", "1.4142135623730951", "0.1", "7"]
HUGE = ["1e30", "1e12", "1E+15", "1e20", "123456789"]


class Chooser:
    """The choices a program is made of, from random.Random or from hypothesis."""

    def __init__(self, rng: random.Random | None = None, draw=None):
        self.rng, self.draw = rng, draw

    def int(self, lo: int, hi: int) -> int:
        if self.draw is not None:
            from hypothesis import strategies as st
            return self.draw(st.integers(lo, hi))
        return self.rng.randint(lo, hi)

    def choice(self, seq):
        seq = list(seq)
        return seq[self.int(0, len(seq) - 1)]

    def chance(self, p: float) -> bool:
        return self.int(0, 999) < int(p * 1000)


@dataclass
class Tensor:
    name: str
    shape: tuple


@dataclass
class Program:
    c: Chooser
    defs: list = field(default_factory=list)
    def_names: set = field(default_factory=set)
    decls: list = field(default_factory=list)
    body: list = field(default_factory=list)
    pool: list = field(default_factory=list)
    counter: int = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def define(self, name: str, text: str) -> str:
        if name not in self.def_names:
            self.def_names.add(name)
            self.defs.append(text)
        return name

    def bind(self, expr: str, shape: tuple, prefix="h") -> Tensor:
        t = Tensor(self.fresh(prefix), tuple(shape))
        self.body.append(f"{t.name} = {expr}")
        self.pool.append(t)
        return t


# ---- scalar formulas -------------------------------------------------------------------

def constant(c: Chooser) -> str:
    return c.choice(c.choice([SMALL, PLAIN, PLAIN]))


def scalar_expr(c: Chooser, leaves: list[str], depth: int) -> str:
    """A formula of the leaves defined and differentiable almost everywhere on all reals,
    growing at most polynomially (exp only of bounded arguments)."""
    if depth <= 0 or c.chance(0.25):
        if c.chance(0.8):
            return c.choice(leaves)
        return constant(c)
    a = lambda: scalar_expr(c, leaves, depth - 1)  # noqa: E731
    k = c.int(0, 21)
    if k == 0:
        return f"({a()} + {a()})"
    if k == 1:
        return f"({a()} - {a()})"
    if k == 2:
        return f"({a()} * {a()})"
    if k == 3:
        return f"tanh({a()})"
    if k == 4:
        return f"sigmoid({a()})"
    if k == 5:
        return f"exp(tanh({a()}))"
    if k == 6:
        return f"exp(-({a()})^2)"
    if k == 7:
        x = a()
        return f"log(1 + {x} * {x})"
    if k == 8:
        return f"sqrt(({a()})^2 + {c.choice(['1', '0.5', '2'])})"
    if k == 9:
        return f"abs({a()})"
    if k == 10:
        return f"max({a()}, {a()})"
    if k == 11:
        return f"min({a()}, {a()})"
    if k == 12:
        op = c.choice([">", "<", ">=", "<="])
        return f"where({a()} {op} {c.choice(['0', '0.5', '-0.25', '1e-30'])}, {a()}, {a()})"
    if k == 13:
        x = a()
        return f"({a()} / (1 + {x} * {x}))"
    if k == 14:
        return f"({a()} / {c.choice(PLAIN + ['1e-3', '1e12'])})"
    if k == 15:
        return f"({a()})^{c.choice(['2', '3'])}"
    if k == 16:
        return f"abs({a()})^1.5"
    if k == 17:
        return f"-{a()}"
    if k == 18:
        # a huge gain into a bounded function, or undone at once: magnitudes survive
        big = c.choice(HUGE)
        return c.choice([f"tanh({big} * {a()})", f"(({a()} * {big}) / {big})", f"({a()} * {big} * {c.choice(SMALL)})"])
    if k == 19:
        return f"({constant(c)} * {a()} + {constant(c)})"
    if k == 20:
        return f"softplus({a()})"
    return f"2^tanh({a()})"


# ---- definitions -------------------------------------------------------------------------

def user_elementwise_fn(p: Program) -> tuple[str, str]:
    """(name, call suffix): a `fn` of one or two variables, maybe with an option."""
    c = p.c
    name = p.fresh("f")
    if c.chance(0.3):
        body = scalar_expr(c, ["z", "s"], 3)
        default = c.choice(PLAIN)
        p.define(name, f"fn {name}(z, s = {default}) = {body}")
        return name, c.choice(["", f"(s={c.choice(PLAIN + SMALL)})"])
    body = scalar_expr(c, ["z"], 3)
    p.define(name, f"fn {name}(z) = {body}")
    return name, ""


def user_binary_fn(p: Program) -> str:
    name = p.fresh("g")
    p.define(name, f"fn {name}(a, b) = {scalar_expr(p.c, ['a', 'b'], 3)}")
    return name


def user_loss_fn(p: Program) -> str:
    """A per-sample reduction of two rank-1 tensors, with index notation."""
    c = p.c
    name = p.fresh("l")
    term = scalar_expr(c, ["a[i]", "y[i]", "(a[i] - y[i])"], 2)
    if "a[i]" not in term:
        # the index's range comes from a plain subscript of an argument
        term = f"{term} + a[i]"
    k = c.int(0, 5)
    if k == 0:
        body = f"sum(i: {term})"
    elif k == 1:
        body = f"mean(i: {term})"
    elif k == 2:
        body = f"max(i: {term})"
    elif k == 3:
        body = f"logsumexp(i: {term})"
    elif k == 4:
        body = f"sum(i: (a[i] - y[i])^2) / {c.choice(PLAIN)} + {c.choice(['mean', 'sum'])}(i: {term})"
    else:
        body = f"logsumexp(i: a[i]) - sum(i: y[i] * a[i])"
    if c.chance(0.3):
        p.define(name, f"fn {name}(a[i], y[i], d = {c.choice(PLAIN)}) = d * {body}")
    else:
        p.define(name, f"fn {name}(a[i], y[i]) = {body}")
    return name


def flat2(p: Program) -> str:
    return p.define("flat2", "layer flat2(x: [c, n]) {\n    y[ch*n + i] = x[ch, i]\n}")


def init_clause(c: Chooser) -> str:
    return c.choice(["", "", "", " init zeros", " init normal(0, 0.5)", " init uniform(-0.5, 0.5)",
                     " init uniform(0.5, 1.5)"])


# ---- operators on tensors ------------------------------------------------------------------
# each returns the new tensor, or None when it does not apply to the tensor drawn

def op_activation(p: Program, t: Tensor):
    c = p.c
    k = c.int(0, 14)
    simple = ["sigmoid", "tanh", "relu", "softplus", "silu", "identity", "abs"]
    if k < len(simple):
        return p.bind(f"{t.name} |> {simple[k]}" if c.chance(0.5) else f"{simple[k]}({t.name})", t.shape)
    if k == 7:
        return p.bind(f"{t.name} |> leaky_relu(slope={c.choice(PLAIN + SMALL)})", t.shape)
    if k == 8:
        return p.bind(f"elu({t.name}, alpha={c.choice(PLAIN + SMALL)})", t.shape)
    if k == 9:
        return p.bind(f"exp(tanh({t.name}))", t.shape)
    if k == 10:
        return p.bind(f"log(1 + {t.name} * {t.name})", t.shape)
    if k == 11:
        return p.bind(f"sqrt({t.name} * {t.name} + {c.choice(['1', '0.5', '1e-3'])})", t.shape)
    if k == 12:
        return p.bind(f"log(sigmoid({t.name}))", t.shape)
    name, suffix = user_elementwise_fn(p)
    return p.bind(f"{t.name} |> {name}{suffix}" if suffix or c.chance(0.5) else f"{name}({t.name})", t.shape)


def op_scale(p: Program, t: Tensor):
    c = p.c
    k = c.int(0, 5)
    if k == 0:
        return p.bind(f"{constant(c)} * {t.name}", t.shape)
    if k == 1:
        return p.bind(f"{t.name} / {c.choice(PLAIN + HUGE + SMALL[1:])}", t.shape)
    if k == 2:
        return p.bind(f"{t.name} + {constant(c)}", t.shape)
    if k == 3:
        big = c.choice(HUGE)
        return p.bind(f"tanh({t.name} * {big})", t.shape)
    if k == 4:
        return p.bind(f"-{t.name} - -{constant(c)}", t.shape)
    return p.bind(f"{t.name}^2 * {constant(c)}", t.shape)


def op_combine(p: Program, t: Tensor):
    c = p.c
    same = [u for u in p.pool if u.shape == t.shape]
    u = c.choice(same)
    k = c.int(0, 5)
    if k == 0:
        return p.bind(f"{t.name} + {u.name}", t.shape)
    if k == 1:
        return p.bind(f"{t.name} - {constant(c)} * {u.name}", t.shape)
    if k == 2:
        return p.bind(f"{t.name} * {u.name}", t.shape)
    if k == 3:
        return p.bind(f"{t.name} / (1 + {u.name} * {u.name})", t.shape)
    if k == 4:
        g = user_binary_fn(p)
        return p.bind(f"{g}({t.name}, {u.name})", t.shape)
    return p.bind(f"relu({t.name} + {u.name}) * {u.name}", t.shape)


def op_concat(p: Program, t: Tensor):
    c = p.c
    fits = [u for u in p.pool if len(u.shape) == len(t.shape) and u.shape[1:] == t.shape[1:]]
    u = c.choice(fits)
    if t.shape[0] + u.shape[0] > 10:
        return None
    return p.bind(f"concat({t.name}, {u.name})", (t.shape[0] + u.shape[0],) + t.shape[1:])


def op_dense(p: Program, t: Tensor):
    if len(t.shape) != 1:
        return None
    c = p.c
    n = c.int(1, 6)
    opts = []
    if c.chance(0.2):
        opts.append("bias=false")
    if c.chance(0.2):
        opts.append(f"init={c.choice(['normal', 'xavier', 'he', 'uniform', 'zeros'])}")
    if c.chance(0.15):
        opts.append(f'name="{p.fresh("layer")}"')
    args = ", ".join([str(n)] + opts)
    return p.bind(f"{t.name} |> dense({args})" if c.chance(0.7) else f"dense({t.name}, {args})", (n,))


def op_softmax(p: Program, t: Tensor):
    if len(t.shape) != 1:
        return None
    return p.bind(f"{t.name} |> {p.c.choice(['softmax', 'log_softmax'])}", t.shape)


def op_flatten(p: Program, t: Tensor):
    if len(t.shape) == 3:
        return p.bind(f"{t.name} |> flatten", (t.shape[0] * t.shape[1] * t.shape[2],))
    if len(t.shape) == 2:
        return p.bind(f"{t.name} |> {flat2(p)}", (t.shape[0] * t.shape[1],))
    return None


def op_conv2d(p: Program, t: Tensor):
    if len(t.shape) != 3:
        return None
    c = p.c
    ch, h, w = t.shape
    pad = c.choice([0, 0, 1, 2])
    k = c.int(1, min(h, w) + 2 * pad)
    s = c.choice([1, 1, 2])
    out = c.int(1, 3)
    opts = [str(out), str(k)]
    if s != 1 or c.chance(0.2):
        opts.append(f"stride={s}")
    if pad or c.chance(0.2):
        opts.append(f"padding={pad}")
    if c.chance(0.2):
        opts.append("bias=false")
    oh, ow = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
    if out * oh * ow > 60:
        return None
    return p.bind(f"{t.name} |> conv2d({', '.join(opts)})", (out, oh, ow))


def op_pool(p: Program, t: Tensor):
    if len(t.shape) != 3:
        return None
    c = p.c
    ch, h, w = t.shape
    k = c.int(1, min(h, w, 3))
    kind = c.choice(["maxpool2d", "avgpool2d"])
    if c.chance(0.5):
        s = c.int(1, 2)
        return p.bind(f"{t.name} |> {kind}({k}, stride={s})", (ch, (h - k) // s + 1, (w - k) // s + 1))
    return p.bind(f"{t.name} |> {kind}({k})", (ch, (h - k) // k + 1, (w - k) // k + 1))


# user layers with index notation: windows, shifts, strides, reversals, affine outputs

def layer_shift(p: Program, t: Tensor):
    if len(t.shape) != 1:
        return None
    c = p.c
    n = t.shape[0]
    s = c.int(1, 2)
    k = c.int(0, 3)
    if k == 0 and n > s:
        name = p.define(f"diff{s}", f"layer diff{s}(x: [n]) {{\n    y[i] = x[i + {s}] - x[i] for i < n - {s}\n}}")
        return p.bind(f"{t.name} |> {name}", (n - s,))
    if k == 1:
        # reads past the end: zero padding
        name = p.define(f"ahead{s}", f"layer ahead{s}(x: [n]) {{\n    y[i] = x[i + {s}] * x[i] for i < n\n}}")
        return p.bind(f"{t.name} |> {name}", (n,))
    if k == 2:
        # reads before the start (negative indices): causal
        name = p.define(f"lag{s}", f"layer lag{s}(x: [n]) {{\n    param w: [2]\n"
                                   f"    y[i] = w[0] * x[i] + w[1] * x[i - {s}] for i < n + {s}\n}}")
        return p.bind(f"{t.name} |> {name}", (n + s,))
    name = p.define("reverse", "layer reverse(x: [k]) {\n    y[i] = x[k - 1 - i] for i < k\n}")
    return p.bind(f"{t.name} |> {name}", (n,))


def layer_stride(p: Program, t: Tensor):
    if len(t.shape) != 1:
        return None
    c = p.c
    n = t.shape[0]
    s = c.int(2, 3)
    if c.chance(0.5):
        name = p.define(f"every{s}", f"layer every{s}(x: [n]) {{\n    y[i] = x[{s}*i] for i < (n - 1) / {s} + 1\n}}")
        return p.bind(f"{t.name} |> {name}", ((n - 1) // s + 1,))
    name = p.define(f"pairs{s}", f"layer pairs{s}(x: [n]) {{\n"
                                 f"    y[i] = x[{s}*i] * x[{s}*i + 1] - x[i + 2] for i < n / {s} + 1\n}}")
    return p.bind(f"{t.name} |> {name}", (n // s + 1,))


def layer_conv1d(p: Program, t: Tensor):
    """A 1-D convolution with stride, dilation and padding (reads out of range)."""
    c = p.c
    if len(t.shape) == 1:
        ch, n, pre = 1, t.shape[0], None
    elif len(t.shape) == 2:
        ch, n, pre = t.shape[0], t.shape[1], None
    else:
        return None
    name = p.define("conv1d", "layer conv1d(x: [c, n], out, kernel, stride = 1, padding = 0, dilation = 1) {\n"
                              "    param weight: [out, c, kernel]\n    param bias: [out]\n"
                              "    y[o, i] = sum(ci, p: weight[o, ci, p] * x[ci, i*stride + dilation*p - padding])"
                              " + bias[o]\n"
                              "        for i < (n + 2*padding - dilation*(kernel - 1) - 1) / stride + 1\n}")
    pad, d, s = c.choice([0, 0, 1, 2]), c.choice([1, 1, 2]), c.choice([1, 1, 2])
    kmax = (n + 2 * pad - 1) // d + 1
    k = c.int(1, min(3, kmax))
    m = (n + 2 * pad - d * (k - 1) - 1) // s + 1
    if m < 1:
        return None
    if len(t.shape) == 1:
        lift = p.define("as_rows", "layer as_rows(x: [n]) {\n    y[0, i] = x[i] for i < n\n}")
        src = f"{t.name} |> {lift}"
        _ = pre
    else:
        src = t.name
    out = c.int(1, 3)
    return p.bind(f"{src} |> conv1d({out}, {k}, stride={s}, padding={pad}, dilation={d})", (out, m))


def layer_transposed(p: Program, t: Tensor):
    """A transposed convolution written as an affine output: overlapping windows when
    stride < kernel, gaps when stride > kernel."""
    if len(t.shape) != 1:
        return None
    c = p.c
    n = t.shape[0]
    k, s = c.int(1, 3), c.int(1, 3)
    name = p.define("upsample", "layer upsample(x: [n], kernel, stride) {\n    param w: [kernel]\n"
                                "    y[stride*i + p] = w[p] * x[i] for p < kernel\n}")
    return p.bind(f"{t.name} |> upsample({k}, {s})", (s * (n - 1) + k,))


def layer_matrix(p: Program, t: Tensor):
    """Per-sample matrix layers: bilinear, mean and max reductions, where, logsumexp."""
    c = p.c
    if len(t.shape) != 1:
        return None
    n = t.shape[0]
    k = c.int(0, 6)
    if k == 0:
        m = c.int(1, 4)
        name = p.define("bilinear", "layer bilinear(u: [m], v: [q], n) {\n    param weight: [n, m, q]\n"
                                    "    param bias: [n]\n"
                                    "    y[i] = sum(j, k: u[j] * weight[i, j, k] * v[k]) + bias[i]\n}")
        other = c.choice([u for u in p.pool if len(u.shape) == 1])
        return p.bind(f"bilinear({t.name}, {other.name}, {m})", (m,))
    if k == 1:
        m = c.int(1, 4)
        name = p.define("mean_layer", "layer mean_layer(x: [n], m) {\n    param w: [m, n]" + init_clause(c)
                        + "\n    y[i] = mean(j: w[i, j] * x[j])\n}")
        return p.bind(f"{t.name} |> {name}({m})", (m,))
    if k == 2:
        m = c.int(1, 4)
        name = p.define("maxmix", "layer maxmix(x: [n], m) {\n    param w: [m, n]\n"
                                  "    y[k] = max(j: sum(l: w[j, l] * x[l]) + x[k]) for k < n\n}")
        return p.bind(f"{t.name} |> {name}({m})", (n,))
    if k == 3:
        name = p.define("prelu_w", "layer prelu_w(x: [k]) {\n    param a: [1]" + init_clause(c)
                        + "\n    y[i] = where(x[i] > 0, x[i], a[0] * x[i])\n}")
        return p.bind(f"{t.name} |> {name}", (n,))
    if k == 4:
        name = p.define("centred", "layer centred(x: [n]) {\n    y[i] = x[i] - logsumexp(j: x[j]) + mean(j: x[j])\n}")
        return p.bind(f"{t.name} |> {name}", (n,))
    if k == 5:
        name = p.define("gate", "layer gate(x: [n]) {\n    param w: [n, n]\n"
                                "    y[i] = where(x[i] > 0, sum(j: w[i, j] * x[j]), sum(j: w[i, j] * x[j] * x[j]))\n}")
        return p.bind(f"{t.name} |> {name}", (n,))
    name = p.define("scaled_sum", "layer scaled_sum(x: [n], m) {\n    param w: [m]\n    param v: [m]\n"
                                  "    y[i] = x[i] * sum(j: w[j]) + sum(j: v[j] * v[j])\n}")
    return p.bind(f"{t.name} |> {name}({c.int(1, 4)})", (n,))


def layer_pool2d_user(p: Program, t: Tensor):
    if len(t.shape) != 3:
        return None
    c = p.c
    ch, h, w = t.shape
    k = c.int(1, min(h, w, 3))
    s = c.int(1, 2)
    red = c.choice(["max", "mean", "sum", "logsumexp"])
    name = p.define(f"pool_{red}", f"layer pool_{red}(x: [c, h, w], kernel, stride = kernel) {{\n"
                                   f"    y[ch, i, j] = {red}(p, q: x[ch, i*stride + p, j*stride + q])\n"
                                   f"        for i < (h - kernel) / stride + 1, j < (w - kernel) / stride + 1\n}}")
    return p.bind(f"{t.name} |> {name}({k}, stride={s})", (ch, (h - k) // s + 1, (w - k) // s + 1))


def layer_rows(p: Program, t: Tensor):
    """rank-2 operators: a matrix product along the last axis and a transpose."""
    if len(t.shape) != 2:
        return None
    c = p.c
    a, b = t.shape
    if c.chance(0.5):
        m = c.int(1, 4)
        name = p.define("rowmix", "layer rowmix(x: [m, n], k) {\n    param w: [k, n]\n"
                                  "    y[a, b] = sum(j: w[b, j] * x[a, j]) for b < k\n}")
        return p.bind(f"{t.name} |> {name}({m})", (a, m))
    name = p.define("transpose", "layer transpose(x: [m, n]) {\n    y[j, i] = x[i, j]\n}")
    return p.bind(f"{t.name} |> {name}", (b, a))


OPERATORS = [
    (op_activation, 6), (op_scale, 3), (op_combine, 3), (op_concat, 1), (op_dense, 5), (op_softmax, 1),
    (op_flatten, 2), (op_conv2d, 3), (op_pool, 2), (layer_shift, 2), (layer_stride, 1), (layer_conv1d, 2),
    (layer_transposed, 1), (layer_matrix, 3), (layer_pool2d_user, 1), (layer_rows, 1),
]


def _weighted(c: Chooser, table):
    total = sum(w for _, w in table)
    k = c.int(0, total - 1)
    for item, w in table:
        if k < w:
            return item
        k -= w
    raise AssertionError


# ---- whole programs ----------------------------------------------------------------------

def _input_shape(c: Chooser) -> tuple:
    kind = c.choice([1, 1, 1, 2, 3, 3])
    if kind == 1:
        return (c.int(1, 6),)
    if kind == 2:
        return (c.int(1, 3), c.int(1, 5))
    return (c.int(1, 2), c.int(2, 6), c.int(2, 6))


def _to_vector(p: Program, t: Tensor) -> Tensor:
    while len(t.shape) != 1:
        t = op_flatten(p, t)
    return t


def _loss_term(p: Program, a: Tensor, target: str) -> str:
    c = p.c
    k = c.int(0, 6)
    if k == 0:
        return f"quadratic({a.name}, {target})"
    if k == 1:
        return f"mse({a.name}, {target})"
    if k == 2:
        # probabilities in (0, 1): through a sigmoid or a softmax
        prob = c.choice([f"sigmoid({a.name})", f"softmax({a.name})", f"{a.name} |> sigmoid"])
        return f"binary_cross_entropy({prob}, {target})"
    if k == 3:
        return f"softmax_cross_entropy({a.name}, {target})"
    if k == 4:
        return f"quadratic(log_softmax({a.name}), {target})"
    name = user_loss_fn(p)
    return f"{name}({a.name}, {target})"


def generate(rng: random.Random | Chooser, name: str | None = None, steps: int | None = None) -> str:
    """One random valid program; `name` adds a `network` line (C symbols derive from it)."""
    c = rng if isinstance(rng, Chooser) else Chooser(rng)
    p = Program(c)
    for k in range(c.int(1, 2)):
        shape = _input_shape(c)
        t = Tensor(c.choice(["x", "u", "v", "img", "z_in"]) + str(k), shape)
        p.decls.append(f"input {t.name}: [{', '.join(map(str, shape))}]")
        p.pool.append(t)
    inputs = list(p.pool)
    n_steps = steps if steps is not None else c.int(1, 6)
    # a parameter somewhere keeps the gradient checks meaningful
    first = inputs[0]
    if len(first.shape) == 1 and c.chance(0.8):
        op_dense(p, first)
    elif len(first.shape) == 3 and c.chance(0.8):
        op_conv2d(p, first)
    for _ in range(n_steps):
        op = _weighted(c, OPERATORS)
        # prefer recent tensors (chains) while reusing older ones sometimes (DAGs)
        t = p.pool[-1] if c.chance(0.6) else c.choice(p.pool)
        op(p, t)
    # the loss: one to three terms over rank-1 tensors, each with a target of its shape
    terms = []
    ends = [p.pool[-1]] + [c.choice(p.pool) for _ in range(c.int(0, 2))]
    targets = {}
    for end in ends:
        a = _to_vector(p, end)
        if a.shape not in targets:
            targets[a.shape] = f"y{len(targets)}"
            p.decls.append(f"target {targets[a.shape]}: [{a.shape[0]}]")
        term = _loss_term(p, a, targets[a.shape])
        form = c.int(0, 5)
        if form == 1:
            term = f"{c.choice(PLAIN + SMALL + HUGE[:2])} * {term}"
        elif form == 2:
            term = f"{term} / {c.choice(PLAIN)}"
        terms.append(term)
    expr = terms[0]
    for t in terms[1:]:
        expr += f" {c.choice(['+', '-'])} {t}"
    if c.chance(0.1):
        expr = f"-{expr}" if len(terms) == 1 else f"-({expr})"
    reduce = "sum " if c.chance(0.3) else ""
    lines = []
    if name is not None:
        lines.append(f"network {name}")
    lines += p.defs + p.decls + p.body
    if c.chance(0.2):
        lines.append(f"output {c.choice([t for t in p.pool if t not in inputs] or inputs).name}")
    lines.append(f"loss = {reduce}{expr}")
    return "\n".join(lines) + "\n"


def programs(name: str | None = None):
    """The generator as a hypothesis strategy of source texts."""
    from hypothesis import strategies as st

    @st.composite
    def strategy(draw):
        return generate(Chooser(draw=draw), name)

    return strategy()


if __name__ == "__main__":
    import sys
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    print(generate(random.Random(seed), f"g{seed}"))
