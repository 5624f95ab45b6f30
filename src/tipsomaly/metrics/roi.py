"""Pixel metrics over a region of interest: the pixels outside it do not count, exactly."""

from __future__ import annotations

import logging

import numpy as np

from .pro import aupro_mvtec, aupro_zsad
from .ranking import ranking_metrics
from .regions import foreground_components

logger = logging.getLogger(__name__)


def roi_pixel_metrics(
    maps: np.ndarray, masks: np.ndarray, valid: np.ndarray, aupro: str = "zsad"
) -> dict[str, float]:
    """:func:`~tipsomaly.metrics.pixel_metrics` over the ``valid`` pixels only, exactly.

    AUROC, AP and F1-max rank the valid pixels' scores. AUPRO needs each defect region's
    pixels (the 8-connected regions of ``masks & valid``: the parts of defects inside the
    ROI) and the normal pixels' scores, not where the normal pixels are; so the valid pixels
    are laid out in one row, each region a run of its own pixels with a normal pixel between
    two regions, which the metrics label as the same regions, and that row is evaluated. It
    needs as many normal pixels as regions less one (else AUPRO is NaN, warned).

    maps, masks, valid: (n, H, W); returns the :func:`pixel_metrics` keys.
    """
    maps = np.asarray(maps)
    masks = np.asarray(masks).astype(bool)
    valid = np.asarray(valid).astype(bool)
    if not maps.shape == masks.shape == valid.shape:
        raise ValueError(f"maps {maps.shape}, masks {masks.shape}, valid {valid.shape} differ")
    scores = maps[valid]
    labels = masks[valid]
    ranked = ranking_metrics(scores, labels)
    out = {
        "pixel_auroc": ranked["auroc"],
        "pixel_ap": ranked["ap"],
        "pixel_aupro": float("nan"),
        "pixel_f1-max": ranked["f1-max"],
    }
    metric = aupro_zsad if aupro == "zsad" else aupro_mvtec
    laid = roi_layout(maps, masks, valid)
    if laid is not None:
        out["pixel_aupro"] = metric(laid[0][None, None], laid[1][None, None])
    return out


def roi_layout(
    maps: np.ndarray, masks: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """The valid pixels of (n, H, W) ``maps`` and ``masks`` laid out in one row for the AUPRO
    (see :func:`roi_pixel_metrics`): ``(scores, truth)``, 1-D, whose 8-connected runs of
    ``truth`` are the regions of ``masks & valid``; None (warned) with fewer normal pixels
    than regions less one."""
    maps = np.asarray(maps)
    masks = np.asarray(masks).astype(bool)
    valid = np.asarray(valid).astype(bool)
    scores = maps[valid]
    labels = masks[valid]
    inside = masks & valid
    component, count = foreground_components(inside)
    if not count:  # no region: the metric's own NaN and warning
        return scores, labels
    normal = scores[~labels]
    if normal.size < count - 1:
        logger.warning(
            "AUPRO over the ROI is undefined: %d defect regions but %d normal pixels",
            count,
            normal.size,
        )
        return None
    values = maps[inside]  # scan order, as ``component``
    order = np.argsort(component, kind="stable")
    sizes = np.bincount(component, minlength=count)
    # row: region 0, normal 0, region 1, normal 1, ..., region R-1, remaining normals
    row = np.empty(scores.size, dtype=scores.dtype)
    truth = np.zeros(scores.size, dtype=bool)
    at = 0
    starts = np.concatenate(([0], np.cumsum(sizes)))
    for r in range(count):
        k = int(sizes[r])
        row[at : at + k] = values[order[starts[r] : starts[r] + k]]
        truth[at : at + k] = True
        at += k
        if r < count - 1:
            row[at] = normal[r]
            at += 1
    row[at:] = normal[count - 1 :]
    return row, truth
