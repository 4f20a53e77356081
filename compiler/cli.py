"""The `nncc` command."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from . import __version__
from .errors import NNError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nncc",
        description="Compile a .nn network description into a standalone numpy module that computes "
                    "the forward pass, the loss, every gradient (derived symbolically) and an SGD step.")
    p.add_argument("model", help="the .nn file to compile (or: nncc explain MODEL.nn -o OUT.html)")
    p.add_argument("-o", "--output", help="where to write the module (default: MODEL with .py); with "
                                           "--backend c, a folder (ending in /) for NAME.h and NAME.c, or a "
                                           ".py file for a Python module that builds the C with cffi")
    p.add_argument("--backend", choices=["numpy", "c"], default="numpy",
                   help="numpy (default): a module importing only numpy; c: C99 sources or a cffi module")
    # no default here, so that a --dtype the chosen output cannot honour is reported
    p.add_argument("--dtype", choices=["float32", "float64"],
                   help="the C sources' real type (float or double); default float32")
    p.add_argument("--version", action="version", version=f"nncc {__version__}")
    return p


def write_atomically(path: Path, text: str) -> None:
    """Write text to path so that a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; an output is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FORMATS = {".tex": "tex", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}


def _explain_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nncc explain",
        description="Write the derivation of a network's gradients as LaTeX, Markdown or HTML: each "
                    "operator's element formula, Jacobian, backward formula and matrix form, then the "
                    "chain from the loss back to the first layer.")
    p.add_argument("model", help="the .nn file")
    p.add_argument("-o", "--output", help="the document to write (.tex, .md or .html); stdout if omitted")
    p.add_argument("--format", choices=["tex", "md", "html"], help="override the format the suffix implies")
    return p


def _read(path: str):
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"nncc: error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
    except UnicodeDecodeError:
        print(f"nncc: error: {path} is not UTF-8 text", file=sys.stderr)
    return None


def explain_main(argv) -> int:
    args = _explain_parser().parse_args(argv)
    fmt = args.format
    if fmt is None:
        if args.output is None:
            fmt = "md"
        else:
            fmt = FORMATS.get(Path(args.output).suffix.lower())
            if fmt is None:
                print(f"nncc explain: error: cannot tell the format of {args.output}; name it .tex, .md "
                      f"or .html, or pass --format", file=sys.stderr)
                return 1
    source = _read(args.model)
    if source is None:
        return 1
    from .document import build
    from .api import compile_source
    try:
        text = build(compile_source(source, str(args.model))).render(fmt)
    except Exception as exc:  # noqa: BLE001 - a user sees a message, never a traceback
        return _compile_failed(exc, args.model)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        write_atomically(Path(args.output), text)
    except OSError as exc:
        print(f"nncc: error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _compile_failed(exc: Exception, model: str) -> int:
    """Report a failed compile in plain words; 1."""
    if isinstance(exc, NNError):
        print(exc.render(), file=sys.stderr)
    elif isinstance(exc, RecursionError):
        print(f"{model}: error: the expression is nested too deeply", file=sys.stderr)
    elif isinstance(exc, NotImplementedError):  # a form the code generators do not handle
        print(f"{model}: error: nncc cannot generate code for this network yet ({exc})", file=sys.stderr)
    else:
        print(f"{model}: internal error: {type(exc).__name__}: {exc}\n"
              f"nncc failed on this file; please report it with the file attached", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "explain" and not Path("explain").is_file():
        return explain_main(argv[1:])
    args = _parser().parse_args(argv)
    src_path = Path(args.model)
    source = _read(args.model)
    if source is None:
        return 1
    out = Path(args.output) if args.output else src_path.with_suffix(".py")
    if out.resolve() == src_path.resolve():
        print(f"nncc: error: the output would overwrite the source {args.model}", file=sys.stderr)
        return 1
    from .api import compile_source
    c_files = args.backend == "c" and (args.output is not None and (args.output.endswith(("/", os.sep))
                                                                    or Path(args.output).is_dir()))
    if args.backend == "c" and not c_files and out.suffix != ".py":
        print(f"nncc: error: cannot write {args.output}: --backend c writes C sources to a directory "
              f"(-o DIR/) or the cffi Python module to -o OUT.py", file=sys.stderr)
        return 1
    if args.dtype is not None and not c_files:
        if args.backend == "numpy":
            print("nncc: error: --dtype applies to --backend c; the numpy module follows its inputs' dtype "
                  "(float32 in, float32 out; float64 in, float64 out)", file=sys.stderr)
        else:
            print("nncc: error: --dtype applies to the C sources written with -o DIR/; the cffi module "
                  "runs float32 and float64 arrays alike", file=sys.stderr)
        return 1
    try:
        compiled = compile_source(source, str(args.model))
        if args.backend == "numpy":
            files = {out: compiled.numpy_module()}
        elif c_files:
            from .c_backend import render_c_files
            dtype = args.dtype or "float32"
            files = {out / name: text for name, text in render_c_files(compiled, dtype).items()}
        else:
            from .c_backend import render_c_module
            files = {out: render_c_module(compiled)}
    except Exception as exc:  # noqa: BLE001 - a user sees a message, never a traceback
        return _compile_failed(exc, args.model)
    try:
        for path, text in files.items():
            write_atomically(path, text)
    except OSError as exc:
        print(f"nncc: error: cannot write {exc.filename or out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
