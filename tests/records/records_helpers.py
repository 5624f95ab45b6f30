"""Helpers of the records tests."""

from __future__ import annotations


def record(**fields) -> dict:
    """A record as serve writes one (the fields given replace the defaults)."""
    base = {
        "source": "serve",
        "image_sha256": "ab" * 32,
        "class_name": "tile",
        "mode": "fused",
        "image_score": 0.5,
        "threshold": 0.8,
        "threshold_source": "profile",
        "pixel_threshold": 0.4,
        "is_anomalous": False,
        "defects": [],
        "identity": {"model": {"name": "tiny"}},
        "profile_id": "p1",
        "profile_version": 1,
    }
    return {**base, **fields}
