"""The Program: the one lowered form that numpy, C and explain render.

What it decides (the seed, fusion, scatters, stabilization, lifetimes) is checked on
small programs; that each backend renders it rather than deciding again is checked by
what the generated code holds.
"""
import ast
from pathlib import Path

import sympy as sp

from nncc.api import compile_source
from nncc.backends.c.codegen import render_c_files
from nncc.autodiff.derive import B
from nncc.naming import grad_name
from nncc.schedule.program import MAX_FUSED_DEPTH

MLP = "input x: [3]\ntarget y: [2]\nh = x |> dense(4) |> tanh\na = h |> dense(2) |> sigmoid\nloss = quadratic(a, y)\n"


def _targets(statements):
    return [st.target for st in statements]


def test_the_seed_is_the_batch_mean_or_sum():
    assert compile_source(MLP).program.seed == 1 / B
    summed = compile_source(MLP.replace("loss = ", "loss = sum "))
    assert summed.program.seed == 1
    # and no statement reads the loss's own gradient: the seed replaced it
    for c in (compile_source(MLP), summed):
        for st in c.program.backward:
            assert all(r.base.label.name != "d_quadratic_1" for r in st.expr.atoms(sp.Indexed)), st


def test_a_value_read_once_elementwise_is_computed_inside_its_reader():
    p = compile_source(MLP).program
    # forward: dense_1 feeds only tanh, elementwise: one statement computes both
    assert _targets(p.forward) == ["h", "a"]
    assert [n.anchor for n in p.forward[0].notes] == ["fwd-dense_1", "fwd-tanh_1"]
    # the loss body keeps what the backward pass reads (h, a), and the loss itself
    assert set(_targets(p.loss)) == {"h", "a", "quadratic_1"}
    # backward: d_a is read once, by the sigmoid's step: fused; d_h is read inside the
    # weight gradient's sum (a reduction): its own statement
    assert "d_a" not in _targets(p.backward)
    assert "d_h" in _targets(p.backward) or "d_dense_1" in _targets(p.backward)


def test_a_value_read_twice_is_computed_once():
    p = compile_source("input x: [3]\ntarget y: [3]\nh = x |> dense(3) |> tanh\n"
                       "loss = quadratic(h * h, y)\n").program
    assert "h" in _targets(p.loss)


def test_a_long_chain_is_fused_in_bounded_steps():
    source = "input x: [2]\ntarget y: [2]\na = x |> dense(2)" + " |> tanh" * 60 + "\nloss = quadratic(a, y)\n"
    p = compile_source(source).program

    def depth(e):
        return 0 if not e.args or isinstance(e, sp.Indexed) else 1 + max(depth(a) for a in e.args)
    assert len(p.forward) > 1
    assert all(depth(st.expr) <= MAX_FUSED_DEPTH + 2 for st in p.forward)


def test_overlapping_writes_are_a_scatter_decided_once():
    c = compile_source("layer spread(x: [n]) {\n    param w: [3]\n    y[2*i + p] = w[p] * x[i]\n}\n"
                       "input x: [4]\ntarget y: [9]\na = x |> spread\nloss = quadratic(a, y)\n")
    (st,) = [st for st in c.program.loss if st.target == "a"]
    assert st.expr.has(sp.KroneckerDelta) and all(isinstance(i, sp.Symbol) for i in st.indices)
    assert st.variables is None


def test_buffers_carry_first_write_and_last_read():
    p = compile_source(MLP).program
    body = p.loss + p.backward
    dw = grad_name("dense_1.weight")
    buffers = p.buffers(body, keep={dw})
    assert buffers["x"].first == -1 and buffers["x"].role == "input"
    h = buffers["h"]
    assert h.first == _targets(body).index("h") and h.last > h.first
    assert buffers[dw].last == len(body) and buffers[dw].role == "grad"
    assert buffers["dense_1.weight"].role == "param" and buffers["dense_1.weight"].shape == (4, 3)


def test_both_backends_compute_the_programs_statements():
    c = compile_source(MLP)
    anchors = [n.anchor for st in c.program.loss + c.program.backward for n in st.notes]
    python = c.numpy_module()
    c_text = "".join(render_c_files(c, "float64").values())
    for a in anchors:
        assert f"[#{a}]" in python and f"[#{a}]" in c_text, a


def test_no_backend_lowers_what_another_does():
    root = Path(__file__).resolve().parents[1] / "compiler"

    def imports(path):
        tree = ast.parse((root / path).read_text())
        return {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}

    c_side = set().union(*(imports(p.relative_to(root)) for p in (root / "backends" / "c").glob("*.py")))
    numpy_side = set().union(*(imports(p.relative_to(root)) for p in (root / "backends" / "numpy").glob("*.py")))
    assert not any("numpy" in m for m in c_side) and not any(m.endswith("c.codegen") or m == "c" for m in numpy_side)
    assert any(m.endswith("schedule.program") for m in c_side) and any(m.endswith("schedule.program") for m in numpy_side)
