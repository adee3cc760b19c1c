"""One family of errors for what the user can fix.

Anything raised as a :class:`ModelportError` reaches the user as one line on
stderr and a documented exit code; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

from contextvars import ContextVar

# Who is asking: "api" (Python callers) or "cli" (the modelport command). Messages that tell the user
# what to pass spell the option the way the caller passes it (``force=True`` or ``--force``).
SPELLING: ContextVar[str] = ContextVar("modelport_spelling", default="api")


def opt(name: str, value: str = "True", cli_value: str | None = None) -> str:
    """An option as the caller spells it: ``--assume-config`` on the command line, ``assume_config=True``
    from Python. ``name`` is the Python keyword, ``value`` its API value (a flag's is True), ``cli_value``
    the command line's placeholder when it differs (``config='config.json'`` vs ``--config FILE``)."""
    if SPELLING.get() == "cli":
        flag = "--" + name.replace("_", "-")
        shown = cli_value or ("" if value == "True" else value)
        return f"{flag} {shown}" if shown else flag
    return f"{name}={value}"


class ModelportError(Exception):
    """Something the user can fix: the message says what failed, where, and what to do."""

    exit_code = 2


class FormatError(ModelportError):
    """A file is unreadable, corrupt, truncated, or not of the format it claims."""


class UnsafeContentError(ModelportError):
    """A file asks to run or import code that modelport will not trust."""


class UnsupportedError(ModelportError):
    """A format, conversion, dtype or option that modelport cannot handle."""


class DestinationExistsError(ModelportError):
    """The output path exists and --force was not given, or it may not be replaced (see the message)."""


class OutputError(ModelportError):
    """The destination cannot be written: disk full, read-only, a parent that is a file, a system directory."""


class OverlapError(ModelportError):
    """The destination is the source, contains it, or lies inside it: writing would destroy the input."""


class ConfigNeededError(ModelportError):
    """A model config is needed and the weights alone cannot give the values that change its math."""


class MissingDependencyError(ModelportError, ImportError):
    """An optional package needed for this step is not installed."""


class LayoutError(ModelportError):
    """Tensor names or shapes do not fit the layout or architecture asked for."""


class DifferenceFound(ModelportError):
    """A comparison found a difference (diff, parity): exit 1."""

    exit_code = 1


def one_line(exc: BaseException, limit: int = 2000) -> str:
    """Another library's error as one line of text: its type and message, whitespace collapsed, bytes that
    are not UTF-8 replaced. Past ``limit`` characters it is cut with a pointer to ``--debug``, whose
    traceback carries the original exception in full."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a message that cannot even be made into text
        text = repr(exc.args)
    text = " ".join(text.encode("utf-8", "replace").decode("utf-8", "replace").split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if len(text) > limit:
        text = text[:limit] + " … (cut; --debug shows the whole message)"
    return text
