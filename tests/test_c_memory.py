"""The C code's static memory plan (backends/c/codegen.memory_plan): buffers that are
never live at once share the workspace; the command reports what a step takes."""
from pathlib import Path

import sympy as sp

from nncc.api import compile_source
from nncc.autodiff.derive import B
from nncc.backends.c.codegen import Buffer, memory_plan, plan_c
from nncc.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _regions(work, batch):
    out = {}
    for w in work:
        start = int(sp.sympify(w.offset).subs(B, batch))
        out[w.name] = (start, start + int(sp.Mul(*w.shape).subs(B, batch)))
    return out


def test_buffers_live_at_once_never_overlap_and_the_others_share():
    work = [Buffer("a", (B, 4), "work"), Buffer("b", (B, 4), "work"), Buffer("c", (B, 2), "work"),
            Buffer("t", (3,), "work"), Buffer("unused", (B, 9), "work")]
    # a then b (a's last read is b's first write: both live there), then c, with t
    order = [{"a"}, {"a", "b"}, {"b"}, {"c", "t"}]
    per_sample, constant = memory_plan(work, [order, [{"a"}, {"a", "c"}]])
    for batch in (1, 5):
        r = _regions(work, batch)
        live_together = [("a", "b"), ("c", "t"), ("a", "c")]
        for x, y in live_together:
            assert r[x][1] <= r[y][0] or r[y][1] <= r[x][0], (x, y, r)
        assert max(hi for name, (lo, hi) in r.items() if name != "unused") <= per_sample * batch + constant
    # b is dead before c is written in every order: c reuses b's space
    assert per_sample == 8 and constant == 3


def test_a_networks_workspace_is_at_most_half_of_one_buffer_per_array():
    # one buffer per tensor and per gradient took lenet 18,028 bytes per sample in float32,
    # nielsen 648
    for example, before in (("lenet", 18028), ("nielsen", 648)):
        c = compile_source((ROOT / "examples" / f"{example}.nn").read_text(), f"{example}.nn")
        plan = plan_c(c.program, "float")
        per_sample, constant = plan.work_linear
        assert per_sample * 4 <= before / 2, (example, per_sample)
        # sgd_step's gradients live there too, only until their parameter is updated (a
        # weight whose gradient is one matrix product takes none: the product goes into the
        # weight), and the products' packing space: here never two at once, so the largest
        # one is all the workspace holds besides
        fixed = [int(sp.Mul(*w.shape)) for w in plan.work + plan.step_grads if not sp.Mul(*w.shape).has(B)]
        assert constant == max(fixed), (example, constant)


def test_the_command_reports_the_training_memory_it_planned(tmp_path, capsys):
    assert main([str(ROOT / "examples" / "lenet.nn"), "--backend", "c", "-o", str(tmp_path / "lenet_c.py")]) == 0
    out = capsys.readouterr().out
    c = compile_source((ROOT / "examples" / "lenet.nn").read_text(), "lenet.nn")
    plan = plan_c(c.program, "float")
    params, (per, const) = plan.param_count * 4, (4 * n for n in plan.work_linear)
    assert out.startswith(f"lenet: training memory planned (float32): parameters {params:,} B"), out
    assert f"workspace {per:,} B per sample" in out
    assert f"{params + 64 * per + const:,} B at batch 64" in out
    assert main([str(ROOT / "examples" / "lenet.nn"), "--backend", "c", "--dtype", "float64",
                 "-o", f"{tmp_path}/src/"]) == 0
    assert "(float64)" in capsys.readouterr().out
