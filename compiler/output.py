"""Reading the model and writing what the compiler makes of it, safely.

- A regular output file is replaced atomically: a reader sees the old file or the new
  one, never half of one, and a temporary file never outlives the write (any exception,
  and SIGTERM/SIGHUP/SIGINT, which `signals_raise` turns into exceptions, cleans it up).
- Several files (a C header and source) are committed together: all are written and
  synced first, then renamed with signals held off, and a failed rename puts back the
  files already replaced.  Only a hard kill or a crash between two renames can still
  mix them, so `stamp_c_pair` also marks both with the same hash and the source refuses
  to compile against a header from another run.
- A symbolic link is followed: its target is replaced, the link stays.  A character
  device or a FIFO (/dev/null, /dev/stdout, a pipe) is opened and written, as a shell's
  `>` would; it is never replaced by a regular file.  Anything else (a directory, a
  block device, a socket) is refused in plain words.
- An error names the path the user gave, never a temporary file.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import signal
import sys
import stat
import tempfile
import threading
from pathlib import Path

MAX_INPUT_BYTES = 16 * 1024 * 1024  # a .nn file is a few lines; this bounds reading /dev/zero


class InputError(Exception):
    """A model that cannot be read; the message names the user's path."""


class OutputError(Exception):
    """An output that cannot be written; the message names the user's path."""

    def __init__(self, path, reason: str):
        super().__init__(f"cannot write {path}: {reason}")
        self.path = path


class Interrupted(BaseException):
    """A termination signal, raised where the program is so that cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_TERMINATING = tuple(getattr(signal, s) for s in ("SIGTERM", "SIGHUP") if hasattr(signal, s))
_HELD = _TERMINATING + (signal.SIGINT,)


@contextlib.contextmanager
def signals_raise():
    """Within: SIGTERM and SIGHUP raise Interrupted (SIGINT already raises
    KeyboardInterrupt), so that `finally` blocks remove temporary files."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; its caller owns the signals
        return

    def handler(signum, frame):
        # remembered too: raised inside a callback that Python ignores errors of (an
        # import lock's, a weakref's), the exception alone would be lost
        _pending.append(signum)
        raise Interrupted(signum)

    def unraisable(info):
        # ... and not printed there as "Exception ignored in ...": check_interrupted acts on it
        if not isinstance(info.exc_value, Interrupted):
            before(info)

    before = sys.unraisablehook
    old = {s: signal.signal(s, handler) for s in _TERMINATING}
    sys.unraisablehook = unraisable
    try:
        yield
        check_interrupted()
    finally:
        sys.unraisablehook = before
        for s, h in old.items():
            signal.signal(s, h)


_pending: list = []  # termination signals received while signals_raise is in force


def check_interrupted() -> None:
    """Raise Interrupted for a termination signal that arrived, even one whose exception
    was swallowed where it was raised; called before anything is committed."""
    if _pending:
        raise Interrupted(_pending[0])


@contextlib.contextmanager
def _signals_held():
    """Within: termination signals wait (delivered on leaving), so that a group of renames
    is not cut in half by one."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def read_model(path: str) -> str:
    """The text of a .nn file, at most MAX_INPUT_BYTES."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(f"{path} is larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB; "
                         f"a .nn file is a few lines of text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _destination(path: Path):
    """(where to write, how): "replace" a regular or missing file atomically, or "stream"
    into a character device or FIFO.  A symbolic link leads to its target."""
    target = Path(os.path.realpath(path)) if os.path.islink(path) else path
    try:
        st = os.stat(path)
    except FileNotFoundError:  # a new file, or one a dangling link names
        return target, "replace"
    except OSError as exc:
        raise OutputError(path, _reason(exc)) from None
    if stat.S_ISREG(st.st_mode):
        return target, "replace"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        # opened by the name given: /dev/stdout's link leads to no path when it is a pipe
        return path, "stream"
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(path, "it is a directory")
    kind = "block device" if stat.S_ISBLK(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else \
        "special file"
    raise OutputError(path, f"it is a {kind}, which nncc does not write to")


def _fsync_dir(folder: Path) -> None:
    # the renames themselves survive a crash only once the folder is synced
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_files(files: dict) -> None:
    """Write {path: text}, all or nothing (see the module's docstring); OutputError names
    the user's path."""
    check_interrupted()
    replace, stream = [], []
    for path, text in files.items():
        path = Path(path)
        where, how = _destination(path)
        (replace if how == "replace" else stream).append((path, where, text.encode("utf-8")))
    temps, backups, done = {}, {}, []
    try:
        # 1. every new file complete and on disk beside its destination
        for path, where, data in replace:
            try:
                where.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{where.name}.", dir=where.parent)
            except OSError as exc:
                raise OutputError(path, _reason(exc)) from None
            temps[where] = tmp
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                try:  # an existing file keeps its permissions; a new one gets the usual ones
                    mode = stat.S_IMODE(os.stat(where).st_mode)
                except FileNotFoundError:
                    mode = 0o666 & ~_umask()  # mkstemp makes the file private; an output is not
                os.chmod(tmp, mode)
            except OSError as exc:
                raise OutputError(path, _reason(exc)) from None
        # 2. the renames, not to be split by a signal; a failure puts back what was replaced
        check_interrupted()
        with _signals_held():
            try:
                for path, where, _ in replace:
                    if len(replace) > 1 and where.exists():
                        backups[where] = _link_aside(where)
                for path, where, _ in replace:
                    try:
                        os.replace(temps[where], where)
                    except OSError as exc:
                        raise OutputError(path, _reason(exc)) from None
                    del temps[where]
                    done.append(where)
            except BaseException:
                for where in reversed(done):
                    with contextlib.suppress(OSError):
                        if backups.get(where):
                            os.replace(backups.pop(where), where)
                        else:
                            os.unlink(where)
                raise
            finally:
                for aside in backups.values():
                    if aside:
                        with contextlib.suppress(OSError):
                            os.unlink(aside)
        for folder in {where.parent for _, where, _ in replace}:
            _fsync_dir(folder)
    finally:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    # 3. devices and pipes: written in place, as the shell's `>` would
    for path, where, data in stream:
        try:
            with open(where, "wb") as f:
                f.write(data)
        except OSError as exc:
            raise OutputError(path, _reason(exc)) from None


def _link_aside(where: Path):
    """A second name for the current file, to put it back with; None where the file
    system has no hard links (that file then cannot be put back)."""
    for _ in range(100):
        aside = where.parent / f".{where.name}.{secrets.token_hex(4)}.old"
        try:
            os.link(where, aside)
            return aside
        except FileExistsError:
            continue
        except OSError:
            return None
    return None


def write_atomically(path: Path, text: str) -> None:
    """Write text to path so that a reader never sees half a file."""
    write_files({Path(path): text})


def stamp_c_pair(files: dict) -> dict:
    """The C header and source with a matching stamp: the header defines NAME_NNCC_PAIR
    to a hash of both, and the source stops the C compiler if the header it includes
    defines another value (a header and a source from two runs)."""
    headers = [n for n in files if str(n).endswith(".h")]
    sources = [n for n in files if str(n).endswith(".c")]
    if len(headers) != 1 or len(sources) != 1:
        return dict(files)
    (h,), (c,) = headers, sources
    stem = Path(h).stem  # the network's name: a validated C identifier
    digest = hashlib.sha256((files[h] + "\0" + files[c]).encode("utf-8")).hexdigest()
    value = "0x" + digest[:15]  # 60 bits: a positive number in any preprocessor
    macro = f"{stem.upper()}_NNCC_PAIR"
    out = dict(files)
    out[h] = files[h] + (f"\n/* this header and {Path(c).name} were written together; "
                         f"{Path(c).name} checks that it gets this value */\n"
                         f"#define {macro} {value}\n")
    out[c] = files[c] + (f"\n#if !defined({macro}) || {macro} != {value}\n"
                         f"#error \"{Path(h).name} and {Path(c).name} come from different nncc runs: "
                         f"run nncc again to write both\"\n"
                         f"#endif\n")
    return out


def report_stdout_failure(exc: OSError):
    """Plain words for a failed write to stdout (None for a closed pipe, which is quiet),
    and stdout pointed at /dev/null so that the exit's flush does not fail again."""
    with contextlib.suppress(Exception):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    if exc.errno == errno.EPIPE:
        return None
    return f"cannot write to standard output: {_reason(exc)}"
