"""The project's error base: every error that is the user's to fix derives from it.

Each concrete error also keeps its builtin base (``ValueError``, ``RuntimeError``, ``OSError``),
the scikit-learn ``NotFittedError(ValueError, AttributeError)`` pattern, so callers that catch
the builtin keep working. The CLI shows any :class:`TipsomalyError` as one line, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class TipsomalyError(Exception):
    """Base of every tipsomaly error a user can fix: bad input, bad option, missing file."""
