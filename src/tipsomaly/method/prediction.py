"""What the pipeline answers for one image: :class:`Prediction`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .decision import decide
from .defects import DefectRecord

__all__ = ["NON_FINITE", "Prediction"]

#: the error of an image whose score or map is not finite
NON_FINITE = "non-finite anomaly score: check the model weights and prompts"


@dataclass
class Prediction:
    """The answer for one image.

    ``image_score`` is the score of the detector's chosen CLS token (higher = more anomalous,
    in [0, 2]); ``anomaly_map`` is (S, S) float32 at model resolution and
    ``anomaly_map_original`` (H, W) at the image's original size. When the image could not be
    read, or its score or map is not finite (:data:`NON_FINITE`), ``error`` says why and the
    numbers are NaN / the maps ``None``.

    Decisions: ``threshold`` / ``pixel_threshold`` are the thresholds the image is judged by
    (given ones, else its class's profile's calibrated ones for ``mode``; None without
    either), ``threshold_source`` says which (``"given"``, ``"profile"``);
    :attr:`is_anomalous` is the decision and ``defects`` the defect records (regions of
    ``map >= pixel_threshold``; None without a pixel threshold).

    ``evidence`` splits the image score: ``global_cls1`` / ``global_cls2`` (the CLS tokens'
    abnormal evidence; tiled: the highest over the tiles scored) and ``local`` (the highest
    patch evidence; tiled: the stitched map's maximum; both only inside the ROI), so
    ``score_clsK = global_clsK + local``. ``tiles`` is the number of tiles scored (None
    untiled); ``roi`` the (H, W) bool ROI used (True = inspected), ``notes`` remarks such as a
    resized ROI mask.
    """

    source: str
    class_name: str
    image_score: float = float("nan")
    score_cls1: float = float("nan")
    score_cls2: float = float("nan")
    anomaly_map: np.ndarray | None = None
    anomaly_map_original: np.ndarray | None = None
    original_size: tuple[int, int] | None = None
    error: str | None = None
    mode: str = "zero-shot"
    threshold: float | None = None
    pixel_threshold: float | None = None
    threshold_source: str | None = None
    defects: list[DefectRecord] | None = None
    evidence: dict[str, float] | None = None
    tiles: int | None = None
    roi: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def is_anomalous(self) -> bool | None:
        """:func:`~tipsomaly.method.decision.decide` of the image score and ``threshold``:
        None without a threshold or a score."""
        return decide(self.image_score, self.threshold) if self.ok else None

    def to_dict(self) -> dict[str, Any]:
        """Scores, decision and defect records as JSON (no maps)."""
        return {
            "source": self.source,
            "class_name": self.class_name,
            "image_score": self.image_score if self.ok else None,
            "score_cls1": self.score_cls1 if self.ok else None,
            "score_cls2": self.score_cls2 if self.ok else None,
            "mode": self.mode,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "pixel_threshold": self.pixel_threshold,
            "is_anomalous": self.is_anomalous,
            "defects": None if self.defects is None else [d.to_dict() for d in self.defects],
            "tiles": self.tiles,
            "notes": list(self.notes),
            "error": self.error,
        }
