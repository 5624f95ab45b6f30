"""The project's error base: every error that is the user's to fix derives from it.

Each concrete error also keeps its builtin base (``ValueError``, ``RuntimeError``, ``OSError``),
the scikit-learn ``NotFittedError(ValueError, AttributeError)`` pattern, so callers that catch
the builtin keep working. The CLI shows any :class:`TipsomalyError` as one line, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class TipsomalyError(Exception):
    """Base of every tipsomaly error a user can fix: bad input, bad option, missing file."""


class OutputError(TipsomalyError, OSError):
    """An output file or folder cannot be written (read-only folder, full disk, ...).

    Its message is ``cannot write PATH: reason``; results computed before it stay on disk.
    """

    def __init__(self, path: object, reason: object) -> None:
        self.path = str(path)
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        super().__init__(f"cannot write {self.path}: {text}")

    def __reduce__(self):  # picklable across worker processes
        return (OutputError, (self.path, self.args[0].split(": ", 1)[-1]))


class InvalidOptionError(TipsomalyError, ValueError):
    """An option or argument has a value that cannot work (nan, out of range, wrong kind).

    Raised by :mod:`tipsomaly.validation` before any work starts; the message names the option
    and says which values are accepted.
    """


class SetupMismatchError(TipsomalyError, ValueError):
    """Something fitted or exported with one setup (model, image size, tiling...) is used with
    another; the message names every setting that differs and what to do."""


class MissingExtraError(TipsomalyError, ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """``exc``'s message for a one-line error: its lines joined, cut to ``limit`` characters
    (its type's name when it has none)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def require(module: str, extra: str, purpose: str):  # -> ModuleType
    """``import module``, or :class:`MissingExtraError`: ``PURPOSE needs MODULE: pip install
    'tipsomaly[EXTRA]'``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs the Python package {module.split('.')[0]!r}, which is not "
            f"installed ({exc}): pip install 'tipsomaly[{extra}]'"
        ) from None


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class UnknownModelError(TipsomalyError, KeyError):
    """A model name is neither a known TIPS preset nor a model directory.

    A ``KeyError`` for callers that look presets up like a mapping; its ``str`` is the plain
    message (``KeyError`` would quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
