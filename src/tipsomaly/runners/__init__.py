"""Whole jobs as library calls, one module per CLI verb (e.g. :mod:`.predict`'s ``run_predict``).

Nothing is imported eagerly, so importing one runner does not load the others.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("run_predict", "PredictSummary", "NoInputsError"):
        from . import predict

        return getattr(predict, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
