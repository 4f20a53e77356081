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
    p.add_argument("model", help="the .nn file to compile")
    p.add_argument("-o", "--output", help="where to write the module (default: MODEL with .py)")
    p.add_argument("--version", action="version", version=f"nncc {__version__}")
    return p


def write_atomically(path: Path, text: str) -> None:
    """Write text to path so that a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    src_path = Path(args.model)
    try:
        source = src_path.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"nncc: error: cannot read {args.model}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except UnicodeDecodeError:
        print(f"nncc: error: {args.model} is not UTF-8 text", file=sys.stderr)
        return 1
    out = Path(args.output) if args.output else src_path.with_suffix(".py")
    if out.resolve() == src_path.resolve():
        print(f"nncc: error: the output would overwrite the source {args.model}", file=sys.stderr)
        return 1
    from .api import compile_source
    try:
        text = compile_source(source, str(args.model)).numpy_module()
    except NNError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    except RecursionError:
        print(f"{args.model}: error: the expression is nested too deeply", file=sys.stderr)
        return 1
    try:
        write_atomically(out, text)
    except OSError as exc:
        print(f"nncc: error: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
