"""The errors every part raises, and how an entry point reports them: one line, `error: ...`, an exit status.

- `ConfigError` (exit 2): a value the user can change on the command line or in a file, named by its key.
- `RunFailure` (exit 1): the run itself or its environment failed (a diverged loss, a full disk, an unwritable
  folder, an unreachable tracking store or dataset); the message names the metric, path or URI.

`explain(exc)` finds a known failure anywhere in an exception's cause chain (Lightning and MLflow wrap what
they catch) and returns (message, exit status); unknown exceptions return None and keep their traceback,
because they are bugs to report, not inputs to fix.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ConfigError(ValueError):
    """A config value that cannot run; the message is one line naming the key and what is allowed."""


class RunFailure(RuntimeError):
    """A run-time failure reported in one line (exit status 1)."""


class NonFiniteLoss(RunFailure, FloatingPointError):
    """The training loss became NaN or infinite; the message names the loss and the step."""


class Unavailable(RunFailure):
    """A service or file the run needs cannot be reached: the tracking store, a hub dataset."""


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def explain(exc: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit status) for a known failure in `exc`'s cause chain, else None."""
    for e in _chain(exc):
        if isinstance(e, ConfigError):
            return first_line(e), 2
        if isinstance(e, RunFailure):
            return first_line(e), 1
        if isinstance(e, FloatingPointError):
            return first_line(e), 1
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            where = f" writing {e.filename}" if e.filename else ""
            return f"disk full{where} ({e.strerror}); free space or choose another output_dir", 1
        if isinstance(e, OSError) and e.errno in _NOT_WRITABLE and e.filename:
            return f"cannot write {e.filename}: {e.strerror}", 1
    return None


def failure_reason(exc: BaseException) -> str:
    """What a FAILED run records as its reason: the one-line message when the failure is known."""
    known = explain(exc)
    return known[0] if known else f"{type(exc).__name__}: {first_line(exc)}"


def verbose_requested(argv: list[str]) -> bool:
    """`--verbose` on the command line (removed from argv) or HYDRA_FULL_ERROR=1: show tracebacks."""
    found = "--verbose" in argv
    while "--verbose" in argv:
        argv.remove("--verbose")
    return found or os.environ.get("HYDRA_FULL_ERROR") == "1"


@contextmanager
def one_line_errors(verbose: bool = False) -> Iterator[None]:
    """The top-level handler of `train.py` and `sweep.py`: a known failure ends the process with `error: ...`
    and its exit status; anything else (and everything with `verbose`) keeps its traceback."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        known = explain(exc)
        if known is None or verbose:
            raise
        print(f"error: {known[0]}", file=sys.stderr)
        sys.exit(known[1])


_deferring = 0  # depth of `deferred_interrupts` blocks open on the main thread
_pending: str | None = None  # the signal that arrived inside one, raised when the outermost block ends


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """A tracking-store call that an interrupt must not cut in half. A KeyboardInterrupt raised inside an
    MLflow SQLite write (or a read whose cursor is not fully fetched) leaves that process's connection holding
    a database lock: every later write, of this process and of every other one on the store, waits out the
    20 s busy timeout and fails (measured: the interrupted worker's KILLED status and its sibling's were both
    lost). Under the handler of `interrupt_on_signals` a signal that arrives here is raised when the call is
    done. Other threads, and
    processes without that handler (a notebook kernel), are unaffected."""
    global _deferring, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if _deferring == 0 and _pending is not None:
            name, _pending = _pending, None
            raise KeyboardInterrupt(name)


def interrupt_on_signals(repeat: str = "raise") -> None:
    """Entry points only: SIGTERM interrupts like Ctrl-C (KeyboardInterrupt), so `kill <pid>`, a launcher and a
    scheduler stop a run the same way. With `repeat="ignore"` only the first SIGINT/SIGTERM interrupts; later
    ones are ignored so that the interrupted run's bookkeeping (an MLflow status, a trial's state) completes.
    A signal that arrives during a tracking-store call interrupts once the call is done."""
    fired = False

    def handler(signum, frame):
        global _pending
        nonlocal fired
        if fired and repeat == "ignore":
            return
        fired = True
        name = signal.Signals(signum).name
        if _deferring:
            _pending = name
            return
        raise KeyboardInterrupt(name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
