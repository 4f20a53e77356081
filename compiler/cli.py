"""The `nncc` command."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .version import __version__
from .errors import NNError, escape
from .output import (InputError, Interrupted, OutputError, check_interrupted, read_model, report_stdout_failure,
                     signals_raise, stamp_c_pair, write_atomically, write_files)

__all__ = ["main", "write_atomically"]


COMMANDS = ("compile", "explain", "train")
FORMATS = {".tex": "tex", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nncc",
        description="Compile a .nn network description into a standalone numpy module (or C) that\n"
                    "computes the forward pass, the loss, every gradient (derived symbolically) and an\n"
                    "SGD step; or write that derivation as a document.",
        epilog="nncc MODEL.nn is short for nncc compile MODEL.nn. Examples:\n"
               "  nncc model.nn -o model.py\n"
               "  nncc model.nn --backend c -o build/\n"
               "  nncc explain model.nn -o model.html\n"
               "A model file called compile or explain: nncc compile ./explain",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"nncc {__version__}")
    commands = p.add_subparsers(dest="command", metavar="COMMAND")
    c = commands.add_parser(
        "compile", help="compile a .nn file (the default command)",
        description="Compile a .nn file into a numpy module (default), C99 sources or a cffi module.")
    c.add_argument("model", help="the .nn file to compile")
    c.add_argument("-o", "--output", help="where to write the module (default: MODEL with .py); with "
                                           "--backend c, a folder (ending in /) for NAME.h and NAME.c, or a "
                                           ".py file for a Python module that builds the C with cffi")
    c.add_argument("--backend", choices=["numpy", "c"], default="numpy",
                   help="numpy (default): a module importing only numpy; c: C99 sources or a cffi module")
    # no default here, so that a --dtype the chosen output cannot honour is reported
    c.add_argument("--dtype", choices=["float32", "float64"],
                   help="the C sources' real type (float or double); default float32")
    c.add_argument("--blas", action="store_true",
                   help="with --backend c, matrix products through cblas_?gemm: the cffi module links the "
                        "OpenBLAS of the scipy-openblas32 package (pip install 'nncc[blas]'); C sources "
                        "define NNCC_CBLAS (link a CBLAS). Without it the C has its own blocked product")
    c.add_argument("--optimizer", metavar="SPEC",
                   help="train_step's optimizer, as the program's 'optimizer' line writes it, replacing "
                        "the program's own: sgd, adam, adamw, e.g. --optimizer 'adam(lr=0.001)' or "
                        "'sgd(lr=0.1, momentum=0.9, nesterov=true)' (default: the program's, else sgd)")
    c.add_argument("--freeze", metavar="LAYER", action="append", default=[],
                   help="a layer whose parameters are not trained (no gradient, no update); repeat for more")
    c.add_argument("--input-grad", action="store_true",
                   help="add input_grad(params, x, ..., y, ...): the loss and its gradient with respect to "
                        "each input (saliency maps, adversarial examples)")
    e = commands.add_parser(
        "explain", help="write the derivation of the gradients as LaTeX, Markdown or HTML",
        description="Write the derivation of a network's gradients as LaTeX, Markdown or HTML: each "
                    "operator's element formula, Jacobian, backward formula and matrix form, then the "
                    "chain from the loss back to the first layer.")
    e.add_argument("model", help="the .nn file")
    e.add_argument("-o", "--output", help="the document to write (.tex, .md or .html); stdout if omitted")
    e.add_argument("--format", choices=["tex", "md", "html"], help="override the format the suffix implies")
    t = commands.add_parser(
        "train", help="compile a .nn file and train it on a dataset",
        description="Compile a .nn file and train it with its train_step on a dataset: a progress bar, the "
                    "training loss and validation metric of every epoch, the best parameters as a checkpoint, "
                    "a curve. The network needs one input and one target that fit the data.",
        epilog="Example: nncc train examples/digits.nn --data digits --optimizer 'adam(lr=0.001)' --epochs 30 "
               "--checkpoint build/digits.npz --curve build/digits.png")
    t.add_argument("model", help="the .nn file to train")
    t.add_argument("--data", required=True, metavar="DATA",
                   help="digits, iris, breast_cancer or wine (scikit-learn's bundled sets), or a .npz file "
                        "(arrays x and y) or .csv file (the last column the target); whole-number targets "
                        "are class labels")
    t.add_argument("--optimizer", metavar="SPEC", help="as for compile (default: the program's, else sgd)")
    t.add_argument("--freeze", metavar="LAYER", action="append", default=[],
                   help="a layer not to train (no gradient, no update), e.g. one --init loaded; repeat for more")
    t.add_argument("--lr", type=float, help="the learning rate (default: the optimizer's)")
    t.add_argument("--epochs", type=int, default=20, help="default 20")
    t.add_argument("--batch-size", type=int, default=32, help="default 32")
    t.add_argument("--seed", type=int, default=0, help="parameters, split and shuffling (default 0)")
    t.add_argument("--val", type=float, default=0.2, help="the fraction held out for validation (default 0.2)")
    t.add_argument("--max-norm", type=float, help="clip the gradients to this global norm")
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    t.add_argument("--checkpoint", help="write the best parameters and the optimizer's state here (.npz; "
                                        "load_params reads it)")
    t.add_argument("--resume", help="continue the run saved in this checkpoint")
    t.add_argument("--init", help="start from these parameters (.npz of save_params, or a checkpoint's best) "
                                  "instead of fresh ones: fine-tuning, with --freeze for the layers to keep")
    t.add_argument("--curve", help="save the loss and accuracy curves as this PNG (needs matplotlib)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _arguments(argv) -> argparse.Namespace:
    """The parsed command line; a first argument that names no command (a model file, an
    option) means `compile`."""
    parser = _parser()
    if not argv:
        parser.error("give a .nn file to compile, or a command (see nncc --help)")
    if argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version"):
        argv = ["compile", *argv]
    return parser.parse_args(argv)


def _error(message: str) -> None:
    """A one-line message on stderr; a path's newlines or escape sequences shown escaped."""
    print(escape(message), file=sys.stderr)


def _read(path: str):
    try:
        return read_model(path)
    except InputError as exc:
        _error(f"nncc: error: {exc}")
    return None


def _explain(args) -> int:
    fmt = args.format
    if fmt is None:
        if args.output is None:
            fmt = "md"
        else:
            fmt = None if args.output.endswith(("/", os.sep)) else FORMATS.get(Path(args.output).suffix.lower())
            if fmt is None:
                _error(f"nncc explain: error: cannot tell the format of {args.output}; name it .tex, .md "
                       f"or .html, or pass --format")
                return 1
    source = _read(args.model)
    if source is None:
        return 1
    from .explanation.document import build
    from .api import compile_source
    try:
        text = build(compile_source(source, str(args.model))).render(fmt)
    except Exception as exc:  # noqa: BLE001 - a user sees a message, never a traceback
        return _compile_failed(exc, args.model)
    if args.output is None:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except OSError as exc:
            message = report_stdout_failure(exc)
            if message:
                _error(f"nncc: error: {message}")
            return 1
        return 0
    try:
        write_atomically(Path(args.output), text)
    except OutputError as exc:
        _error(f"nncc: error: {exc}")
        return 1
    return 0


def _train(args) -> int:
    for name, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            _error(f"nncc train: error: {name} must be at least 1")
            return 1
    if args.lr is not None and not args.lr > 0:
        _error("nncc train: error: --lr must be a positive number")
        return 1
    if args.max_norm is not None and not args.max_norm > 0:
        _error("nncc train: error: --max-norm must be a positive number")
        return 1
    source = _read(args.model)
    if source is None:
        return 1
    from .api import compile_source
    try:
        compiled = compile_source(source, str(args.model), args.optimizer, args.freeze)
        text = compiled.numpy_module()
    except Exception as exc:  # noqa: BLE001 - a user sees a message, never a traceback
        return _compile_failed(exc, args.model)
    import types

    import numpy as np

    from .training.data import DataError, fit, load
    from .training.loop import TrainError, save_curve, train
    module = types.ModuleType(f"nncc_train_{compiled.graph.name}")
    exec(compile(text, f"<nncc {args.model}>", "exec"), module.__dict__)
    progress = None
    if not args.quiet and sys.stderr.isatty():
        try:
            from tqdm import tqdm

            def progress(it, desc):
                return tqdm(it, desc=desc, leave=False, unit="batch")
        except ImportError:
            pass
    lr = args.lr if args.lr is not None else module.OPTIMIZER[1]["lr"]
    try:
        data = fit(load(args.data), module, args.val, args.seed, np.dtype(args.dtype))
        print(f"{compiled.graph.name}: {sum(int(np.prod(s)) for s in module.PARAM_SHAPES.values()):,} parameters; "
              f"{args.data}: {len(data.x_train)} samples to train on, {len(data.x_val)} to validate; "
              f"{module.OPTIMIZER[0]}, lr {lr}")
        best, history = train(module, data, epochs=args.epochs, batch_size=args.batch_size, lr=lr, seed=args.seed,
                           max_norm=args.max_norm, checkpoint=Path(args.checkpoint) if args.checkpoint else None,
                           resume=Path(args.resume) if args.resume else None,
                           init=Path(args.init) if args.init else None, progress=progress)
        if args.curve:
            save_curve(history, Path(args.curve), f"network {compiled.graph.name}, data {args.data}")
            print(f"curve: {args.curve}")
        if args.checkpoint:
            print(f"best parameters: {args.checkpoint} (epoch {history.best_epoch}; load_params reads them)")
    except (DataError, TrainError) as exc:
        _error(f"nncc train: error: {exc}")
        return 1
    except OSError as exc:
        _error(f"nncc train: error: {exc}")
        return 1
    return 0


def _compile_failed(exc: Exception, model: str) -> int:
    """Report a failed compile in plain words; 1."""
    check_interrupted()  # a signal whose exception a callback swallowed: end quietly, not with an error
    if isinstance(exc, NNError):
        print(exc.render(), file=sys.stderr)
    elif isinstance(exc, RecursionError):
        _error(f"{model}: error: the expression is nested too deeply")
    elif isinstance(exc, NotImplementedError):  # a form the code generators do not handle
        _error(f"{model}: error: nncc cannot generate code for this network yet ({exc})")
    else:
        _error(f"{model}: internal error: {type(exc).__name__}: {exc}")
        print("nncc failed on this file; please report it with the file attached", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # a termination signal or Ctrl-C ends the run through the temporary files' cleanup,
    # then quietly, with the shell's status for that signal
    try:
        with signals_raise():
            args = _arguments(argv)
            if args.command == "train":
                return _train(args)
            return _explain(args) if args.command == "explain" else _compile(args)
    except Interrupted as exc:
        return 128 + exc.signum
    except KeyboardInterrupt:
        return 130
    except Exception:  # noqa: BLE001
        # one a signal caused where Python could not raise it (an import of numpy's C
        # code cut short turns into an ImportError): end as signalled, not with a traceback
        try:
            check_interrupted()
        except Interrupted as exc:
            return 128 + exc.signum
        raise


def _compile(args) -> int:
    src_path = Path(args.model)
    source = _read(args.model)
    if source is None:
        return 1
    if args.output and args.output.endswith(("/", os.sep)) and args.backend != "c":
        _error(f"nncc: error: cannot write {args.output}: it names a directory; the module is one file, "
               f"e.g. -o {args.output}{src_path.stem}.py")
        return 1
    out = Path(args.output) if args.output else src_path.with_suffix(".py")
    if os.path.realpath(out) == os.path.realpath(src_path):  # realpath: no error on a link loop
        _error(f"nncc: error: the output would overwrite the source {args.model}")
        return 1
    from .api import compile_source
    c_files = args.backend == "c" and (args.output is not None and (args.output.endswith(("/", os.sep))
                                                                    or Path(args.output).is_dir()))
    if args.backend == "c" and not c_files and out.suffix != ".py":
        _error(f"nncc: error: cannot write {args.output}: --backend c writes C sources to a directory "
               f"(-o DIR/) or the cffi Python module to -o OUT.py")
        return 1
    if args.blas and args.backend != "c":
        _error("nncc: error: --blas applies to --backend c; the numpy module's products already run in "
               "numpy's BLAS")
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
        compiled = compile_source(source, str(args.model), args.optimizer, args.freeze, args.input_grad)
        if args.backend == "numpy":
            files = {out: compiled.numpy_module()}
        elif c_files:
            from .backends.c.codegen import render_c_files
            dtype = args.dtype or "float32"
            files = stamp_c_pair({out / name: text for name, text in render_c_files(compiled, dtype, blas=args.blas).items()})
        else:
            from .backends.c.codegen import render_c_module
            files = {out: render_c_module(compiled, blas=args.blas)}
    except Exception as exc:  # noqa: BLE001 - a user sees a message, never a traceback
        return _compile_failed(exc, args.model)
    try:
        write_files(files)
    except OutputError as exc:
        _error(f"nncc: error: {exc}")
        return 1
    if args.backend == "c":
        from .backends.c.codegen import training_memory
        try:
            print(training_memory(compiled, args.dtype or "float32"), flush=True)
        except OSError as exc:  # the files are written; only the report is lost
            message = report_stdout_failure(exc)
            if message:
                _error(f"nncc: error: {message}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
