"""The reports' plots as PNG bytes: matplotlib's Agg canvas, no display, no pyplot state.

matplotlib is the optional ``report`` extra: :func:`need_matplotlib` raises the one-line
:class:`~tipsomaly.errors.MissingExtraError` naming it (the CLI calls it before any work).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import require

#: what the message of a missing matplotlib says the report is
PURPOSE = "the HTML report (--no-report skips it)"
#: colours of the reports (CSS uses the same)
ANOMALOUS, NORMAL, UNDECIDED, LINE = "#d9480f", "#2b8a3e", "#868e96", "#1864ab"
#: the dashed threshold lines, one colour per class
THRESHOLD_COLOURS = ("#212529", "#7048e8", "#1098ad", "#e64980", "#f08c00", "#5c940d")


def need_matplotlib() -> Any:
    """The ``matplotlib`` module, or :class:`~tipsomaly.errors.MissingExtraError` naming the
    ``report`` extra."""
    return require("matplotlib", "report", PURPOSE)


def _figure(width: float, height: float, margins: tuple[float, float, float, float]) -> Any:
    """A figure of ``width`` x ``height`` inches with fixed ``margins`` (left, bottom, right,
    top, in inches): a layout engine would draw the figure twice."""
    need_matplotlib()
    from matplotlib.figure import Figure  # Figure + its Agg canvas: no pyplot, thread-safe

    fig = Figure(figsize=(width, height), dpi=100)
    left, bottom, right, top = margins
    fig.subplots_adjust(
        left=left / width, bottom=bottom / height, right=1 - right / width, top=1 - top / height
    )
    return fig


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def histogram(
    groups: Sequence[tuple[str, np.ndarray, str]],
    thresholds: Sequence[tuple[str, float]] = (),
    *,
    xlabel: str = "image score",
    title: str = "",
    size: tuple[float, float] = (7.0, 2.8),
) -> bytes:
    """A stacked histogram of 1-D score ``groups`` ``(label, scores, colour)`` with dashed
    vertical lines at ``thresholds`` ``(label, value)``; PNG bytes."""
    fig = _figure(*size, (0.7, 0.55, 0.15, 0.35 if title else 0.15))
    ax = fig.add_subplot()
    values = [np.asarray(v, dtype=np.float64) for _, v, _ in groups]
    shown = [(label, v, c) for (label, _, c), v in zip(groups, values, strict=True) if v.size]
    every = np.concatenate([v for _, v, _ in shown]) if shown else np.zeros(0)
    lines = [(label, t) for label, t in thresholds if t is not None and math.isfinite(t)]
    ends = [t for _, t in lines] + ([float(every.min()), float(every.max())] if every.size else [])
    low, high = (min(ends), max(ends)) if ends else (0.0, 1.0)
    if high - low < 1e-3:  # one score, or all equal: a visible bar around them
        low, high = low - 0.05, high + 0.05
    bins = np.linspace(low, high, max(10, min(60, int(math.sqrt(max(1, every.size))) * 3)))
    base = np.zeros(bins.size - 1)
    for label, v, colour in shown:  # stacked; stairs: one artist per group, fast to draw
        counts = np.histogram(v, bins)[0] + base
        ax.stairs(counts, bins, baseline=base, fill=True, color=colour, label=f"{label} ({v.size})")
        base = counts
    ax.set_ylim(0, max(1.0, float(base.max())) * 1.1)
    for i, (label, t) in enumerate(lines):
        colour = THRESHOLD_COLOURS[i % len(THRESHOLD_COLOURS)]
        ax.axvline(t, color=colour, linestyle=(0, (4, 2)), linewidth=1.4, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    if title:
        ax.set_title(title, fontsize=10)
    if shown or lines:
        ax.legend(fontsize=8, loc="upper right", framealpha=0.8)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def curve(
    x: np.ndarray,
    y: np.ndarray,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    xmax: float = 1.0,
    diagonal: bool = False,
    size: tuple[float, float] = (3.4, 3.0),
) -> bytes:
    """A step-free polyline ``(x, y)`` in ``[0, xmax] x [0, 1]`` (a chance diagonal with
    ``diagonal``); PNG bytes. An empty curve draws the axes and "undefined"."""
    fig = _figure(*size, (0.65, 0.55, 0.15, 0.3))
    ax = fig.add_subplot()
    if diagonal:
        ax.plot([0, xmax], [0, xmax], color="#adb5bd", linewidth=0.8, linestyle="--")
    if len(x):
        ax.plot(x, y, color=LINE, linewidth=1.6)
    else:
        ax.text(0.5, 0.5, "undefined", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(-0.01 * xmax, 1.01 * xmax)  # a curve along an axis stays visible
    ax.set_ylim(-0.01, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _png(fig)
