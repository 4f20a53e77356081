"""The numpy backend's passes over lowered lines (backends/numpy/common.py, rewrites.py):
an operation computed once where two lines compute it from the same values, and never
where a name between them was bound anew; the loss's total as one dot product."""
import numpy as np

from nncc.api import compile_source
from nncc.backends.numpy.common import hoist
from nncc.backends.numpy.lower import Line
from nncc.backends.numpy.rewrites import total_line

SHAPES = {"a": (None, 3), "y": (None, 3), "b": (None, 3)}


def test_an_operation_two_lines_compute_from_the_same_values_is_computed_once():
    lines = [Line("u", "np.exp(a - y)"), Line("v", "(a - y) * b")]
    (out,), shapes = hoist([lines], SHAPES)
    assert [x.target for x in out] == ["_c0", "u", "v"]
    assert out[0].code == "a - y" and out[1].code == "np.exp(_c0)" and out[2].code == "_c0 * b"
    assert shapes["_c0"] == (None, 3)
    assert out[1].written == "u = np.exp(a - y)"  # the comment keeps the line as derived


def test_a_name_bound_anew_between_two_reads_is_not_one_value():
    lines = [Line("u", "np.exp(a - y)"), Line("a", "b * b"), Line("v", "(a - y) * b")]
    (out,), _ = hoist([lines], SHAPES)
    assert [x.code for x in out] == [x.code for x in lines]


def test_the_shared_line_goes_into_the_part_of_its_first_reader():
    loss, back = [Line("u", "np.exp(a - y)")], [Line("v", "(a - y) * b")]
    (first, second), _ = hoist([loss, back], SHAPES)
    assert [x.target for x in first] == ["_c0", "u"] and [x.target for x in second] == ["v"]


def test_the_quadratic_losss_total_is_one_dot_product_of_its_terms():
    lines = [Line("q", "0.5*((a - y)**2).sum(axis=1)")]
    out, value = total_line("q", "_total", lines, SHAPES)
    assert [x.code for x in out] == ["np.vdot(a - y, a - y)"] and value == "float(_total) * 0.5"
    # read by another line too: the per-sample loss stays, summed after
    out, value = total_line("q", "_total", lines + [Line("r", "q + 1")], SHAPES)
    assert out[-1].code == "np.add.reduce(q, axis=None)" and value == "float(_total)"


def test_cross_entropys_total_is_one_dot_product_when_both_factors_have_one_shape():
    out, value = total_line("q", "_total", [Line("q", "-(np.log(a)*y).sum(axis=1)")], SHAPES)
    assert [x.code for x in out] == ["np.vdot(np.log(a), y)"] and value == "-float(_total)"
    # a factor broadcast over the batch: the dot product would pair the wrong entries
    out, value = total_line("q", "_total", [Line("q", "-(w*y).sum(axis=1)")], {**SHAPES, "w": (3,)})
    assert out[-1].code == "np.add.reduce(q, axis=None)" and value == "float(_total)"


def test_sgd_step_computes_a_minus_y_once_and_agrees_with_the_plain_loss():
    src = "input x: [3]\ntarget y: [2]\na = x |> dense(2) |> sigmoid\nloss = quadratic(a, y)\n"
    c = compile_source(src, "q.nn")
    text = c.numpy_module()
    step = text[text.index("def sgd_step("):text.index("def init_state(")]
    assert step.count("np.subtract(a, y") == 1 and "np.vdot(" in step
    ns = {}
    exec(compile(text, "q", "exec"), ns)
    rng = np.random.default_rng(0)
    params = ns["init_params"](0, np.float64)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    w, b = params["dense_1.weight"], params["dense_1.bias"]
    a = 1 / (1 + np.exp(-(x @ w.T + b)))
    want = 0.5 * ((a - y) ** 2).sum() / 5
    assert abs(ns["loss"](params, x, y) - want) <= 1e-15
    assert abs(ns["sgd_step"]({k: v.copy() for k, v in params.items()}, x, y, 0.1) - want) <= 1e-15
