"""The memory one SGD step of a network takes: nncc's C plan against PyTorch's measured peak.

    python bench/memory.py                      # examples/lenet.nn at batch 1 and 64, float32
    python bench/memory.py examples/nielsen.nn --batch 1 10 64

nncc: the parameters plus the workspace its static plan gives the C sgd_step (the
header's <NET>_WORKSPACE_BYTES(batch)); nothing else is allocated.  PyTorch: the same
network (built from nncc's graph: dense, conv2d, maxpool2d, relu, sigmoid, tanh,
flatten, softmax cross-entropy or quadratic loss), one step of forward, backward and
SGD update in eager mode, measured with torch.profiler's memory events: the highest
running sum of what each operator allocates less what it frees, over the step, plus the
parameters, which live throughout.
Needs torch (the project's test extra installs it).
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def nncc_bytes(compiled, batch: int) -> tuple[int, int]:
    from nncc.backends.c.codegen import plan_c
    plan = plan_c(compiled.program, "float")
    per, const = plan.work_linear
    return plan.param_count * 4, (per * batch + const) * 4


def torch_model(graph):
    """The network as torch modules, in the graph's order; None for a node it does not know."""
    import torch
    layers = []
    for node in graph.nodes:
        op, opts = node.op.name, dict(node.options)
        weight = graph.param(dict(node.params)["weight"]).shape if "weight" in dict(node.params) else None
        if op == "dense":
            layers.append(torch.nn.Linear(weight[1], weight[0], bias=opts.get("bias", True)))
        elif op == "conv2d":
            out, cin, k, _ = weight
            layers.append(torch.nn.Conv2d(cin, out, k, stride=opts.get("stride", 1), padding=opts.get("padding", 0),
                                          bias=opts.get("bias", True)))
        elif op == "maxpool2d":
            layers.append(torch.nn.MaxPool2d(opts["kernel"], opts.get("stride", opts["kernel"])))
        elif op in ("relu", "sigmoid", "tanh"):
            layers.append({"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh}[op]())
        elif op == "flatten":
            layers.append(torch.nn.Flatten())
        elif op in ("softmax_cross_entropy", "quadratic"):
            return torch.nn.Sequential(*layers), op
        else:
            return None, op
    return None, "no loss"


def torch_peak(model, loss_kind, in_shape, out_size, batch: int) -> tuple[int, int]:
    import torch
    from torch.profiler import ProfilerActivity, profile
    torch.manual_seed(0)
    x = torch.rand(batch, *in_shape)
    y = torch.nn.functional.one_hot(torch.randint(0, out_size, (batch,)), out_size).float()
    params = sum(p.numel() * p.element_size() for p in model.parameters())

    def step():
        z = model(x)
        if loss_kind == "softmax_cross_entropy":
            loss = torch.nn.functional.cross_entropy(z, y)
        else:
            loss = 0.5 * ((z - y) ** 2).sum() / batch
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(0.01 * p.grad)
                p.grad = None
        return float(loss)

    step()  # first-call setup outside the measure
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # each event's own allocations less its frees, in the order they began (the profiler
    # records frees outside any operator as "[memory]" events)
    live = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        peak = max(peak, live)
    return params, peak


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=str(ROOT / "examples" / "lenet.nn"))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    args = ap.parse_args(argv)
    from nncc.api import compile_source
    compiled = compile_source(Path(args.model).read_text(), args.model)
    g = compiled.graph
    try:
        model, kind = torch_model(g)
    except ImportError:
        model, kind = None, "torch is not installed"
    print(f"{g.name}, float32: bytes for one SGD step")
    print("| batch | nncc C: parameters | nncc C: workspace | nncc C: total | PyTorch: parameters | "
          "PyTorch: peak during the step | PyTorch: total |")
    print("|---|---|---|---|---|---|---|")
    for batch in args.batch:
        p, w = nncc_bytes(compiled, batch)
        row = f"| {batch} | {p:,} | {w:,} | {p + w:,} |"
        if model is not None:
            tp, peak = torch_peak(model, kind, g.inputs[0].shape, g.targets[0].shape[0], batch)
            row += f" {tp:,} | {peak:,} | {tp + peak:,} |"
        else:
            row += f" - | ({kind}) | - |"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
