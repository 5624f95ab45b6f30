"""The layout registry: builders add themselves with :func:`register_layout` (timm's idea)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Meta = dict[str, dict[str, list[dict[str, Any]]]]
LayoutBuilder = Callable[..., Meta]

#: Layout name → builder, in registration order (the order the CLI and errors list them).
LAYOUTS: dict[str, LayoutBuilder] = {}


def register_layout(builder: LayoutBuilder) -> LayoutBuilder:
    """Decorator: add ``builder`` to :data:`LAYOUTS` under its function name.

    The builder takes the dataset root, keyword-only options (``strict_masks`` and its own, which
    :func:`tipsomaly.data.layouts.build_meta` checks against its signature) and returns a
    ``meta.json`` dict.

    Raises:
        ValueError: a layout of that name is already registered.
    """
    name = builder.__name__
    if name in LAYOUTS:
        raise ValueError(f"layout {name!r} is registered twice")
    LAYOUTS[name] = builder
    return builder
