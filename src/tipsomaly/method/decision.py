"""Decisions: the thresholds an image is judged by, and the one rule that judges it.

A :class:`Thresholds` holds a profile's calibrated thresholds (or an export's) per scoring mode
and kind (``"image"``: the image score, ``"pixel"``: the map), typed, so that no caller digs
through nested dicts. :func:`decide` is the rule everyone applies: an image is anomalous when
its score is at least the threshold (``score >= threshold``, the conformal calibration's own
convention), a pixel belongs to a defect when its map value is. ``predict``'s rows, the
service, the exported graph (on tensors) and :attr:`Prediction.is_anomalous
<tipsomaly.method.prediction.Prediction.is_anomalous>` all call it. Plain data: no torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .calibration import Calibration

__all__ = ["KINDS", "Thresholds", "decide"]

#: what a threshold applies to: the image score, or each pixel of the map
KINDS = ("image", "pixel")
_FIELDS = tuple(f.name for f in dataclasses.fields(Calibration))


def decide(score: Any, threshold: Any) -> Any:
    """``score >= threshold``: True = anomalous. None when there is no threshold or the score
    is not a finite number; on tensors or arrays, elementwise (the exported graph's rule)."""
    if threshold is None:
        return None
    if isinstance(score, (int, float)):
        return bool(score >= threshold) if math.isfinite(score) else None
    return score >= threshold


@dataclass(frozen=True)
class Thresholds:
    """Calibrated thresholds by mode and kind; ``get(mode, kind)`` is None where there is none
    (too few references to calibrate that mode)."""

    by_mode: Mapping[str, Mapping[str, Calibration | None]] = field(default_factory=dict)

    def get(self, mode: str, kind: str) -> Calibration | None:
        """The :class:`Calibration` of ``mode`` and ``kind`` (``"image"`` or ``"pixel"``)."""
        return self.by_mode.get(mode, {}).get(kind)

    def value(self, mode: str, kind: str) -> float | None:
        """The threshold itself, or None."""
        calib = self.get(mode, kind)
        return None if calib is None else calib.threshold

    def to_dict(self) -> dict[str, dict[str, dict | None]]:
        """As ``profile.json`` writes them: mode → kind → calibration record or null."""
        return {
            mode: {k: (c.to_dict() if c is not None else None) for k, c in kinds.items()}
            for mode, kinds in self.by_mode.items()
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Thresholds:
        """Read back :meth:`to_dict` (a record's extra keys, such as ``note``, ignored)."""
        return cls(
            {
                mode: {
                    kind: None if c is None else Calibration(**{k: c[k] for k in _FIELDS})
                    for kind, c in kinds.items()
                }
                for mode, kinds in record.items()
            }
        )
