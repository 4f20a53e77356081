"""Programs the front end used to accept into broken modules, or fail on with a traceback.

Each is now either compiled correctly or refused with a located, plain-words NNError:
names that would collide in the generated code (A), constants and sizes no float64 or
C int holds (B), inputs that raised internal exceptions (C), tensors named like an
option of the operator that reads them (D), and how messages locate and show a line (E).
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nncc import naming
from nncc.api import compile_source, load_module
from nncc.errors import NNError

ROOT = Path(__file__).resolve().parents[1]
HEADER = "network bad\ninput x: [4]\ntarget y: [3]\n"  # the body starts on line 4


def refused(body: str, message: str, line: int | None = None, whole: bool = False) -> NNError:
    """The NNError compiling the program raises; its message matches `message`."""
    text = body if whole else HEADER + body
    with pytest.raises(NNError) as info:
        compile_source(text, "case.nn")
    err = info.value
    assert err.loc is not None, err.render()
    assert re.search(message, err.message), err.render()
    if line is not None:
        assert err.loc.line == line, err.render()
    rendered = err.render().splitlines()
    assert rendered[0].startswith(f"case.nn:{err.loc.line}:{err.loc.col}: error: "), rendered
    assert len(rendered) >= 3 and rendered[2].strip() == "^", err.render()
    return err


def batch(module, seed=0, n=3):
    """Random float64 arrays for every input and target of a generated module."""
    rng = np.random.default_rng(seed)
    shapes = {**module.INPUT_SHAPES, **module.TARGET_SHAPES}
    return [rng.uniform(-1, 1, size=(n, *s)) for s in shapes.values()]


def loss_of(text: str, seed=0) -> float:
    m = load_module(text, "case.nn")
    return m.loss(m.init_params(seed, np.float64), *batch(m))


# ---- A: names that would collide in the generated code ----------------------------------

def test_a_layer_name_with_full_width_letters_is_refused():
    # Python folds identifiers by NFKC: name="ｗ" would be the very variable of name="w"
    refused('a = x |> dense(3, name="w")\nb = a |> dense(3, name="ｗ")\nloss = quadratic(b, y)\n',
            r"name= takes .*identifier in ASCII", line=5)


@pytest.mark.parametrize("first, second", [("np", "np_"), ("np_", "np")])
def test_a_trailing_underscore_never_merges_two_tensors(first, second):
    # np is the module's numpy, so the tensor np is the variable np_
    refused(f"{first} = x |> dense(3)\n{second} = {first} |> dense(3)\nloss = quadratic({second}, y)\n",
            rf"the name '{second}' is taken.*tensor '{first}' np_", line=5)


def test_a_layer_name_cannot_make_a_gradient_variable():
    refused('a = x |> dense(3)\nb = a |> dense(3)\nc = b |> dense(3, name="d_dense_2")\nloss = quadratic(c, y)\n',
            r"'d_dense_2.weight' is taken.*gradient of 'dense_2.weight' d_dense_2_weight", line=6)


def test_two_parameters_with_one_plain_name_are_refused():
    layers = ("layer L(x: [k]) {\n    param b_c: [k]\n    y[i] = x[i] * b_c[i]\n}\n"
              "layer M(x: [k]) {\n    param c: [k]\n    y[i] = x[i] * c[i]\n}\n")
    refused(layers + 'h = x |> L(name="a") |> M(name="a_b") |> dense(3)\nloss = quadratic(h, y)\n',
            r"'a_b.c' is taken.*parameter 'a.b_c' a_b_c", line=12)


def test_an_automatic_name_that_is_a_gradient_variable_is_refused():
    # the output of op d_x is named d_x_1, the gradient variable of the tensor x_1
    refused("layer d_x(x: [k]) {\n    y[i] = 2 * x[i]\n}\nx_1 = x |> dense(3)\nloss = quadratic(d_x(x_1), y)\n",
            r"would be called d_x_1 .*gradient of 'x_1'", line=8)


@pytest.mark.parametrize("role", ["tensor", "input", "target"])
@pytest.mark.parametrize("name", ["INPUT_SHAPES", "TARGET_SHAPES", "loss_and_grad", "float"])
def test_names_the_module_uses_work_as_tensor_names(role, name):
    if role == "tensor":
        text = HEADER + f"{name} = x |> dense(3)\nloss = quadratic({name}, y)\n"
        ref = HEADER + "q = x |> dense(3)\nloss = quadratic(q, y)\n"
    elif role == "input":
        text = f"network n\ninput {name}: [4]\ntarget y: [3]\nloss = quadratic({name} |> dense(3), y)\n"
        ref = "network n\ninput q: [4]\ntarget y: [3]\nloss = quadratic(q |> dense(3), y)\n"
    else:
        text = f"network n\ninput x: [4]\ntarget {name}: [3]\nloss = quadratic(x |> dense(3), {name})\n"
        ref = "network n\ninput x: [4]\ntarget q: [3]\nloss = quadratic(x |> dense(3), q)\n"
    m = load_module(text, "case.nn")
    params = m.init_params(0, np.float64)
    value = m.loss(params, *batch(m))
    assert value == pytest.approx(loss_of(ref))
    value_sgd = m.sgd_step(params, *batch(m), lr=0.1)
    assert value_sgd == pytest.approx(value)


def _template_names() -> set:
    """Names the module templates bind at module level, and the API functions' arguments."""
    names = set()
    for path in (ROOT / "templates").glob("*.py.j2"):
        text = path.read_text(encoding="utf-8")
        names |= set(re.findall(r"^def (\w+)", text, re.M))
        names |= set(re.findall(r"^(\w+)\s*=", text, re.M))
        for module, alias in re.findall(r"^import ([\w.]+)(?: as (\w+))?", text, re.M):
            names.add(alias or module.split(".")[0])
        for args in re.findall(r"^def (?:forward|loss|loss_and_grad|sgd_step|init_params)\(([^)]*)\)", text, re.M):
            names |= {a.split("=")[0].strip() for a in args.split(",") if "{" not in a and a.strip()}
    return {n for n in names if not n.startswith("_")}


def test_every_module_level_name_of_the_templates_is_reserved():
    missing = _template_names() - naming.RESERVED
    assert not missing, f"names the generated modules define but naming.RESERVED lacks: {sorted(missing)}"


def test_c_header_names_must_differ_in_more_than_case():
    refused("network n\ninput x: [4]\ninput X: [4]\ntarget y: [3]\nloss = quadratic(x |> dense(3), y)\n",
            r"'X' and the tensor 'x' would share the C header name N_X_SIZE", line=3, whole=True)
    refused("network n\ninput DENSE_1_WEIGHT: [4]\ntarget y: [3]\n"
            "loss = quadratic(DENSE_1_WEIGHT |> dense(3), y)\n",
            r"parameter 'dense_1.weight' and the tensor 'DENSE_1_WEIGHT' would share", whole=True)


def test_c_header_words_of_its_own_are_taken():
    refused("network n\ninput workspace: [4]\ntarget y: [3]\nloss = quadratic(workspace |> dense(3), y)\n",
            r"'workspace' is taken in the C header: N_WORKSPACE_SIZE", line=2, whole=True)


# ---- B: accepted programs that produced broken modules ----------------------------------

def test_square_root_of_a_negative_constant_is_refused():
    refused("fn f(z) = z * sqrt(-1)\na = x |> dense(3) |> f\nloss = quadratic(a, y)\n",
            r"square root of a negative number", line=4)


@pytest.mark.parametrize("formula", ["z * 1e308 * 10", "2 * (z + 1e308)", "(z^1e200)^1e200"])
def test_an_infinite_constant_in_a_formula_is_refused(formula):
    refused(f"fn f(z) = {formula}\na = x |> dense(3) |> f\nloss = quadratic(a, y)\n", r"too large", line=4)


def _layer(init: str) -> str:
    return (f"layer L(x: [k], n) {{\n    param weight: [n, k] init {init}\n"
            f"    y[i] = sum(j: weight[i, j] * x[j])\n}}\na = x |> L(3)\nloss = quadratic(a, y)\n")


@pytest.mark.parametrize("init, message", [
    ("uniform(-1e308 * 10, 1)", r"too large"),
    ("normal(0, -1)", r"standard deviation of 0 or more"),
    ("uniform(1, -1)", r"lo <= hi"),
])
def test_an_init_that_cannot_draw_is_refused(init, message):
    refused(_layer(init), message, line=5)


@pytest.mark.parametrize("program, line", [
    ("a = x |> dense(3000000000000000000000000000000)\nloss = quadratic(a, y)\n", 4),
    ("input u: [3000000000000000000000000000000]\na = x |> dense(3)\nloss = quadratic(a, y)\n", 4),
    ("input u: [100000, 100000]\na = x |> dense(3)\nloss = quadratic(a, y)\n", 4),
    ("a = x |> dense(100000) |> dense(100000)\nloss = quadratic(a |> dense(3), y)\n", 4),
])
def test_sizes_are_bounded(program, line):
    refused(program, r"more than the 2147483647", line=line)


def test_concat_of_rank_five_tensors_joins_them():
    text = ("network n\ninput x: [1, 2, 2, 2, 2]\ninput u: [1, 2, 2, 2, 2]\ntarget y: [2, 2, 2, 2, 2]\n"
            "layer flat(x: [a, b, c, d, e]) {\n"
            "    y[i*b*c*d*e + j*c*d*e + k*d*e + l*e + m] = x[i, j, k, l, m]\n}\n"
            "loss = sum quadratic(concat(x, u) |> flat, y |> flat)\n")
    m = load_module(text, "case.nn")
    x, u, y = batch(m)
    expected = 0.5 * ((np.concatenate([x, u], axis=1) - y) ** 2).sum()
    assert m.loss(m.init_params(0, np.float64), x, u, y) == pytest.approx(expected)


# ---- C: inputs that raised internal exceptions ------------------------------------------

FORMULA = "fn f(z) = {}\na = x |> dense(3) |> f\nloss = quadratic(a, y)\n"


@pytest.mark.parametrize("formula, message", [
    ("z / 0", r"division by zero"),
    ("1/0 + z", r"division by zero"),
    ("z/(1-1)", r"division by zero"),
    ("(z - z)^-1", r"division by zero"),
    ("z * log(0)", r"logarithm of zero"),
    ("z * 1e309", r"too large"),
    ("z * " + "9" * 4300, r"too large"),
    ("z * 2^20000", r"too large"),
    ("z * exp(1000)", r"too large"),
    ("z * (-8)^(1/3)", r"not a real number"),
    ("z * (z > 0)", r"comparison is only allowed as the first argument of 'where'"),
    ("(z > 0) + 1", r"comparison is only allowed"),
])
def test_a_bad_constant_in_a_formula_is_located(formula, message):
    refused(FORMULA.format(formula), message, line=4)


@pytest.mark.parametrize("expr, message", [
    ("a * 10.0^400", r"too large"),
    ("a * 10^400", r"too large"),
    ("a * (-8)^(1/3)", r"not a real number"),
    ("a * 0^-1", r"division by zero"),
])
def test_a_bad_constant_at_network_level_is_located(expr, message):
    refused(f"a = x |> dense(3)\nb = {expr}\nloss = quadratic(b, y)\n", message, line=5)


@pytest.mark.parametrize("program", [
    "a = x |> dense(10^5000)\nloss = quadratic(a, y)\n",
    "a = x |> dense(3) |> leaky_relu(slope=10^400)\nloss = quadratic(a, y)\n",
    "layer L(x: [k], s = " + "9" * 4300 + ") {\n    y[i] = x[i] * s\n}\na = x |> L |> dense(3)\n"
    "loss = quadratic(a, y)\n",
])
def test_huge_option_values_are_located(program):
    refused(program, r"too large")


def _within(seconds: float, fn):
    def expire(*_):
        raise TimeoutError(f"took more than {seconds} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(int(seconds))
    try:
        start = time.monotonic()
        fn()
        return time.monotonic() - start
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("program", [
    "a = x |> dense(3)\nb = a * 9^9^9\nloss = quadratic(b, y)\n",
    FORMULA.format("z * 9^9^9"),
    FORMULA.format("z * 9^-9^9"),
])
def test_a_tower_of_powers_is_refused_at_once(program):
    _within(30, lambda: refused(program, r"too (large|small)"))


@pytest.mark.parametrize("program, message", [
    ("layer L(x: [k]) {\n    y[i] = x[i] for i < (k > 1)\n}\na = x |> L |> dense(3)\nloss = quadratic(a, y)\n",
     r"comparison"),
    ("layer L(x: [k], n, m = n > 1) {\n    param w: [n, k]\n    y[i] = sum(j: w[i, j] * x[j])\n}\n"
     "a = x |> L(3)\nloss = quadratic(a, y)\n", r"comparison"),
    ("layer L(x: [k], n) {\n    param w: [n, k] init uniform(0 > 1, 1)\n    y[i] = sum(j: w[i, j] * x[j])\n}\n"
     "a = x |> L(3)\nloss = quadratic(a, y)\n", r"comparison"),
    ("fn f(a[i], y[i]) = sum(i: a[i] > y[i])\nloss = f(x |> dense(3), y)\n", r"comparison"),
    ("layer L(x: [k]) {\n    y[1] = x[0]\n}\na = x |> L |> dense(3)\nloss = quadratic(a, y)\n", r"needs an index"),
])
def test_misplaced_comparisons_and_constant_subscripts_are_located(program, message):
    refused(program, message)


def test_a_vertical_tab_after_a_name_is_located():
    err = refused("a = x\v |> dense(3)\nloss = quadratic(a, y)\n", r"unexpected character '\\x0b'", line=4)
    assert err.loc.col == 6


# ---- D: tensors named like an option of the operator that reads them --------------------

@pytest.mark.parametrize("name", ["n", "bias"])
def test_a_tensor_named_like_a_dense_option(name):
    assert loss_of(HEADER + f"{name} = x |> dense(3)\nh = {name} |> dense(3)\nloss = quadratic(h, y)\n") == \
        pytest.approx(loss_of(HEADER + "q = x |> dense(3)\nh = q |> dense(3)\nloss = quadratic(h, y)\n"))


@pytest.mark.parametrize("name", ["out", "kernel", "stride", "padding"])
def test_a_tensor_named_like_a_conv2d_option(name):
    def program(t):
        return (f"network n\ninput x: [1, 6, 6]\ntarget y: [2]\n{t} = x |> conv2d(2, 3)\n"
                f"g = {t} |> conv2d(2, 2, stride=1, padding=1) |> maxpool2d(2) |> flatten |> dense(2)\n"
                f"loss = mse(g, y)\n")
    assert loss_of(program(name)) == pytest.approx(loss_of(program("q")))


@pytest.mark.parametrize("name, call", [("slope", "leaky_relu(0.1)"), ("alpha", "elu")])
def test_a_tensor_named_like_a_fn_option(name, call):
    def program(t):
        return HEADER + f"{t} = x |> dense(3)\nh = {t} |> {call}\nloss = quadratic(h, y)\n"
    assert loss_of(program(name)) == pytest.approx(loss_of(program("q")))


# ---- E: messages ------------------------------------------------------------------------

def test_a_long_pipe_is_a_flat_chain_not_a_deep_nesting():
    assert loss_of(HEADER + "a = x" + " |> identity" * 400 + "\nloss = quadratic(a |> dense(3), y)\n") == \
        pytest.approx(loss_of(HEADER + "loss = quadratic(x |> dense(3), y)\n"))


@pytest.mark.parametrize("program", [
    "a = " + "-" * 5000 + "x\nloss = quadratic(a |> dense(3), y)\n",
    "fn f(z) = " + "-" * 5000 + "z\nloss = quadratic(x |> dense(3) |> f, y)\n",
    "a = x" + " + x" * 3000 + "\nloss = quadratic(a |> dense(3), y)\n",
])
def test_deep_nesting_is_a_located_error(program):
    refused(program, r"nested too deeply", line=4)


def test_no_input_points_at_a_line_with_text():
    err = refused("\n# a comment\nnetwork bad\ntarget y: [3]\nloss = quadratic(y, y)\n", r"no input", whole=True)
    assert err.loc.line == 3
    assert err.render().splitlines()[1].strip() == "network bad"


@pytest.mark.parametrize("char", ["\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\r"])
def test_the_line_shown_is_the_line_counted(char):
    text = f"network bad\n#{char} a comment\ninput x: [4]\ntarget y: [3]\na = x |> dens(3)\nloss = quadratic(a, y)\n"
    err = refused(text, r"unknown layer or function 'dens'", line=5, whole=True)
    assert err.render().splitlines()[1].strip() == "a = x |> dens(3)"


def test_a_form_feed_inside_a_line_is_shown_escaped_with_the_caret_in_place():
    err = refused("a = x \f|> dens(3)\nloss = quadratic(a, y)\n", r"'dens'", line=4)
    shown, caret = err.render().splitlines()[1:3]
    assert shown == "    a = x \\x0c|> dens(3)"
    assert shown[caret.index("^"):].startswith("dens")


def test_a_byte_order_mark_is_accepted():
    text = "\ufeffnetwork bom\ninput x: [4]\ntarget y: [3]\na = x |> dense(3)\nloss = quadratic(a, y)\n"
    assert compile_source(text, "case.nn").graph.name == "bom"
    err = refused("\ufeff" + HEADER + "a = x |> dens(3)\nloss = quadratic(a, y)\n", r"'dens'", line=4,
                  whole=True)
    assert err.loc.col == 10


@pytest.mark.parametrize("char, shown", [("\x00", "\\x00"), ("\x1b", "\\x1b"), ("\u202e", "\\u202e")])
def test_control_characters_are_escaped_in_messages(char, shown):
    err = refused(f"a = x |> dense(3) {char}[31m\nloss = quadratic(a, y)\n", r"unexpected character", line=4)
    text = err.render()
    assert char not in text
    assert f"'{shown}'" in text.splitlines()[0]
    source, caret = text.splitlines()[1:3]
    assert source[caret.index("^"):].startswith(shown)


def test_a_string_option_is_escaped_in_messages():
    err = refused('a = x |> dense(3) |> leaky_relu(slope="\x07")\nloss = quadratic(a, y)\n', r"must be a number")
    assert "\x07" not in err.render() and '"\\x07"' in err.render()


def test_the_command_reports_deep_nesting_and_control_characters_located(tmp_path):
    (tmp_path / "deep.nn").write_text(HEADER + "a = " + "-" * 5000 + "x\nloss = quadratic(a, y)\n",
                                      encoding="utf-8")
    (tmp_path / "nul.nn").write_text(HEADER + "a = x |> dense(3) \x00\nloss = quadratic(a, y)\n", encoding="utf-8")
    for name, col in (("deep.nn", 204), ("nul.nn", 19)):  # 204: where the 201st minus stands
        proc = subprocess.run([sys.executable, "-m", "nncc", name], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith(f"{name}:4:{col}: error: "), proc.stderr
        assert "\x00" not in proc.stderr
