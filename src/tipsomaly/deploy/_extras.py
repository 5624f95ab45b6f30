"""Optional runtimes: import them on demand, or say which extra installs them."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from ..errors import TipsomalyError

__all__ = ["MissingExtraError", "available", "require"]


class MissingExtraError(TipsomalyError, ImportError):
    """An optional package is not installed; the message names the extra that brings it."""


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or :class:`MissingExtraError`: ``PURPOSE needs MODULE: pip install
    'tipsomaly[EXTRA]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs the Python package {module.split('.')[0]!r}, which is not "
            f"installed ({exc}): pip install 'tipsomaly[{extra}]'"
        ) from None
