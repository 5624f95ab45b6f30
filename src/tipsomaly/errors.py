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
