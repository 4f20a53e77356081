"""The long differential campaign: random programs through tests/differential.py.

    python tests/campaign.py --programs 500 --seed 0 --jobs 2 [--out DIR] [--group 16] [--gemm-min 1]

Program k is `program_generator.generate(random.Random(seed + k))`, so any one can be
made again from its number.  Each group of programs runs in a subprocess of its own
(a crash or a hang in generated C then costs one group, which is run again one program
at a time to find the culprit).  Prints the counts and writes every failing program,
with its report as a comment, to DIR (default: a new temporary folder).  All build
files go to temporary folders.

Each program's result is appended to DIR/results.jsonl as it arrives: a campaign that
is stopped resumes where it was when run again with the same DIR (programs already
there are counted, not run again), so a long one can be run in pieces.

--gemm-min N gives the C lowerer's blocked matrix product every contraction of at least N
multiply-adds (default: the lowerer's own threshold), so that 1 puts it on every shape the
random programs have.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

GROUP_TIMEOUT = 900  # seconds: a group this slow has a program that hangs
WORKER_MEMORY = 4 << 30  # bytes of address space for one group's process


def program(seed: int) -> tuple[str, str]:
    from program_generator import generate
    return generate(random.Random(seed), f"g{seed}"), f"g{seed}.nn"


def _worker(seeds: list[int], folder: str, group: int, gemm_min: int | None) -> None:
    """Run in a subprocess: check the programs of `seeds`, print one JSON line each."""
    if gemm_min is not None:
        from nncc.backends.c.codegen import CLowerer
        CLowerer.GEMM_MIN = gemm_min
    try:  # a program whose compile runs away fails alone, not the machine
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    except (ImportError, ValueError, OSError):
        pass
    from differential import check_many
    reports = check_many([program(s) for s in seeds], folder, group=group)
    for s, r in zip(seeds, reports):
        print(json.dumps(dict(seed=s, status=r.status, problems=r.problems, refusal=r.refusal,
                              compile_seconds=r.compile_seconds, worst=r.worst), default=float), flush=True)


def _run_group(seeds: list[int], folder: str, group: int, timeout: float, gemm_min=None) -> list[dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--group", str(group),
           "--work", folder, "--seeds", *map(str, seeds)] + (
        ["--gemm-min", str(gemm_min)] if gemm_min is not None else [])
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        out, rc, err = run.stdout, run.returncode, run.stderr
    except subprocess.TimeoutExpired as exc:
        out, rc, err = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), \
            "timeout", ""
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if rc == 0 and len(results) == len(seeds):
        return results
    if len(seeds) > 1:
        # find the program that crashed or hung by running each alone
        done = {r["seed"] for r in results}
        return results + [r for s in seeds if s not in done for r in _run_group([s], folder, 1, timeout, gemm_min)]
    what = "timed out" if rc == "timeout" else f"exited with status {rc}"
    return [dict(seed=seeds[0], status="error", problems=[f"error: the check {what}: {err[-1500:]}"],
                 refusal=None, compile_seconds=0.0, worst={})]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--programs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--group", type=int, default=16, help="programs per C extension (and per subprocess)")
    ap.add_argument("--out", help="folder for failing programs (default: a new temporary folder)")
    ap.add_argument("--timeout", type=float, default=GROUP_TIMEOUT)
    ap.add_argument("--gemm-min", type=int, default=None,
                    help="give the C lowerer's matrix product every contraction this large (1: all)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--seeds", type=int, nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.seeds, args.work, args.group, args.gemm_min)
        return 0

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="nncc-campaign-failures-"))
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seed, args.seed + args.programs))
    log = out / "results.jsonl"
    earlier = {}
    if log.exists():  # a campaign run before into this folder: its results count
        for line in log.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:  # the last line of a run that was stopped while writing it
                continue
            if r.get("seed") in range(args.seed, args.seed + args.programs):
                earlier[r["seed"]] = r
        if log.read_bytes()[-1:] not in (b"", b"\n"):
            with open(log, "a") as f:
                f.write("\n")
    todo = [s for s in seeds if s not in earlier]
    chunks = [todo[k:k + args.group] for k in range(0, len(todo), args.group)]
    counts = dict(programs=0, compiled=0, refused=0, ok=0, inconclusive=0, disagreements=0, internal_errors=0)
    slowest, worst, refusals = (0.0, None), {}, {}
    start = time.time()
    if earlier:
        print(f"{len(earlier)} programs already in {log}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="nncc-campaign-build-") as work, \
            ThreadPoolExecutor(max_workers=args.jobs) as pool, open(log, "a") as record:
        futures = [pool.submit(_run_group, chunk, work, args.group, args.timeout, args.gemm_min) for chunk in chunks]
        for future in [None] + futures:
            results = list(earlier.values()) if future is None else future.result()
            for r in results:
                if future is not None:
                    record.write(json.dumps(r) + "\n")
                    record.flush()
                counts["programs"] += 1
                status = r["status"]
                if status != "refused" and not any("compile_source raised" in p for p in r["problems"]):
                    counts["compiled"] += 1
                key = {"ok": "ok", "refused": "refused", "inconclusive": "inconclusive",
                       "disagree": "disagreements", "error": "internal_errors"}[status]
                counts[key] += 1
                if status == "refused":
                    first = (r["refusal"] or "").splitlines()[0].split("error: ", 1)[-1]
                    refusals[first] = refusals.get(first, 0) + 1
                if r["compile_seconds"] > slowest[0]:
                    slowest = (r["compile_seconds"], r["seed"])
                for kind, e in r["worst"].items():
                    if e > worst.get(kind, (0.0, None))[0] and status in ("ok", "inconclusive"):
                        worst[kind] = (e, r["seed"])
                if status in ("disagree", "error"):
                    src, _ = program(r["seed"])
                    note = "\n".join("# " + line for p in r["problems"] for line in p.splitlines())
                    (out / f"g{r['seed']}.nn").write_text(f"# {status}\n{note}\n{src}")
            print(f"\r{counts['programs']}/{len(seeds)} programs, {time.time() - start:.0f} s", end="",
                  file=sys.stderr, flush=True)
    print(file=sys.stderr)
    for k, v in counts.items():
        print(f"{k:<16} {v}")
    print(f"{'largest compile':<16} {slowest[0]:.2f} s (g{slowest[1]})")
    print(f"{'wall time':<16} {time.time() - start:.0f} s")
    for kind, (e, s) in sorted(worst.items()):
        print(f"worst passing {kind}: {e:.3g} (g{s})")
    for msg, k in sorted(refusals.items(), key=lambda kv: -kv[1]):
        print(f"refused {k}x: {msg}")
    print(f"failing programs: {out}")
    return 1 if counts["disagreements"] or counts["internal_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
