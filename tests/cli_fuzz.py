"""Fuzz the nncc command line with mutated models and hostile file names.

    python tests/cli_fuzz.py --inputs 500 --seed 0 --jobs 2 [--out DIR] [--only K ...]

Case k of seed S is `mutate.make_case(random.Random(f"{S}:{k}"))`, so `--only k` runs it
again alone.  Each case runs through `nncc.cli.main` in a worker process forked from
this one after nncc is imported and warmed (the imports are paid once): the numpy
backend always, `explain` and `--backend c -o DIR/` (sources only) on a fraction.

Outcomes of one command:
  OK       exit 0, nothing on stderr, and what it wrote is sound: the numpy module execs
           in a fresh namespace (warnings are errors) and its loss_and_grad matches
           central finite differences in float64 on small random data (relative 1e-6);
           the C header and source are both there, with matching stamps;
  REFUSED  exit 1 and a located `file:line:col: error: ` first line, or `nncc: error:`
           for a file that cannot be read or is not UTF-8;
  FAILURE  anything else: a traceback, an internal or unlocated error, a hang (more than
           TIME_LIMIT seconds), a worker that dies, a module that fails or disagrees with
           the finite differences, code a file name injected (a file named PWNED appears,
           or the name reaches generated code outside strings and comments), an output
           written on refusal, a temporary file left behind, a program whose meaning no
           mutation changed refused where the original compiles.

On a fraction of cases -o is not a fresh path (TARGETS): an older output (replaced whole,
its permissions kept), a symbolic link (it stays a link, its target gets the text), a
dangling link, a FIFO with a reader (who gets the whole text a finished run writes), a
character device made like /dev/null (root only), a read-only folder, a directory for
the numpy module (both refused in plain words naming the path), and for -o DIR/ a
folder with an older C pair (both replaced by what a finished run writes).  `explain`
to a stdout that is /dev/full must end in a plain error.  A small share of cases runs
`python -m nncc` in a real process and sends SIGTERM or SIGKILL at a random moment:
afterwards each output is the whole old or the whole new text, a C pair is not mixed
(after SIGKILL a mixed pair must at least carry stamps that stop it compiling), and no
temporary file is left (after SIGKILL one is counted, not a failure).
A case is a FAILURE if any of its commands is; else its numpy command's outcome.
Prints the counts and writes every FAILURE (input bytes, path, stderr, report) under
--out (default: a new temporary folder), plus summary.json.
"""
from __future__ import annotations

import os

# one BLAS thread per worker: the numbers are tiny and the machine is shared
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import faulthandler  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import stat  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import threading  # noqa: E402
import tokenize  # noqa: E402
import traceback  # noqa: E402
import unicodedata  # noqa: E402
import warnings  # noqa: E402
from multiprocessing.connection import wait  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import mutate  # noqa: E402

TIME_LIMIT = 30          # seconds per command, and for the checks of one case
MEMORY_LIMIT = 4 << 30   # address space of a worker: a runaway allocation fails, the machine does not
FD_TOL = 1e-6
FD_STEP = 1e-4
FD_FLOOR = 1e-4   # round-off of L is ~1e-16 |L| / FD_STEP per operation
BATCH = 2
MAX_ELEMENTS = 200_000   # parameters and data beyond this are not run (a huge size that compiled)
EXPLAIN_SHARE = 0.25
C_SHARE = 0.25
TARGET_SHARE = 0.15        # of numpy commands: -o names one of TARGETS
TARGETS = ["older", "symlink", "dangling", "dangling_new_dir", "fifo", "chardev", "readonly", "dir",
           "dir_slash", "new_dir_slash"]
REFUSING_TARGETS = {"readonly", "dir", "dir_slash", "new_dir_slash"}
OLDER_PAIR_SHARE = 0.4     # of C commands: the folder holds an older pair
STDOUT_FULL_SHARE = 0.2    # of explain commands: to stdout, which is /dev/full (in the worker)
FULL_PROCESS_SHARE = 0.005  # of cases: `python -m nncc explain M > /dev/full` in a real process
INTERRUPT_SHARE = 0.03     # of cases: a real process signalled part-way (a process costs ~1-2 s)
INTERRUPT_WINDOW = 1.5     # seconds after the start within which the signal comes
# an older output longer than any module, so that one written over it in place would show its end
OLD_END = "# END OF THE PREVIOUS OUTPUT\n"
OLD_TEXT = "# the previous output, to be replaced whole\n" + "# padding\n" * 40000 + OLD_END
OLD_MODE = 0o640
FULL_MESSAGE = "nncc: error: cannot write to standard output: No space left on device"

LOCATED = re.compile(r"^.+:\d+:\d+: error: ")
FILE_LEVEL = re.compile(r"^nncc: error: (cannot read .*|.* is not UTF-8 text|.* is larger than \d+ MiB.*"
                        r"|cannot write .*|the output would overwrite the source .*)$")
API = ["PARAM_SHAPES", "INPUT_SHAPES", "TARGET_SHAPES", "init_params", "forward", "loss", "loss_and_grad",
       "sgd_step"]
RAW_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")
INJECTED = {mutate.SENTINEL, "system", "__import__"}


# ---- what to run for one case ---------------------------------------------------------------

def plan_commands(case: mutate.Case, rng: random.Random) -> list[dict]:
    """The commands of a case: argv (relative to the case folder), expected outputs, and
    outputs that exist beforehand (which a refusal must leave untouched)."""
    path = case.path
    stem = Path(path).name.split(".")[0] or "model"

    def argv(options, front=()):
        # a path starting with '-' would be read as an option: an output is given as
        # --output=PATH, the model after '--', as a user would
        spelled, rest = [], list(options)
        while rest:
            o = rest.pop(0)
            if o == "-o" and rest[0].startswith("-"):
                o = f"--output={rest.pop(0)}"
            spelled.append(o)
        if path.startswith("-"):
            return [*front, *spelled, "--", path]
        if path == "explain" and not front:  # `nncc explain ...` is the subcommand; a user writes ./explain
            return [f".{os.sep}explain", *spelled]
        return [*front, path, *spelled]

    cmds = []
    r = rng.random()
    if r < 0.2:
        try:
            default = str(Path(path).with_suffix(".py"))
        except ValueError:
            default = None
        if default and default != path:
            cmds.append(dict(kind="numpy", argv=argv([]), outputs=[default]))
    if not cmds:
        out = f"{stem}.py" if r < 0.4 and "/" not in stem else "out/model.py"
        if out == path:
            out = "out/model.py"
        cmds.append(dict(kind="numpy", argv=argv(["-o", out]), outputs=[out]))
    blockers = []
    r = rng.random()
    if r < 0.04:  # an output path where no file can be written
        blocked = rng.choice(["blocked.py", f"{stem}.py" if "/" not in stem else "blocked.py"])
        blockers.append(blocked)
        cmds[0].update(argv=argv(["-o", blocked]), outputs=[], must_fail=True)
    elif r < 0.07:
        blocked = f"{case.path}/inside.py"
        cmds[0].update(argv=argv(["-o", blocked]), outputs=[], must_fail=True)
    elif r < 0.09:  # the source itself
        cmds[0].update(argv=argv(["-o", path]), outputs=[], must_fail=True)
    cmds[0]["blockers"] = blockers
    if rng.random() < EXPLAIN_SHARE:
        doc = rng.choice(["doc.md", "doc.html", "doc.tex", "docs/explained.md"])
        cmds.append(dict(kind="explain", argv=argv(["-o", doc], front=["explain"]), outputs=[doc]))
    if rng.random() < C_SHARE:
        opts = ["--backend", "c", "-o", "cdir/"] + (["--dtype", "float64"] if rng.random() < 0.2 else [])
        cmds.append(dict(kind="c", argv=argv(opts), outputs=["cdir"]))
    for c in cmds:
        c["existing"] = {}
        if rng.random() < 0.25 and c["kind"] != "c" and c["outputs"]:
            c["existing"][c["outputs"][0]] = "# the previous output, to be kept on refusal\n"
    # drawn after everything above, so that the commands of a seed stay what they were
    first = cmds[0]
    if not first.get("must_fail") and rng.random() < TARGET_SHARE:
        target = rng.choice(TARGETS)
        out = {"readonly": "rodir/model.py", "dir": "outdir", "dir_slash": "outdir/",
               "new_dir_slash": "newdir/"}.get(target, "target.py")
        first.update(argv=argv(["-o", out]), outputs=[] if target in REFUSING_TARGETS else [out], target=target,
                     out=out, existing={},
                     ref_argv=argv(["-o", "ref/target.py"]), must_fail=target in REFUSING_TARGETS)
    for c in cmds[1:]:
        if c["kind"] == "c" and rng.random() < OLDER_PAIR_SHARE:
            c.update(older_pair=True, ref_argv=[a if a != "cdir/" else "ref-c/" for a in c["argv"]])
        elif c["kind"] == "explain" and rng.random() < STDOUT_FULL_SHARE:
            c.update(argv=argv([], front=["explain"]), outputs=[], existing={}, stdout_full=True, must_fail=True)
    if rng.random() < FULL_PROCESS_SHARE:
        cmds.append(dict(kind="explain", argv=argv([], front=["explain"]), outputs=[], existing={},
                         stdout_full=True, process=True, must_fail=True))
    if rng.random() < INTERRUPT_SHARE:
        backend = rng.choice(["numpy", "c"])
        opts = ["-o", "intr/model.py"] if backend == "numpy" else ["--backend", "c", "-o", "intr/"]
        cmds.append(dict(kind="interrupted", argv=argv(opts), outputs=[], existing={}, backend=backend,
                         signal=rng.choice(["SIGTERM", "SIGKILL"]),
                         delay=round(rng.uniform(0, INTERRUPT_WINDOW), 3), aside=True))
    return cmds


# ---- one command in the worker --------------------------------------------------------------

class Problem(Exception):
    pass


def call_cli(argv: list[str], stdout_full: bool = False) -> tuple[int, str, str]:
    import nncc.cli
    err, out = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stderr(err))
        if stdout_full:
            out = stack.enter_context(_stdout_to_dev_full())
        else:
            stack.enter_context(contextlib.redirect_stdout(out))
        try:
            rc = nncc.cli.main(list(argv))
        except SystemExit as exc:  # argparse's usage errors
            rc = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - anything escaping main is a finding
            err.write("[escaped nncc.cli.main]\n" + traceback.format_exc())
            rc = "raised"
    return rc, err.getvalue(), out.getvalue()


@contextlib.contextmanager
def _stdout_to_dev_full():
    """sys.stdout and file descriptor 1 on /dev/full, as `> /dev/full` makes them; both put
    back after (nncc may point descriptor 1 at /dev/null once a write failed)."""
    saved_fd, saved = os.dup(1), sys.stdout
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, 1)
    os.close(full)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
    try:
        yield io.StringIO()
    finally:
        with contextlib.suppress(Exception):  # its unwritten buffer must not reach the real stdout
            sys.stdout.close()
        sys.stdout = saved
        os.dup2(saved_fd, 1)
        os.close(saved_fd)


def call_cli_unprivileged(argv: list[str]):
    """call_cli in a child that has given up root, for whom a read-only folder is read-only;
    None where that child cannot be made or cannot read the model."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the worker's loop
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            data = json.dumps(call_cli(argv)).encode()
        except BaseException:  # noqa: BLE001
            data = b"null"
        with contextlib.suppress(Exception):
            os.write(w, data)  # small: a message and an exit status
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    res = json.loads(data) if data else None
    if not res or (res[0] == 1 and res[1].startswith("nncc: error: cannot read ")):
        return None
    return tuple(res)


def classify(rc, stderr: str) -> tuple[str, str]:
    """(outcome, symptom) from the exit status and stderr alone."""
    first = stderr.split("\n", 1)[0]
    raw = sorted({ch for ch in stderr if ch not in "\n\t" and unicodedata.category(ch) in RAW_CATEGORIES})
    if raw:  # an escape sequence or a line separator from the input must not reach a terminal raw
        return "FAILURE", f"raw control characters in the message: {''.join(map(ascii, raw))}"
    if rc == 0:
        return ("OK", "") if not stderr else ("FAILURE", "exit 0 with a message on stderr")
    if "Traceback (most recent call last)" in stderr:
        return "FAILURE", "traceback"
    if rc == 1:
        if "internal error" in first:
            return "FAILURE", "internal error"
        if LOCATED.match(first) or FILE_LEVEL.match(first):
            return "REFUSED", ""
        if FILE_LEVEL.match(stderr.rstrip("\n").replace("\n", " ")):
            return "FAILURE", "a file-level message breaks its line at a newline of the path"
        return "FAILURE", "unlocated error message"
    return "FAILURE", f"exit status {rc}"


def signature(kind: str, symptom: str, stderr: str, problems: list[str]) -> str:
    """What failures of one cause have in common: the symptom and the message, with
    the path, numbers and quoted names taken out."""
    first = stderr.split("\n", 1)[0]
    for sep in (": internal error: ", ": error: "):
        if sep in first:
            first = sep.strip() + " " + first.split(sep, 1)[1]
            break
    if "Traceback" in stderr:
        first = stderr.strip().splitlines()[-1]
    detail = first if symptom != "exit 0 with a message on stderr" else first[:60]
    if problems and symptom in ("", "check", "interrupted"):
        detail = problems[0]
    detail = re.sub(r"'[^']*'|\"[^\"]*\"|\d+(\.\d+)?(e[-+]?\d+)?", "#", detail)
    return f"{kind}: {symptom or 'check'}: {detail[:140]}"


# ---- checks of what was written -------------------------------------------------------------

def check_numpy_module(text: str, file: str, injected_name: bool) -> tuple[list[str], str]:
    """(problems, note) for a written numpy module; note says why numbers were not checked."""
    import numpy as np
    problems = []
    if injected_name:
        problems += _python_injection(text)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an invalid escape in the module is a finding
            code = compile(text, file, "exec")
        ns = {"__name__": "nncc_fuzz_module"}
        exec(code, ns)
    except Exception as exc:  # noqa: BLE001
        return problems + [f"the module does not import: {type(exc).__name__}: {exc}"], ""
    missing = [a for a in API if a not in ns]
    if missing:
        return problems + [f"the module lacks {missing}"], ""
    shapes = [*ns["PARAM_SHAPES"].values()]
    data_shapes = [*ns["INPUT_SHAPES"].values(), *ns["TARGET_SHAPES"].values()]
    size = sum(math.prod(s) for s in shapes) + BATCH * sum(math.prod(s) for s in data_shapes)
    if size > MAX_ELEMENTS:
        return problems, "too large to run"
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            note = _fd_check(ns)
    except MemoryError:
        return problems, "out of memory"
    except Exception as exc:  # noqa: BLE001
        return problems + [f"the module raised {type(exc).__name__}: {exc}"], ""
    if note.startswith("disagree"):
        return problems + [note], ""
    return problems, note


def _fd_check(m) -> str:
    """'' when the gradients match central differences; else why not checked or 'disagree ...'."""
    import numpy as np
    note = "kink"
    for attempt in range(3):
        rng = np.random.default_rng(attempt)
        params = m["init_params"](attempt, np.float64)
        if set(params) != set(m["PARAM_SHAPES"]):
            return f"disagree: init_params gives {sorted(params)}, PARAM_SHAPES {sorted(m['PARAM_SHAPES'])}"
        params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        inputs = [rng.uniform(-1, 1, (BATCH, *s)) for s in m["INPUT_SHAPES"].values()]
        targets = [rng.uniform(0.05, 0.95, (BATCH, *s)) for s in m["TARGET_SHAPES"].values()]
        arrays = inputs + targets
        m["forward"](params, *inputs)
        value, grads = m["loss_and_grad"](params, *arrays)
        if set(grads) != set(params):
            return f"disagree: gradients for {sorted(grads)}, parameters {sorted(params)}"
        for n, g in grads.items():
            if np.shape(g) != tuple(m["PARAM_SHAPES"][n]):
                return f"disagree: gradient of {n} has shape {np.shape(g)}"
        if not (np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads.values())):
            return "non-finite"
        loss = m["loss"]
        if abs(float(loss(params, *arrays)) - float(value)) > 1e-12 * max(1.0, abs(value)):
            return f"disagree: loss {loss(params, *arrays)!r} but loss_and_grad {value!r}"
        floor = FD_FLOOR * (1 + abs(value))
        groups = [sorted(params)] + [[n] for n in sorted(params)[:8]]
        kink = False
        for names in groups:
            v = {n: rng.standard_normal(params[n].shape) for n in names}
            norm = math.sqrt(sum(float((d ** 2).sum()) for d in v.values())) or 1.0

            def at(h):
                moved = dict(params)
                for n, d in v.items():
                    moved[n] = params[n] + (h / norm) * d
                return float(loss(moved, *arrays))

            fd1 = (at(FD_STEP) - at(-FD_STEP)) / (2 * FD_STEP)
            fd2 = (at(FD_STEP / 2) - at(-FD_STEP / 2)) / FD_STEP
            analytic = sum(float((grads[n] * d).sum()) for n, d in v.items()) / norm
            scale = max(abs(fd2), abs(analytic), floor)
            if not math.isfinite(fd1 + fd2):
                return "non-finite"
            if abs(fd1 - fd2) > FD_TOL * scale / 4:  # a kink or strong curvature: judge elsewhere
                kink = True
                break
            err = abs(fd2 - analytic) / scale
            if err > FD_TOL:
                return (f"disagree with finite differences along {names if len(names) == 1 else 'all parameters'}:"
                        f" analytic {analytic!r}, fd {fd2!r}, relative error {err:.3g}")
        if not kink:
            return ""
    return note


def _python_injection(text: str) -> list[str]:
    """Names a file-name payload would bring into the module as code (not in strings or comments)."""
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError) as exc:
        return [f"the module does not tokenize: {exc}"]
    bad = sorted({t.string for t in toks if t.type == tokenize.NAME and t.string in INJECTED})
    return [f"the file name reached the module as code: {bad}"] if bad else []


_C_COMMENT = re.compile(r"//(?:\\\r?\n|[^\n])*|/\*.*?\*/", re.S)
_C_STRING = re.compile(r"\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'")


def _c_injection(text: str) -> list[str]:
    """Code a file-name payload would bring into C: a call of system, the word PWNED alone,
    or an #include of it (a sanitised identifier that contains the word is fine)."""
    code = _C_COMMENT.sub(" ", text)
    bare = _C_STRING.sub('""', code)
    hits = [ln for ln in code.splitlines() if re.search(r"#\s*include\s*[<\"]" + mutate.SENTINEL, ln)]
    hits += [ln for ln in bare.splitlines()
             if re.search(r"\bsystem\s*\(|\b" + mutate.SENTINEL + r"\b", ln)]
    return [f"the file name reached the C source as code: {hits[0].strip()[:120]!r}"] if hits else []


def check_c(folder: Path, injected_name: bool) -> list[str]:
    files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    heads = [f for f in files if f.endswith(".h")]
    sources = [f for f in files if f.endswith(".c")]
    if len(heads) != 1 or len(sources) != 1 or len(files) != 2:
        return [f"the C folder holds {files}, not one .h and one .c"]
    h, c = (folder / heads[0]).read_text("utf-8"), (folder / sources[0]).read_text("utf-8")
    problems = []
    hm = re.search(r"#define (\w+_NNCC_PAIR) (0x[0-9a-f]+)", h)
    if not hm or f"{hm.group(1)} != {hm.group(2)}" not in c:
        problems.append("the header and source do not carry matching stamps")
    if injected_name:
        problems += _c_injection(h) + _c_injection(c)
    return problems


def check_explain(doc: Path, case_path: str) -> list[str]:
    text = doc.read_text("utf-8")
    if not text.strip():
        return ["the document is empty"]
    if doc.suffix == ".html" and "<script>" in case_path and "<script>" in text:
        return ["the file name reached the HTML unescaped"]
    return []


def _listing(root: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + dirnames:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


def _parents(rel: str) -> set[str]:
    """rel and the folders above it, spelled as _listing spells them."""
    p = Path(os.path.normpath(rel))
    out = {str(p)}
    while str(p.parent) not in (".", ""):
        p = p.parent
        out.add(str(p))
    return out


# ---- output targets other than a fresh path -------------------------------------------------

def _prepare_target(cmd: dict, expected: set) -> dict:
    """Make what -o names (see TARGETS); the state the checks need."""
    t, out = cmd["target"], cmd["out"]
    state = {"target": t}
    if t == "older":
        Path(out).write_text(OLD_TEXT)
        os.chmod(out, OLD_MODE)
    elif t in ("symlink", "dangling", "dangling_new_dir"):
        folder = "real" if t != "dangling_new_dir" else "absent"
        state["link"] = f"{folder}/{t}.py"
        if t == "symlink":
            Path(folder).mkdir()
            Path(state["link"]).write_text(OLD_TEXT)
        elif t == "dangling":
            Path(folder).mkdir()
        os.symlink(state["link"], out)
    elif t == "fifo":
        os.mkfifo(out)
        state["received"] = None

        def read():
            with open(out, "rb") as f:
                state["received"] = f.read()
        state["thread"] = threading.Thread(target=read, daemon=True)
        state["thread"].start()
    elif t == "chardev":
        try:
            os.mknod(out, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is
        except (OSError, AttributeError):
            state["target"] = "fresh"  # not root: an ordinary new file instead
    elif t == "readonly":
        Path(out).parent.mkdir()
        os.chmod(Path(out).parent, 0o555)
    elif t in ("dir", "dir_slash"):
        Path("outdir").mkdir()
    expected |= _parents(out.rstrip("/")) if t != "new_dir_slash" else set()
    if "link" in state:
        expected |= _parents(state["link"])
    return state


def _run_target(cmd: dict, state: dict):
    """Run the command against its target: as a user without root for a read-only folder
    (None where that cannot be done: the command is skipped)."""
    if state["target"] == "readonly" and os.access(Path(cmd["out"]).parent, os.W_OK):
        return call_cli_unprivileged(cmd["argv"]) if hasattr(os, "fork") else None
    try:
        return call_cli(cmd["argv"])
    finally:
        if state["target"] == "fifo":
            _release_reader(cmd["out"], state)


def _release_reader(fifo: str, state: dict) -> None:
    """A reader whose writer never came (a refusal) gets its end of file."""
    t = state["thread"]
    for _ in range(100):
        t.join(0.05)
        if not t.is_alive():
            return
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    state["stuck"] = True


def _reference(argv: list[str], out: str) -> dict:
    """{name: text} that a finished run writes (out a file or a folder), {} where it refuses."""
    rc, _, _ = call_cli(argv)
    p = Path(out)
    try:
        if rc != 0:
            return {}
        if p.is_dir():
            return {q.name: q.read_text("utf-8") for q in sorted(p.iterdir())}
        return {p.name: p.read_text("utf-8")}
    finally:
        shutil.rmtree(str(p).rstrip("/").split("/")[0], ignore_errors=True)


def _check_target(case, cmd, call, state, injected_name, expected=None) -> None:
    t, out, problems = state["target"], cmd["out"], call["problems"]
    expected = set() if expected is None else expected
    ok = call["outcome"] == "OK"
    p = Path(out)
    first = call["stderr"].split("\n", 1)[0]

    def module(text: str) -> None:
        more, call["note"] = check_numpy_module(text, out, injected_name)
        problems.extend(more)
        if OLD_END in text:
            problems.append(f"the older output behind {out} was not replaced whole")

    if t in ("fresh", "older"):
        if not p.is_file() or p.is_symlink():
            problems.append(f"{out} is no longer a regular file")
        elif ok:
            module(p.read_text("utf-8"))
            if t == "older" and stat.S_IMODE(p.stat().st_mode) != OLD_MODE:
                problems.append(f"{out} lost its permissions {oct(OLD_MODE)}: now {oct(stat.S_IMODE(p.stat().st_mode))}")
        elif t == "older" and p.read_text("utf-8") != OLD_TEXT:
            problems.append(f"the older {out} was changed although the command failed")
    elif "link" in state:
        link, target = state["link"], Path(state["link"])
        if not p.is_symlink() or os.readlink(p) != link:
            problems.append(f"the symbolic link {out} -> {link} was replaced or redirected")
        elif ok and target.is_file():
            module(target.read_text("utf-8"))
        elif ok:
            problems.append(f"exit 0 but the link's target {link} was not written")
        elif t == "symlink" and target.read_text("utf-8") != OLD_TEXT:
            problems.append(f"the link's target {link} was changed although the command failed")
        elif t != "symlink" and target.exists():
            problems.append(f"the link's target {link} was written although the command failed")
        siblings = sorted(os.listdir(target.parent)) if target.parent.is_dir() else []
        if siblings not in ([], [target.name]):
            problems.append(f"beside the link's target: {siblings}")
    elif t == "fifo":
        if not stat.S_ISFIFO(os.lstat(p).st_mode):
            problems.append(f"the FIFO {out} was replaced")
        got = state["received"]
        if state.get("stuck"):
            problems.append("the FIFO's reader never got an end of file")
        elif ok:
            text = _reference(cmd["ref_argv"], "ref/target.py").get("target.py")
            if got is None or text is None or got != text.encode("utf-8"):
                problems.append(f"the FIFO's reader got {None if got is None else len(got)} bytes; a finished run "
                                f"to a file writes {None if text is None else len(text.encode())}")
            else:
                module(text)
        elif got:
            problems.append(f"the FIFO's reader got {len(got)} bytes although the command failed")
    elif t == "chardev":
        st = os.lstat(p)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(1, 3):
            problems.append(f"the character device {out} was replaced")
    else:  # refusing targets: the generic check has said whether it exit 0
        folder = Path(out).parent if t == "readonly" else Path(out.rstrip("/"))
        if first.startswith("nncc: error: cannot write"):  # (an unreadable model is said first)
            shown = out.rstrip("/") if t != "readonly" else out
            want = "Permission denied" if t == "readonly" else "directory"
            if not first.startswith(f"nncc: error: cannot write {shown}") or want not in first:
                problems.append(f"not the plain refusal expected for {out}: {first[:160]!r}")
        if t == "readonly":
            if sorted(os.listdir(folder)):
                problems.append(f"the read-only folder holds {sorted(os.listdir(folder))}")
            os.chmod(folder, 0o755)
        elif t == "new_dir_slash":
            if folder.is_file():
                problems.append(f"-o {out} wrote a regular file named {out.rstrip('/')}")
                expected.add(str(folder))  # said here once, not again as left behind
        elif not folder.is_dir() or os.listdir(folder):
            problems.append(f"the folder {out} was replaced or written into")


def _prepare_older_pair(cmd: dict) -> dict:
    """cdir/ holding an older pair by the names a finished run uses (model.h/.c where that run
    refuses); {name: new text} of that run."""
    new = _reference(cmd["ref_argv"], "ref-c/")
    Path("cdir").mkdir(exist_ok=True)
    old = {}
    for name in (new or {"model.h": "", "model.c": ""}):
        # an older run's pair: another stamp, other text, both consistent with each other
        text = re.sub(r"(_NNCC_PAIR\W*(?:!=\s*)?)0x[0-9a-f]+", r"\g<1>0x0123456789abcde", new.get(name, ""))
        old[name] = f"/* an older run of nncc */\n{text}"
        Path("cdir", name).write_text(old[name])
    cmd["old_pair"], cmd["new_pair"] = old, new
    return old


def _check_older_pair(cmd: dict, call: dict) -> None:
    have = {p.name: p.read_text("utf-8") for p in sorted(Path("cdir").iterdir())} if Path("cdir").is_dir() else {}
    if call["outcome"] == "OK":
        if have != cmd["new_pair"]:
            call["problems"].append(f"the older pair was not replaced by what a finished run writes: holds "
                                    f"{sorted(have)}, {sum(have[n] == cmd['old_pair'].get(n) for n in have)} of "
                                    f"them old")
    elif have != cmd["old_pair"]:
        call["problems"].append("the older C pair was changed although the command failed")


def _check_full(call: dict) -> None:
    """`explain` into /dev/full: a located refusal or the plain message, never exit 0."""
    first = call["stderr"].split("\n", 1)[0]
    if first.startswith("nncc: error: cannot write to standard output") and call["stderr"] != FULL_MESSAGE + "\n":
        call["problems"].append(f"not the plain message for a full stdout: {call['stderr'][:200]!r}")
    if call["outcome"] == "OK":
        call["problems"].append("exit 0 although stdout is /dev/full")


def call_process(argv: list[str], stdout_full: bool) -> tuple[int, str, str]:
    """`python -m nncc ARGV` in a real process (-P: the case folder's files are not modules)."""
    with open("/dev/full" if stdout_full else os.devnull, "w") as out:
        proc = subprocess.run([sys.executable, "-P", "-m", "nncc", *argv], stdout=out, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, timeout=TIME_LIMIT)
    return proc.returncode, proc.stderr.decode("utf-8", "backslashreplace"), ""


# ---- a run interrupted by a signal --------------------------------------------------------------

_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}(\.old)?$")  # mkstemp's and the set-aside names in output.py


def run_interrupted(cmd: dict, call: dict) -> None:
    """Run the CLI in a process, signal it at cmd["delay"], then judge what is on disk."""
    problems = call["problems"]
    out = "intr/model.py" if cmd["backend"] == "numpy" else "intr/"
    # a finished run first (in this worker): the new text, and the names of the C pair
    rc_ref, err_ref, _ = call_cli(cmd["argv"])
    new = {}
    if rc_ref == 0:
        new = ({p.name: p.read_text("utf-8") for p in sorted(Path("intr").iterdir())} if cmd["backend"] == "c"
               else {"model.py": Path(out).read_text("utf-8")})
    shutil.rmtree("intr", ignore_errors=True)
    Path("intr").mkdir()
    names = list(new) or (["model.py"] if cmd["backend"] == "numpy" else ["model.h", "model.c"])
    old = {}
    for n in names:
        text = re.sub(r"(_NNCC_PAIR\W*(?:!=\s*)?)0x[0-9a-f]+", r"\g<1>0x0123456789abcde", new.get(n, ""))
        old[n] = f"/* an older run of nncc */\n{text}" if cmd["backend"] == "c" else OLD_TEXT
        Path("intr", n).write_text(old[n])
    signum = getattr(signal, cmd["signal"])
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-P", "-m", "nncc", *cmd["argv"]], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=cmd["delay"])
        ended = "before the signal"
    except subprocess.TimeoutExpired:
        proc.send_signal(signum)
        ended = "signalled"
    try:
        _, err = proc.communicate(timeout=TIME_LIMIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        problems.append(f"still running {TIME_LIMIT} s after {cmd['signal']}")
    err = err.decode("utf-8", "backslashreplace")
    call.update(rc=proc.returncode, stderr=err, seconds=round(time.time() - t0, 2))
    rc = proc.returncode
    if ended == "signalled" and rc in (0, 1) and "Exception ignored" in err and cmd["signal"] == "SIGTERM":
        # the handler's exception raised where Python drops it (an import's lock callback)
        problems.append(f"SIGTERM at {cmd['delay']} s was swallowed ('Exception ignored' on stderr) and the "
                        f"run went on to exit {rc}")
    elif ended == "before the signal" or rc in (0, 1):
        if rc != rc_ref:
            problems.append(f"exit {rc} where the run in the worker exit {rc_ref}")
        outcome, symptom = classify(rc, err)
        if outcome == "FAILURE":
            problems.append(f"a run that ended by itself: {symptom}")
    elif rc not in (-signum, 128 + signum):
        problems.append(f"exit {rc} after {cmd['signal']}")
    if cmd["signal"] == "SIGTERM" and ("Traceback" in err or "Exception ignored" in err):
        problems.append("a traceback after SIGTERM")
    # what is on disk: each output whole, old or new; no temporary file
    have = {p.name: p for p in Path("intr").iterdir()}
    temps = sorted(n for n in have if n not in names and _TEMP.match(n))
    other = sorted(n for n in have if n not in names and n not in temps)
    texts = {n: have[n].read_text("utf-8", "backslashreplace") if n in have else None for n in names}
    states = ["new" if new and texts[n] == new[n] else "old" if texts[n] == old[n] else
              "missing" if texts[n] is None else "other" for n in names]
    if "other" in states and _STAMP_AT_FORK and compiler_stamp() != _STAMP_AT_FORK:
        # the process ran other code than the finished run in this worker: nothing to judge
        problems.append("the compiler's files changed on disk during the campaign; run it again")
    elif "other" in states or "missing" in states or other:
        problems.append(f"after {cmd['signal']} at {cmd['delay']} s: outputs {dict(zip(names, states))}, "
                        f"also {other}")
    state = states[0] if len(set(states)) == 1 else "mixed"
    if state == "mixed":
        h = next((texts[n] for n in names if n.endswith(".h")), "") or ""
        c = next((texts[n] for n in names if n.endswith(".c")), "") or ""
        hm = re.search(r"#define (\w+_NNCC_PAIR) (0x[0-9a-f]+)", h)
        caught = not hm or f"{hm.group(1)} != {hm.group(2)}" not in c
        state = "mixed, stamps differ" if caught else "mixed, stamps agree"
        if cmd["signal"] == "SIGTERM" or not caught:
            problems.append(f"after {cmd['signal']} at {cmd['delay']} s: the C pair is mixed "
                            f"{dict(zip(names, states))}" + ("" if caught else " and its stamps agree"))
    if temps and cmd["signal"] != "SIGKILL":
        problems.append(f"temporary files left after {cmd['signal']}: {temps}")
    for n in temps:  # after SIGKILL counted, not a failure; removed so the case's listing is clean
        with contextlib.suppress(OSError):
            os.unlink(Path("intr", n))
    call["interrupt"] = dict(signal=cmd["signal"], delay=cmd["delay"], ended=ended, rc=rc, state=state,
                             temps=len(temps))
    call["outcome"] = "FAILURE" if problems else "OK"
    call["symptom"] = "interrupted" if problems else ""


# ---- a whole case in the worker -------------------------------------------------------------

def run_case(case: mutate.Case, cmds: list[dict], folder: Path, progress) -> dict:
    started = time.time()
    result = _run_case(case, cmds, folder, progress)
    result["seconds"] = round(time.time() - started, 2)
    return result


def _run_case(case: mutate.Case, cmds: list[dict], folder: Path, progress) -> dict:
    result = dict(calls=[], problems=[], outcome="", note="")
    try:
        src = folder / case.path
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(case.data)
    except (OSError, ValueError) as exc:  # a name this file system refuses: nothing to test
        result.update(outcome="SKIPPED", note=f"cannot create {case.path!r}: {exc}")
        return result
    injected_name = mutate.SENTINEL in case.path
    expected = _parents(case.path)
    os.chdir(folder)
    for cmd in cmds:
        for rel in cmd.get("blockers", []):  # a folder where the output file should go
            Path(rel).mkdir(parents=True, exist_ok=True)
            expected |= _parents(rel)
        for rel, text in cmd["existing"].items():
            Path(rel).parent.mkdir(parents=True, exist_ok=True)
            Path(rel).write_text(text)
        progress(f"{cmd['kind']} {cmd['argv']!r}")
        t0 = time.time()
        if cmd["kind"] == "interrupted":
            call = dict(kind=cmd["kind"], argv=cmd["argv"], rc=None, stderr="", outcome="", symptom="",
                        problems=[], seconds=0, note="")
            result["calls"].append(call)
            expected |= {"intr"} | {os.path.join("intr", n) for n in ("model.py", "model.h", "model.c")}
            try:
                run_interrupted(cmd, call)
            except Exception:  # noqa: BLE001
                call["problems"].append("the fuzzer's own check raised:\n" + traceback.format_exc())
            expected |= {os.path.join("intr", n) for n in os.listdir("intr")} if os.path.isdir("intr") else set()
            if call["problems"]:
                call["outcome"], call["symptom"] = "FAILURE", "interrupted"
            continue
        state = None
        try:
            if cmd.get("target"):
                state = _prepare_target(cmd, expected)
            if cmd.get("older_pair"):
                _prepare_older_pair(cmd)
        except Exception:  # noqa: BLE001
            result["problems"].append("the fuzzer could not prepare the output:\n" + traceback.format_exc())
            break
        t0 = time.time()
        if state is not None:
            res = _run_target(cmd, state)
        elif cmd.get("process"):
            res = call_process(cmd["argv"], cmd.get("stdout_full", False))
        else:
            res = call_cli(cmd["argv"], stdout_full=cmd.get("stdout_full", False))
        rc, err, _ = res if res is not None else (None, "", "")
        outcome, symptom = classify(rc, err) if res is not None else ("SKIPPED", "")
        call = dict(kind=cmd["kind"], argv=cmd["argv"], rc=rc, stderr=err, outcome=outcome, symptom=symptom,
                    problems=[], seconds=round(time.time() - t0, 2), note="")
        result["calls"].append(call)
        for rel in cmd["existing"]:
            expected |= _parents(rel)
        progress(f"checking {cmd['kind']}")
        try:
            if res is None:
                call["note"] = "read-only folder not tried: root could not give up its rights"
                if cmd["target"] == "readonly":
                    os.chmod(Path(cmd["out"]).parent, 0o755)
            elif state is not None:
                _check_target(case, cmd, call, state, injected_name, expected)
                if cmd.get("must_fail"):
                    _check_call(case, cmd, call, injected_name, expected)
            elif cmd.get("older_pair"):
                _check_older_pair(cmd, call)
                if call["outcome"] == "OK":
                    expected |= _parents("cdir/x") | {os.path.join("cdir", n) for n in os.listdir("cdir")}
                    call["problems"] += check_c(Path("cdir"), injected_name)
                else:
                    expected |= _parents("cdir/x") | {os.path.join("cdir", n) for n in cmd["old_pair"]}
            else:
                if cmd.get("stdout_full"):
                    _check_full(call)
                _check_call(case, cmd, call, injected_name, expected)
        except Exception:  # noqa: BLE001 - a broken check is reported, not hidden
            call["problems"].append("the fuzzer's own check raised:\n" + traceback.format_exc())
        if call["problems"] and call["outcome"] != "FAILURE":
            call["outcome"], call["symptom"] = "FAILURE", call["symptom"] or "check"
    os.chdir(folder.parent)
    if not src.is_file() or src.read_bytes() != case.data:
        result["problems"].append("the model file was changed")
    if (folder / mutate.SENTINEL).exists() or any(mutate.SENTINEL == Path(p).name for p in _listing(folder)):
        result["problems"].append("a file-name payload ran: the sentinel file exists")
    left = sorted(p for p in _listing(folder) - expected if Path(p).name != mutate.SENTINEL)
    if left:
        result["problems"].append(f"left behind: {left}")
    tmp = Path(tempfile.gettempdir())
    stray = sorted(p.name for p in tmp.iterdir())
    if stray:
        result["problems"].append(f"left in the temporary folder: {stray}")
        for p in tmp.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
    numpy_call = result["calls"][0]
    if numpy_call["outcome"] == "REFUSED" and case.preserving and case.how and not result["problems"] \
            and not cmds[0].get("must_fail"):
        # only meaning-keeping edits: refused only if the original is
        progress("compiling the original")
        if _compiles(case.original):
            numpy_call["outcome"], numpy_call["symptom"] = "FAILURE", "check"
            numpy_call["problems"].append(f"refused after only {case.how}, yet the original compiles")
    # one front end: a refusal by one command and success of another is a finding
    kinds = {c["kind"]: c["outcome"] for c, cmd in zip(result["calls"], cmds)
             if not cmd.get("must_fail") and not cmd.get("aside") and c["outcome"] != "SKIPPED"}
    if {"OK", "REFUSED"} <= set(kinds.values()):
        result["problems"].append(f"the commands disagree: {kinds}")
    failed = result["problems"] or any(c["outcome"] == "FAILURE" for c in result["calls"])
    result["outcome"] = "FAILURE" if failed else numpy_call["outcome"]
    result["note"] = numpy_call["note"]
    return result


def _check_call(case, cmd, call, injected_name, expected) -> None:
    outputs = cmd["outputs"]
    if call["outcome"] == "OK" and cmd.get("must_fail"):
        call["problems"].append("exit 0 although the output cannot be written there")
        return
    if call["outcome"] == "OK":
        for rel in outputs:
            expected |= _parents(rel)
        if cmd["kind"] == "numpy":
            p = Path(outputs[0])
            if not p.is_file():
                call["problems"].append(f"exit 0 but {outputs[0]} was not written")
                return
            problems, note = check_numpy_module(p.read_text("utf-8"), str(p), injected_name)
            call["problems"] += problems
            call["note"] = note
        elif cmd["kind"] == "c":
            folder = Path(outputs[0])
            expected |= {os.path.normpath(folder / n) for n in (os.listdir(folder) if folder.is_dir() else [])}
            call["problems"] += check_c(folder, injected_name)
        else:
            call["problems"] += check_explain(Path(outputs[0]), case.path)
        return
    # refused or failed: no output written, an existing one untouched
    for rel in outputs:
        p = Path(rel)
        if rel in cmd["existing"]:
            if not p.is_file() or p.read_text() != cmd["existing"][rel]:
                call["problems"].append(f"the existing {rel} was changed although the command failed")
        elif cmd["kind"] == "c" and p.is_dir():
            if os.listdir(p):
                call["problems"].append(f"{rel} holds {sorted(os.listdir(p))} although the command failed")
            expected |= _parents(rel)
        elif p.exists():
            call["problems"].append(f"{rel} was written although the command failed")


def _compiles(source: str) -> bool:
    from nncc.api import compile_source
    try:
        compile_source(source, "original.nn").numpy_module()
        return True
    except Exception:  # noqa: BLE001
        return False


# ---- workers --------------------------------------------------------------------------------

def _worker(conn, root: str) -> None:
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ImportError, ValueError, OSError):
        pass
    tmp = Path(root) / f"tmp-{os.getpid()}"
    tmp.mkdir()
    # where a hung worker's stack goes when the parent asks (SIGUSR1), before killing it
    stacks = open(Path(root) / f"stack-{os.getpid()}.txt", "w")
    faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=False)
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = str(tmp)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        k, case, cmds = msg
        folder = Path(root) / f"case-{k}"
        folder.mkdir()
        try:
            result = run_case(case, cmds, folder, lambda stage: conn.send(("progress", k, stage)))
        except BaseException:  # noqa: BLE001
            result = dict(calls=[], problems=["the fuzzer failed:\n" + traceback.format_exc()],
                          outcome="FAILURE", note="")
        os.chdir(root)
        shutil.rmtree(folder, ignore_errors=True)
        conn.send(("result", k, result))


def compiler_stamp() -> str:
    """A hash of the compiler's files on disk: a process started later runs what is there now,
    the workers what was there when they forked."""
    import hashlib
    import nncc
    import nncc.templates
    h = hashlib.sha256()
    from importlib import resources
    folders = [Path(nncc.__file__).parent, Path(nncc.templates.__file__).parent]
    with contextlib.suppress(Exception):
        folders.append(Path(str(resources.files("nncc.grammar"))))
    for folder in folders:
        for f in sorted(folder.iterdir()) if folder.is_dir() else []:
            if f.is_file() and f.suffix in (".py", ".nn", ".j2", ".lark"):
                h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


_STAMP_AT_FORK = ""


def _warm_up() -> None:
    """Import and use the compiler once before forking, so that every worker starts warm."""
    global _STAMP_AT_FORK
    _STAMP_AT_FORK = compiler_stamp()
    import numpy  # noqa: F401
    import nncc.cli  # noqa: F401
    from nncc.api import compile_source
    from nncc.backends.c.codegen import render_c_files
    from nncc.explanation.document import build
    compiled = compile_source((mutate.EXAMPLES / "lenet.nn").read_text(), "warm.nn")
    compiled.numpy_module()
    render_c_files(compiled)
    build(compiled).render("md")


class Slot:
    def __init__(self, ctx, root):
        self.ctx, self.root = ctx, root
        self.start()

    def start(self):
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, self.root), daemon=True)
        self.proc.start()
        child.close()
        self.conn, self.job, self.deadline, self.stage = parent, None, 0.0, ""

    def give(self, job):
        self.job, self.stage, self.deadline = job, "start", time.time() + TIME_LIMIT
        self.conn.send(job)

    def stack(self) -> str:
        """Where the worker is: faulthandler's dump, innermost frames of nncc first."""
        path = Path(self.root) / f"stack-{self.proc.pid}.txt"
        with contextlib.suppress(OSError):
            os.kill(self.proc.pid, signal.SIGUSR1)
            time.sleep(1)
            frames = [ln.strip() for ln in path.read_text().splitlines() if ln.strip().startswith("File")]
            mine = [f for f in frames if "site-packages" not in f and "cli_fuzz" not in f][:6]
            return "stack (innermost first):\n" + "\n".join(frames[:2] + ["..."] + mine)
        return ""

    def kill(self):
        self.proc.kill()
        self.proc.join()
        self.conn.close()
        # the killed worker's case folder and temporary files stay: removed here
        shutil.rmtree(Path(self.root) / f"case-{self.job[0]}", ignore_errors=True)
        shutil.rmtree(Path(self.root) / f"tmp-{self.proc.pid}", ignore_errors=True)


def make(seed: int, k: int):
    rng = random.Random(f"{seed}:{k}")
    case = mutate.make_case(rng)
    return case, plan_commands(case, rng)


def run(indices, seed: int, jobs: int, on_result) -> None:
    """Run the cases `indices` on `jobs` workers; on_result(k, case, cmds, result) for each."""
    _warm_up()
    ctx = multiprocessing.get_context("fork")
    root = tempfile.mkdtemp(prefix="nncc-cli-fuzz-work-")
    os.chmod(root, 0o755)  # a run that gave up root (a read-only folder) must reach the model
    os.environ["NNCC_CACHE"] = str(Path(root) / "cache")
    pending = list(indices)
    jobs_of = {}
    slots = [Slot(ctx, root) for _ in range(max(1, jobs))]
    try:
        while pending or any(s.job for s in slots):
            for s in slots:
                if s.job is None and pending:
                    k = pending.pop(0)
                    case, cmds = make(seed, k)
                    jobs_of[k] = (case, cmds)
                    s.give((k, case, cmds))
            busy = [s for s in slots if s.job]
            timeout = max(0.0, min(s.deadline for s in busy) - time.time())
            ready = wait([s.conn for s in busy], timeout=timeout)
            for s in busy:
                k = s.job[0]
                if s.conn in ready:
                    try:
                        kind, _, payload = s.conn.recv()
                    except (EOFError, OSError):
                        s.proc.join(5)
                        code = s.proc.exitcode
                        on_result(k, *jobs_of.pop(k), _dead(f"the worker died (exit code {code}) during "
                                                            f"{s.stage}"))
                        s.kill()
                        s.start()
                        continue
                    if kind == "progress":
                        s.stage, s.deadline = payload, time.time() + TIME_LIMIT
                    else:
                        on_result(k, *jobs_of.pop(k), payload)
                        s.job = None
                elif time.time() > s.deadline:
                    on_result(k, *jobs_of.pop(k), _dead(f"no answer within {TIME_LIMIT} s during {s.stage}\n"
                                                        f"{s.stack()}"))
                    s.kill()
                    s.start()
    finally:
        for s in slots:
            with contextlib.suppress(Exception):
                s.conn.send(None)
        for s in slots:
            s.proc.join(5)
            if s.proc.is_alive():
                s.proc.kill()
        shutil.rmtree(root, ignore_errors=True)


def _dead(what: str) -> dict:
    return dict(calls=[], problems=[what], outcome="FAILURE", note="")


# ---- reporting ------------------------------------------------------------------------------

def failure_signatures(case, cmds, result) -> list[str]:
    sigs = []
    for c in result["calls"]:
        if c["outcome"] == "FAILURE":
            sigs.append(signature(c["kind"], c["symptom"], c["stderr"], c["problems"]))
    for p in result["problems"]:
        if p.startswith("no answer"):  # a hang: where in nncc it was
            where = [ln for ln in p.splitlines() if "/compiler/" in ln or "/nncc/" in ln][:1]
            stage = p.split(" during ", 1)[1].split(" ", 1)[0]
            sigs.append(f"hang in {stage}: " + (where[0].split("/")[-1] if where else "?"))
            continue
        sigs.append("case: " + re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "#", p.splitlines()[0])[:140])
    return sigs


def describe(k, seed, case, cmds, result) -> str:
    lines = [f"case {seed}:{k}  (python tests/cli_fuzz.py --seed {seed} --only {k})",
             f"path: {case.path!r}", f"seed program: {case.seed_name}", f"mutations: {case.how}",
             f"outcome: {result['outcome']}"]
    for p in result["problems"]:
        lines.append(f"problem: {p}")
    for c, cmd in zip(result["calls"], cmds):
        lines += [f"--- {c['kind']}: nncc {' '.join(map(repr, c['argv']))}",
                  f"exit: {c['rc']}  outcome: {c['outcome']} {c['symptom']}  ({c['seconds']} s)"]
        if cmd.get("target"):
            lines.append(f"-o is: {cmd['target']}")
        if cmd.get("older_pair"):
            lines.append("the folder held an older pair")
        if cmd.get("stdout_full"):
            lines.append("stdout: /dev/full" + (", in a process" if cmd.get("process") else ""))
        if c.get("interrupt"):
            lines.append(f"interrupted: {c['interrupt']}")
        lines += [f"problem: {p}" for p in c["problems"]]
        if c["note"]:
            lines.append(f"not checked numerically: {c['note']}")
        if c["stderr"]:
            lines += ["stderr:", c["stderr"][:4000]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", help="folder for failures and summary.json (default: a new temporary folder)")
    ap.add_argument("--only", type=int, nargs="*", help="run these case numbers only, and print each")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="nncc-cli-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    indices = args.only if args.only else list(range(args.inputs))
    counts = {"OK": 0, "REFUSED": 0, "FAILURE": 0, "SKIPPED": 0}
    notes, kinds, sigs, failures = {}, {}, {}, []
    targets, interrupts, slowest = {}, {}, [0.0, None]
    start = time.time()

    def on_result(k, case, cmds, result):
        counts[result["outcome"]] += 1
        if result["note"]:
            notes.setdefault(result["note"], []).append(k)
        if result.get("seconds", 0) > slowest[0]:
            slowest[:] = [result["seconds"], k]
        for c, cmd in zip(result["calls"], cmds):
            key = f"{c['kind']} {c['outcome']}"
            kinds[key] = kinds.get(key, 0) + 1
            what = cmd.get("target") or ("older C pair" if cmd.get("older_pair") else None) or \
                ("stdout /dev/full" + (" (process)" if cmd.get("process") else "") if cmd.get("stdout_full") else None)
            if what:
                key = f"{what} {c['outcome']}"
                targets[key] = targets.get(key, 0) + 1
            if c.get("interrupt"):
                i = c["interrupt"]
                for key in (f"{i['signal']} {i['ended']}", f"{i['signal']} outputs {i['state']}",
                            f"{i['signal']} temporary file left" if i["temps"] else None):
                    if key:
                        interrupts[key] = interrupts.get(key, 0) + 1
        text = describe(k, args.seed, case, cmds, result)
        if args.only:
            print(text)
        if result["outcome"] == "FAILURE":
            d = out / f"failure-{args.seed}-{k}"
            d.mkdir(exist_ok=True)
            (d / "input.nn").write_bytes(case.data)
            (d / "path.txt").write_text(repr(case.path) + "\n", encoding="utf-8")
            (d / "report.txt").write_text(text, encoding="utf-8", errors="backslashreplace")
            (d / "stderr.txt").write_text("\n".join(c["stderr"] for c in result["calls"]), encoding="utf-8",
                                          errors="backslashreplace")
            for s in failure_signatures(case, cmds, result):
                sigs.setdefault(s, []).append(k)
            failures.append(dict(k=k, path=case.path, how=case.how, problems=result["problems"],
                                 calls=[{key: c[key] for key in ("kind", "argv", "rc", "outcome", "symptom",
                                                                 "problems")} | {"stderr": c["stderr"][:2000]}
                                        for c in result["calls"]]))
        done = sum(counts.values())
        if not args.quiet:
            print(f"\r{done}/{len(indices)} cases, {time.time() - start:.0f} s, {counts['FAILURE']} failures",
                  end="", file=sys.stderr, flush=True)

    run(indices, args.seed, args.jobs, on_result)
    if not args.quiet:
        print(file=sys.stderr)
    wall = time.time() - start
    for name, n in counts.items():
        print(f"{name:<10} {n}")
    for key in sorted(kinds):
        print(f"  {key:<18} {kinds[key]}")
    for note, ks in sorted(notes.items()):
        print(f"  OK, numbers not checked ({note}): {len(ks)}, e.g. --only {' '.join(map(str, ks[:5]))}")
    for key in sorted(targets):
        print(f"  -o {key:<30} {targets[key]}")
    for key in sorted(interrupts):
        print(f"  interrupted: {key:<38} {interrupts[key]}")
    print(f"wall time  {wall:.0f} s; slowest case {slowest[0]} s (--only {slowest[1]})")
    for s, ks in sorted(sigs.items(), key=lambda kv: -len(kv[1])):
        print(f"FAILURE {len(ks)}x  {s}   e.g. --only {' '.join(map(str, ks[:5]))}")
    (out / "summary.json").write_text(json.dumps(dict(seed=args.seed, counts=counts, commands=kinds, notes=notes,
                                                      targets=targets, interrupts=interrupts,
                                                      slowest=dict(seconds=slowest[0], case=slowest[1]),
                                                      signatures=sigs, failures=failures, wall=wall),
                                                 indent=1, default=str), encoding="utf-8")
    print(f"failures and summary.json: {out}")
    return 1 if counts["FAILURE"] else 0


if __name__ == "__main__":
    sys.exit(main())
