"""Ctrl-C that is never lost.

Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread happens to be. When that
is inside a finaliser or a callback (a garbage-collected object's ``__del__`` while torch imports, say),
Python prints "Exception ignored" and carries on: the interrupt is lost and the command would finish
and write its output. The handler here also records the signal, and :func:`check` raises it again at
the points that matter (before an output is renamed into place, before a command reports success).

Two moments are handled apart once the command installed the handler: while torch is imported
(:func:`deferred`: an import cut short can abort the process or leave a module that cannot load again,
so the interrupt is held and raised right after it), and after the output is in place (:func:`commit`:
the work is done and reported as done; a later signal is ignored).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

_received: int | None = None
_installed = False      # the command installed the handler (never for Python callers)
_holding = False        # inside deferred(): record, raise afterwards
_committed = False      # the output is in place: ignore further signals
_signums: tuple[int, ...] = ()


def received() -> int | None:
    """The signal number of the first interrupt received, or None."""
    return _received


def _handler(signum, frame):
    global _received
    if _committed:
        return
    if _received is None:
        _received = signum
    if not _holding:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred():
    """Hold an interrupt while the block runs (an import that must not be cut in half), then raise it."""
    global _holding
    if not _installed or _holding or threading.current_thread() is not threading.main_thread():
        yield
        return
    _holding = True
    try:
        yield
    finally:
        _holding = False
    check()


def commit() -> None:
    """Called just before an output is renamed into place: raise a pending interrupt now, or never (the
    command then finishes and reports what it wrote)."""
    global _committed
    check()
    _committed = _installed


def check() -> None:
    """Raise KeyboardInterrupt if an interrupt arrived, even one that something swallowed."""
    if _received is not None:
        raise KeyboardInterrupt


def _unraisable(hook):
    def quiet(unraisable):
        # A KeyboardInterrupt raised inside a finaliser: recorded by the handler, reported once by the CLI.
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and _received is not None:
            return
        hook(unraisable)

    return quiet


def install(*signums: int) -> None:
    """Route these signals (default SIGINT and SIGTERM) through the recording handler. Main thread only."""
    global _installed, _committed, _signums
    _signums = signums or (signal.SIGINT, signal.SIGTERM)
    for signum in _signums:
        signal.signal(signum, _handler)
    _installed, _committed = True, False
    if not getattr(sys.unraisablehook, "_modelport", False):
        hook = _unraisable(sys.unraisablehook)
        hook._modelport = True
        sys.unraisablehook = hook


def finish() -> None:
    """The command succeeded and said so: a signal from here on is ignored (Python's own shutdown would
    otherwise meet it with the default action and end a finished command as 'killed by SIGINT')."""
    if _installed and threading.current_thread() is threading.main_thread():
        for signum in _signums:
            signal.signal(signum, signal.SIG_IGN)


def exit_interrupted(message: str, now: bool = False) -> None:
    """Say ``message`` once on stderr and exit with 130 (``now``: at once, skipping clean-up handlers)."""
    import os

    try:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    except BaseException:      # a second Ctrl-C while printing still ends in 130
        pass
    if now:
        os._exit(130)
    raise SystemExit(130)


def install_early(message: str) -> None:
    """For the command line, before anything heavy is imported: a Ctrl-C from here on ends in exit 130 and
    ``message`` rather than a traceback, even while modules are still being imported."""
    install()
    hook = sys.excepthook

    def on_uncaught(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt) or _received is not None:
            exit_interrupted(message, now=True)
        hook(kind, value, tb)

    sys.excepthook = on_uncaught
