"""What produced a score: the one record every output and every compatibility check is made of.

An :class:`Identity` names everything an image score and map depend on: the TIPS weights
(name and fingerprint), the model input size, the fixed prompts and the learned pixel prompts
(by digest), the map smoothing ``sigma``, the CLS token giving ``image_score``, the tiling and
the region of interest applied to every image. ``engine`` and ``precision`` say what ran it.

- ``profile.json`` (``identity``), ``export.json`` (``identity``), ``scores.json`` (``settings
  .identity``) and ``GET /v1/info`` (``identity``) write :meth:`Identity.to_dict`;
- "fitted with another setup" messages come from :func:`diff` alone, for a profile used by a
  detector, an export used with options, or a profile baked into an export;
- the prediction store of ``eval`` keys its rows on :func:`spec_id` of the files involved.

Untiled identities carry no ``tiling`` entry and images without a fixed ROI no ``roi`` entry,
so records written before those settings existed read back equal. Plain data: no torch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import fingerprint

logger = logging.getLogger(__name__)

__all__ = [
    "SCORING_KEYS",
    "Identity",
    "calibration_diff",
    "describe",
    "diff",
    "model_id",
    "spec_id",
]

#: the entries a score depends on: a profile or an export is used only where they are equal
SCORING_KEYS = ("model", "image_size", "prompts", "pixel_prompts", "sigma", "cls", "tiling", "roi")


@dataclass(frozen=True)
class Identity:
    """What produced a score (see the module doc); JSON-able through :meth:`to_dict`.

    ``model`` ``{"name", "fingerprint"}``; ``prompts`` ``{"name", "digest"}``;
    ``pixel_prompts`` ``{"source", "digest"}`` or None; ``tiling`` ``{"tile", "overlap"}`` or
    None; ``roi`` the digest of the ROI mask applied to every image, or None.
    """

    model: Mapping[str, Any]
    image_size: int
    prompts: Mapping[str, Any]
    pixel_prompts: Mapping[str, Any] | None
    sigma: float
    cls: str
    tiling: Mapping[str, Any] | None = None
    roi: str | None = None
    engine: str = "torch"
    precision: str = "fp32"

    def to_dict(self, keys: Iterable[str] | None = None) -> dict[str, Any]:
        """The record as JSON; ``keys`` limits it (default: every entry). ``tiling`` and
        ``roi`` are left out when None."""
        out = {}
        for key in keys if keys is not None else [f.name for f in dataclasses.fields(self)]:
            value = getattr(self, key)
            if key in ("tiling", "roi") and value is None:
                continue
            out[key] = dict(value) if isinstance(value, Mapping) else value
        return out

    def scoring(self) -> dict[str, Any]:
        """The :data:`SCORING_KEYS` entries (what ``profile.json`` records)."""
        return self.to_dict(SCORING_KEYS)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Identity:
        """An identity read back from a record written by :meth:`to_dict`."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


def describe(key: str, value: Any) -> str:
    """One entry of an identity (or of a settings record) for people: ``b14 (1a2b3c4d5e6f)``."""
    if value is None:
        return "none"
    if key == "tiling" and isinstance(value, Mapping):
        return f"tile {value.get('tile')}, overlap {value.get('overlap')}"
    if isinstance(value, Mapping) and "name" in value:
        return f"{value['name']} ({str(value.get('fingerprint') or value.get('digest'))[:12]})"
    if isinstance(value, Mapping) and "source" in value:
        return f"{value['source']} ({str(value.get('digest'))[:12]})"
    if key == "roi" and isinstance(value, str) and len(value) > 24:
        return f"mask {value[:12]}"
    return str(value)


def diff(
    recorded: Mapping[str, Any] | Identity,
    actual: Mapping[str, Any] | Identity,
    keys: Iterable[str] = SCORING_KEYS,
) -> list[str]:
    """The entries of ``keys`` where two records differ, each as ``"KEY RECORDED (this run:
    ACTUAL)"``; empty when they agree. A key missing from a record counts as None."""
    a = recorded.to_dict() if isinstance(recorded, Identity) else recorded
    b = actual.to_dict() if isinstance(actual, Identity) else actual
    return [
        f"{key} {describe(key, a.get(key))} (this run: {describe(key, b.get(key))})"
        for key in keys
        if _normal(a.get(key)) != _normal(b.get(key))
    ]


def calibration_diff(
    calibrated: Mapping[str, Any] | None, actual: Mapping[str, Any] | Identity
) -> list[str]:
    """Where thresholds calibrated on one engine's scores (``calibrated``: ``{"engine",
    "precision"}``, None: a torch fp32 fit) would be applied to ``actual``'s: :func:`diff` of
    ``engine`` and ``precision`` when either side is int8 (quantization moves the scores by
    more than a threshold's margin, each runtime its own way); fp32 and bf16 scores agree to
    the parity the tests hold, so their thresholds are shared as before."""
    recorded = dict(calibrated or {"engine": "torch", "precision": "fp32"})
    b = actual.to_dict() if isinstance(actual, Identity) else actual
    if "int8" not in (recorded.get("precision"), b.get("precision")):
        return []
    return diff(recorded, b, ("engine", "precision"))


def _normal(value: Any) -> Any:
    """JSON round-trip form: tuples are lists, ints that are floats compare equal."""
    if isinstance(value, Mapping):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# -- ids of files given by name (the prediction store's keys) --------------------------------------
def spec_id(spec: str | Path) -> str:
    """A name stays a name; a file becomes its path plus the SHA-256 of its bytes; a folder
    is a model folder (:func:`model_id`)."""
    path = Path(spec)
    if path.is_file():
        return f"{path.resolve()}#{fingerprint.file_digest(path)}"
    if path.is_dir():
        return model_id(spec)
    return str(spec)


def model_id(spec: str | Path) -> str:
    """A model as an id without loading it: a preset → its canonical name; a model directory →
    a digest over the bytes of every file in it and of every file its ``model.json`` names
    (wherever they are)."""
    from .tips.presets import get_preset, is_preset  # noqa: PLC0415 - presets sit above

    path = Path(spec)
    if not path.is_dir():
        if path.is_file():
            return spec_id(spec)
        return get_preset(str(spec)).name if is_preset(str(spec)) else str(spec)
    files = {p.resolve() for p in path.iterdir() if p.is_file()}
    try:
        from .tips.model import MODEL_FILE, read_model_description

        vision, text = read_model_description(path / MODEL_FILE)
        named = (vision.npz, text.npz, text.tokenizer)
        files |= {(path / n).resolve() for n in named if n and (path / n).is_file()}
    except Exception as exc:  # noqa: BLE001 - the loader reports a bad model.json itself
        logger.debug("model id of %s: %s", path, exc)
    # an unreadable file gets an id no readable one has: loading would fail; never reuse then
    return f"{path.resolve()}#{fingerprint.files_digest(files)}"
