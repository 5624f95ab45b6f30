"""Thresholds from normal images only: the conformal quantile of calibration scores.

Given n scores of normal images that were *not* used to build what scores them (held out, or
left out one at a time), and a new normal image exchangeable with them, the
``k = ⌈(n+1)(1−α)⌉``-th smallest calibration score ``s_(k)`` satisfies
``P(new score > s_(k)) <= 1 − k/(n+1) <= α`` whatever the score's distribution (split conformal
prediction). With fewer than ``1/α − 1`` scores no order statistic reaches α: the largest
score is used and the rate it does guarantee, ``1/(n+1)``, is reported (never silently).

Thresholds here are applied as ``score >= threshold`` (as ``--image-threshold`` and masks
are), so the returned value is the next float above ``s_(k)``: exactly the scores above
``s_(k)`` are flagged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Calibration", "conformal_rank", "conformal_threshold", "pixel_threshold"]


@dataclass(frozen=True)
class Calibration:
    """A threshold and what it promises.

    ``threshold``: flag ``score >= threshold``. ``false_alarm_rate``: the α asked for;
    ``guaranteed_rate``: ``1 − k/(n+1)``, the bound that holds for exchangeable normal images
    (``<= α`` when ``attainable``). ``n`` calibration scores, ``k`` the rank used.
    """

    threshold: float
    false_alarm_rate: float
    guaranteed_rate: float
    n: int
    k: int
    attainable: bool

    @property
    def promised_rate(self) -> float:
        """The false-alarm rate this threshold promises: the rate asked for, or the larger one
        it could guarantee with too few calibration scores."""
        return max(self.false_alarm_rate, self.guaranteed_rate)

    @property
    def note(self) -> str:
        """One sentence for people: what the threshold guarantees."""
        if self.attainable:
            return (
                f"false-alarm rate <= {self.false_alarm_rate:g} on new normal images "
                f"(bound {self.guaranteed_rate:.4g}, from {self.n} calibration scores)"
            )
        return (
            f"{self.n} calibration score(s) cannot guarantee a false-alarm rate of "
            f"{self.false_alarm_rate:g} (needs at least {min_scores(self.false_alarm_rate)}); "
            f"the threshold is their maximum and guarantees {self.guaranteed_rate:.4g}"
        )

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "note": self.note}


def min_scores(alpha: float) -> int:
    """The fewest calibration scores for which some order statistic guarantees ``alpha``."""
    return max(1, math.ceil(1.0 / alpha - 1.0 - 1e-9))


def conformal_rank(n: int, alpha: float) -> int:
    """``k = ⌈(n+1)(1−α)⌉``, the 1-based rank of the calibration score to use (may be > n)."""
    if n < 1:
        raise ValueError("calibration needs at least one score")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"the false-alarm rate must be in (0, 1), got {alpha}")
    # the small tolerance keeps (n+1)(1−α) = 18.000000000000004 from becoming 19
    return max(1, math.ceil((n + 1) * (1.0 - alpha) - 1e-9))


def conformal_threshold(scores: np.ndarray | list[float], alpha: float) -> Calibration:
    """The conformal threshold of 1-D calibration ``scores`` at false-alarm rate ``alpha``.

    Raises:
        ValueError: no scores, a non-finite score, or ``alpha`` outside (0, 1).
    """
    s = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    if s.size == 0:
        raise ValueError("calibration needs at least one score")
    if not np.isfinite(s).all():
        raise ValueError("calibration scores must be finite")
    n = int(s.size)
    k = conformal_rank(n, alpha)
    attainable = k <= n
    k = min(k, n)
    return Calibration(
        threshold=float(np.nextafter(s[k - 1], np.inf)),
        false_alarm_rate=float(alpha),
        guaranteed_rate=1.0 - k / (n + 1),
        n=n,
        k=k,
        attainable=attainable,
    )


def pixel_threshold(top_values: np.ndarray, n_pixels: int, alpha: float) -> Calibration:
    """The conformal-style threshold over ``n_pixels`` calibration pixels at rate ``alpha``.

    ``top_values`` must hold (at least) the ``n_pixels − k + 1`` largest pixel values, where
    ``k = ⌈(n_pixels+1)(1−α)⌉`` (see :func:`pixels_to_keep`): pixels of one image are not
    exchangeable, so this is the rate on the calibration pixels, not a guarantee.
    The threshold is a float32 (maps are float32) just above the k-th smallest value.
    """
    if n_pixels < 1:
        raise ValueError("pixel calibration needs at least one pixel")
    k = conformal_rank(n_pixels, alpha)
    attainable = k <= n_pixels
    k = min(k, n_pixels)
    from_top = n_pixels - k  # 0-based rank from the largest
    v = np.sort(np.asarray(top_values, dtype=np.float32).reshape(-1))[::-1]
    if from_top >= v.size:
        raise ValueError(f"{v.size} top values given, {from_top + 1} needed")
    kth = v[from_top]
    return Calibration(
        threshold=float(np.nextafter(np.float32(kth), np.float32(np.inf))),
        false_alarm_rate=float(alpha),
        guaranteed_rate=1.0 - k / (n_pixels + 1),
        n=int(n_pixels),
        k=k,
        attainable=attainable,
    )


def pixels_to_keep(n_pixels: int, alpha: float) -> int:
    """How many of the largest pixel values :func:`pixel_threshold` needs."""
    k = min(conformal_rank(n_pixels, alpha), n_pixels)
    return n_pixels - k + 1
