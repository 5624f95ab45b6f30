"""A class's profile: what its normal images look like, and thresholds calibrated on them.

:meth:`Profile.fit` turns a few known-good images of one class into

- a :class:`~tipsomaly.method.memory_bank.ReferenceBank`: L2-normalised patch and CLS tokens
  of the references (optionally of their 8 flips/rotations), the patch bank reduced by a
  greedy k-centre coreset above ``max_bank`` entries;
- thresholds for each scoring mode (zero-shot, few-shot, fused), calibrated by leave-one-out:
  each reference is scored against the bank without it (every view of it removed), and the
  image threshold is the conformal quantile of those scores
  (:func:`~tipsomaly.method.calibration.conformal_threshold`). Scores against a bank missing
  one reference run a little higher than a new image's against the whole bank, so the rate
  on new normal images is at most the stated one (conservative).

On disk a profile is a folder: ``profile.json`` (class, counts, settings, thresholds,
versions, the bank file's SHA-256) and ``bank.safetensors`` (the tensors). A profile records
the identity of the detector that fitted it (model fingerprint, image size, prompts, pixel
prompts, sigma, CLS token, and the tiling when it tiles); :meth:`Profile.check_compatible`
refuses another.

Tiles: a tiling detector (``Detector(tile=...)``) fits its references tile by tile: the bank
holds every tile's patch and CLS tokens (each tagged with its reference, so leave-one-out
leaves all of a reference's tiles out), and calibration scores each reference as a tiled
prediction scores an image (blended map, ``max tile CLS evidence + max map``), over a second
pass of the references. Such a profile records the tiling and is used with the same tiling.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import TipsomalyError
from ..fingerprint import digest, file_digest, prompts_digest, tensor_digest, tensors_digest
from ..tips.vision import VisionFeatures
from .calibration import Calibration, conformal_threshold, pixel_threshold, pixels_to_keep
from .config import (
    DEFAULT_FALSE_ALARM_RATE,
    DEFAULT_MAX_BANK,
    DEFAULT_MODE,
    DEFAULT_PIXEL_FALSE_ALARM_RATE,
    MODES,
)
from .memory_bank import MemoryBank, ReferenceBank, greedy_coreset

if TYPE_CHECKING:
    from .detector import Detector

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FALSE_ALARM_RATE",
    "DEFAULT_MAX_BANK",
    "DEFAULT_PIXEL_FALSE_ALARM_RATE",
    "PROFILE_FORMAT",
    "NotCalibratedError",
    "Profile",
    "ProfileError",
    "ProfileMismatchError",
    "detector_identity",
    "load_profiles",
    "profile_digest",
    "read_record",
]

PROFILE_FORMAT = "tipsomaly-profile-1"
PROFILE_JSON, BANK_FILE = "profile.json", "bank.safetensors"
#: the identity entries a profile must share with the detector that uses it
IDENTITY_KEYS = ("model", "image_size", "prompts", "pixel_prompts", "sigma", "cls", "tiling")


class ProfileError(TipsomalyError, ValueError):
    """A profile cannot be fitted, read or used (the message names the folder or file)."""


class ProfileMismatchError(ProfileError):
    """A profile used with a detector set up differently from the one that fitted it."""


class NotCalibratedError(ProfileError):
    """A profile has no threshold for a mode (too few references to leave one out)."""


def detector_identity(detector: Detector) -> dict[str, Any]:
    """What a profile's numbers depend on, as JSON: model, size, prompts, pixel prompts…"""
    model = detector.model
    fingerprint = model.fingerprint or tensors_digest(model.state_dict())
    pixel = detector.pixel_prompts
    identity: dict[str, Any] = {
        "model": {"name": model.name, "fingerprint": fingerprint},
        "image_size": detector.image_size,
        "prompts": {"name": detector.prompts.name, "digest": prompts_digest(detector.prompts)},
        "pixel_prompts": None
        if pixel is None
        else {
            "source": pixel.metadata.get("source", "given"),
            "digest": tensor_digest(pixel.preambles),
        },
        "sigma": detector.sigma,
        "cls": detector.cls,
    }
    tiling = getattr(detector, "tiling", None)
    if tiling is not None:  # untiled identities stay as they were (and their digests)
        identity["tiling"] = dict(tiling)
    return identity


def _describe(key: str, value: Any) -> str:
    if key == "tiling":
        return "none" if value is None else f"tile {value['tile']}, overlap {value['overlap']}"
    if isinstance(value, dict) and "name" in value:
        return f"{value['name']} ({str(value.get('fingerprint') or value.get('digest'))[:12]})"
    if isinstance(value, dict) and "source" in value:
        return f"{value['source']} ({str(value['digest'])[:12]})"
    return "none" if value is None else str(value)


@dataclass
class Profile:
    """One class's normal references and calibrated thresholds (see the module doc).

    Attributes:
        class_name: what the references show.
        bank: the references' features (:class:`ReferenceBank`).
        identity: :func:`detector_identity` of the detector that fitted it.
        thresholds: per mode, ``{"image": Calibration | None, "pixel": Calibration | None}``.
        info: counts, references, bank sizes, versions (``profile.json`` entries).
        mode: the mode a detector uses by default with this profile (``"fused"``).
        path: the folder it was loaded from or saved to, if any.
    """

    class_name: str
    bank: ReferenceBank
    identity: dict[str, Any]
    thresholds: dict[str, dict[str, Calibration | None]]
    info: dict[str, Any] = field(default_factory=dict)
    mode: str = DEFAULT_MODE
    path: Path | None = None

    # -- use -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else f"profile of {self.class_name!r}"

    def image_threshold(self, mode: str | None = None) -> float:
        """The calibrated image-score threshold of ``mode`` (flag ``score >= threshold``).

        Raises:
            NotCalibratedError: too few references to calibrate that mode.
        """
        return self._threshold(mode, "image")

    def pixel_threshold(self, mode: str | None = None) -> float:
        """The calibrated pixel threshold of ``mode`` for masks (flag ``map >= threshold``)."""
        return self._threshold(mode, "pixel")

    def _threshold(self, mode: str | None, kind: str) -> float:
        mode = mode or self.mode
        calib = self.thresholds.get(mode, {}).get(kind)
        if calib is None:
            n = self.info.get("references", {}).get("used", "too few")
            raise NotCalibratedError(
                f"{self.name}: no {kind} threshold for mode {mode}: {n} reference image(s); "
                "the few-shot modes need at least 2 (each is scored without itself)"
            )
        return calib.threshold

    def check_compatible(self, detector: Detector) -> None:
        """Refuse a detector set up differently from the one that fitted this profile.

        Raises:
            ProfileMismatchError: naming every setting that differs.
        """
        mine, theirs = self.identity, detector_identity(detector)
        diffs = [
            f"{key} {_describe(key, mine.get(key))} (this run: {_describe(key, theirs.get(key))})"
            for key in IDENTITY_KEYS
            if mine.get(key) != theirs.get(key)
        ]
        if diffs:
            raise ProfileMismatchError(
                f"{self.name} was fitted with another setup: {'; '.join(diffs)}. Use the "
                "profile's settings or fit a new profile"
            )

    # -- fit --------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        detector: Detector,
        images: Iterable[str | os.PathLike | Any],
        class_name: str,
        *,
        false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
        pixel_false_alarm_rate: float = DEFAULT_PIXEL_FALSE_ALARM_RATE,
        augment: bool = False,
        max_bank: int = DEFAULT_MAX_BANK,
        calibrate: bool = True,
        seed: int = 0,
        batch_size: int | None = None,
        on_error: str = "record",
        progress: Callable[[int], None] | None = None,
    ) -> Profile:
        """Fit a profile of ``class_name`` from normal ``images`` (paths, PIL images, arrays).

        Args:
            detector: the detector whose model, prompts and settings the profile is for.
            false_alarm_rate: α of the image thresholds, in (0, 1).
            pixel_false_alarm_rate: α of the pixel thresholds over calibration pixels.
            augment: add each reference's 8 flips and 90° rotations to the bank.
            max_bank: patch entries above which the bank is a greedy k-centre coreset of
                this many.
            calibrate: compute thresholds (``False``: a bank only, e.g. for ``eval --shots``).
            seed: seed of the coreset's random start and projection.
            on_error: ``"record"`` (an unreadable reference is logged, listed in ``info`` and
                left out) or ``"raise"``.
            progress: called with the number of references read after each batch.

        Raises:
            ProfileError: no reference could be read.
        """
        from ..validation import in_range, positive_int

        in_range(false_alarm_rate, "false_alarm_rate", 0, 1, low_open=True, high_open=True)
        in_range(
            pixel_false_alarm_rate, "pixel_false_alarm_rate", 0, 1, low_open=True, high_open=True
        )
        positive_int(max_bank, "max_bank")
        if on_error not in ("raise", "record"):
            raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}")
        batch = batch_size or detector.batch_size
        images = list(images)  # tiled calibration reads them a second time
        refs = _encode_references(detector, images, class_name, batch, augment, on_error, progress)
        if not refs.sources:
            failed = "; ".join(f"{s}: {e}" for s, e in refs.failed[:3])
            raise ProfileError(
                f"no reference image of {class_name!r} could be used"
                + (f" ({len(refs.failed)} unreadable: {failed})" if refs.failed else "")
            )
        n = len(refs.sources)
        patches = torch.cat(refs.patches)
        patch_sources = torch.cat(refs.patch_sources)
        before = int(patches.shape[0])
        if before > max_bank:
            logger.info("coreset: %d of %d patch features (greedy k-centre)", max_bank, before)
            keep = greedy_coreset(patches, max_bank, seed=seed)
            patches, patch_sources = patches[keep], patch_sources[keep]
        device = detector.device
        bank = ReferenceBank(
            MemoryBank(patches.to(device), patch_sources.to(device)),
            MemoryBank(torch.cat(refs.cls1).to(device), torch.cat(refs.cls_sources).to(device)),
            MemoryBank(torch.cat(refs.cls2).to(device), torch.cat(refs.cls_sources).to(device)),
        )
        info = {
            "settings": dict(detector.spec),
            "references": {
                "used": n,
                "failed": len(refs.failed),
                "views_per_image": 8 if augment else 1,
                "sources": refs.sources,
                "errors": [{"path": s, "error": e} for s, e in refs.failed],
            },
            "bank": {
                "patches": len(bank.patches),
                "patches_before_coreset": before,
                "max_bank": int(max_bank),
                "coreset": before > max_bank,
                "seed": int(seed),
                "augment": bool(augment),
            },
        }
        profile = cls(
            class_name=class_name,
            bank=bank,
            identity=detector_identity(detector),
            thresholds={mode: {"image": None, "pixel": None} for mode in MODES},
            info=info,
        )
        if getattr(detector, "tiling", None) is not None:
            info["bank"]["tiles"] = refs.tiles
        if calibrate:
            calibrate_fn = _calibrate if detector.tile is None else _calibrate_tiled
            profile.thresholds = calibrate_fn(
                detector, profile, refs, false_alarm_rate, pixel_false_alarm_rate, batch
            )
            info["calibration"] = {
                "method": "leave-one-out" if n >= 2 else "zero-shot only (1 reference)",
                "false_alarm_rate": false_alarm_rate,
                "pixel_false_alarm_rate": pixel_false_alarm_rate,
                "scores": refs.calibration_scores,
            }
        return profile

    # -- files ------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``profile.json`` and ``bank.safetensors`` into ``folder`` (created); each
        file is written under a temporary name and renamed, the JSON last."""
        from safetensors.torch import save_file

        from .. import __version__

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {
            "patches": self.bank.patches.features,
            "patch_sources": self.bank.patches.sources.to(torch.int32),
            "cls1": self.bank.cls1.features,
            "cls2": self.bank.cls2.features,
            "cls_sources": self.bank.cls1.sources.to(torch.int32),
        }
        tmp = out / f".{BANK_FILE}.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, out / BANK_FILE)
        record = {
            "format": PROFILE_FORMAT,
            "class_name": self.class_name,
            "mode": self.mode,
            "identity": self.identity,
            "thresholds": {
                mode: {k: (c.to_dict() if c is not None else None) for k, c in kinds.items()}
                for mode, kinds in self.thresholds.items()
            },
            "fusion": (
                "evidence in [0, 1] per patch and per CLS token: zero-shot = abnormal "
                "probability against the class prompts; few-shot = (1 - cosine to the nearest "
                "reference) / 2; fused = their mean. map = smoothed upsampled patch evidence; "
                "image score = global (CLS) evidence + max patch evidence, in [0, 2]"
            ),
            **self.info,
            "bank_file": {"name": BANK_FILE, "sha256": file_digest(out / BANK_FILE)},
            "versions": {"tipsomaly": __version__, "torch": torch.__version__},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        tmp = out / f".{PROFILE_JSON}.tmp"
        tmp.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, out / PROFILE_JSON)
        self.path = out
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> Profile:
        """Read a profile folder written by :meth:`save`.

        Raises:
            ProfileError: a missing, unreadable, altered or malformed file (named).
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        if folder.is_file() and folder.name == PROFILE_JSON:
            folder = folder.parent
        record = read_record(folder)
        bank_path = folder / BANK_FILE
        try:
            actual = file_digest(bank_path)
        except OSError as exc:
            raise ProfileError(
                f"{bank_path}: cannot read the profile's bank ({exc.strerror or exc})"
            ) from None
        if actual != record["bank_file"]["sha256"]:
            raise ProfileError(
                f"{bank_path}: the bank file is damaged or was replaced (its SHA-256 differs "
                f"from the one in {PROFILE_JSON}); fit the profile again"
            )
        try:
            t = load_file(str(bank_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ProfileError(f"{bank_path}: unreadable bank ({_one_line(exc)})") from None
        bank = _bank_from_tensors(t, bank_path, torch.device(device))
        thresholds = {
            mode: {
                kind: None if c is None else Calibration(**{k: c[k] for k in _CALIB_FIELDS})
                for kind, c in record["thresholds"].get(mode, {}).items()
            }
            for mode in MODES
        }
        info = {k: v for k, v in record.items() if k not in _RECORD_OWN}
        return cls(
            class_name=record["class_name"],
            bank=bank,
            identity=record["identity"],
            thresholds=thresholds,
            info=info,
            mode=record.get("mode", DEFAULT_MODE),
            path=folder,
        )


_CALIB_FIELDS = tuple(f.name for f in dataclasses.fields(Calibration))
_RECORD_OWN = {"format", "class_name", "mode", "identity", "thresholds", "fusion"}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_record(folder: str | os.PathLike) -> dict[str, Any]:
    """``profile.json`` of a profile folder, checked against its schema (no bank read).

    Raises:
        ProfileError: no such profile, or an unreadable or malformed ``profile.json``.
    """
    folder = Path(folder)
    if folder.is_file() and folder.name == PROFILE_JSON:
        folder = folder.parent
    meta_path = folder / PROFILE_JSON
    if not meta_path.is_file():
        what = (
            "does not exist"
            if not folder.exists()
            else f"is not a profile folder (no {PROFILE_JSON})"
        )
        raise ProfileError(f"{folder} {what}; fit a profile with `tipsomaly fit`")
    try:
        record = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProfileError(f"{meta_path}: unreadable profile ({_one_line(exc)})") from None
    _check_record(record, meta_path)
    return record


def _check_record(record: object, path: Path) -> None:
    """The schema of ``profile.json``: one line naming the first problem."""

    def bad(what: str) -> ProfileError:
        return ProfileError(f"{path}: not a valid profile: {what}")

    if not isinstance(record, dict):
        raise bad("not a JSON object")
    if record.get("format") != PROFILE_FORMAT:
        raise bad(f"format {record.get('format')!r}, expected {PROFILE_FORMAT!r}")
    if not isinstance(record.get("class_name"), str) or not record["class_name"]:
        raise bad("class_name must be a non-empty string")
    if record.get("mode", DEFAULT_MODE) not in MODES:
        raise bad(f"mode must be one of {', '.join(MODES)}")
    if not isinstance(record.get("identity"), dict):
        raise bad("identity must be an object")
    if not isinstance(record.get("bank_file"), dict) or not isinstance(
        record["bank_file"].get("sha256"), str
    ):
        raise bad("bank_file.sha256 missing")
    thresholds = record.get("thresholds")
    if not isinstance(thresholds, dict):
        raise bad("thresholds must be an object")
    for mode, kinds in thresholds.items():
        if mode not in MODES or not isinstance(kinds, dict):
            raise bad(f"thresholds.{mode}: unknown mode or not an object")
        for kind, c in kinds.items():
            if c is None:
                continue
            if not isinstance(c, dict) or any(k not in c for k in _CALIB_FIELDS):
                raise bad(f"thresholds.{mode}.{kind}: needs {', '.join(_CALIB_FIELDS)}")
            t = c["threshold"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
                raise bad(f"thresholds.{mode}.{kind}.threshold must be a finite number")


def _bank_from_tensors(
    t: dict[str, torch.Tensor], path: Path, device: torch.device
) -> ReferenceBank:
    need = ("patches", "patch_sources", "cls1", "cls2", "cls_sources")
    missing = [k for k in need if k not in t]
    if missing:
        raise ProfileError(f"{path}: bank lacks {', '.join(missing)}")
    p, c1, c2 = t["patches"], t["cls1"], t["cls2"]
    if p.ndim != 2 or c1.ndim != 2 or c2.shape != c1.shape or p.shape[1] != c1.shape[1]:
        raise ProfileError(f"{path}: bank tensors of inconsistent shapes")
    if t["patch_sources"].shape != (p.shape[0],) or t["cls_sources"].shape != (c1.shape[0],):
        raise ProfileError(f"{path}: bank sources do not match the features")
    for k in ("patches", "cls1", "cls2"):
        if not torch.isfinite(t[k]).all():
            raise ProfileError(f"{path}: non-finite values in the bank's {k}")
    try:
        return ReferenceBank(
            MemoryBank(p.to(device), t["patch_sources"].to(device), normalized=True),
            MemoryBank(c1.to(device), t["cls_sources"].to(device), normalized=True),
            MemoryBank(c2.to(device), t["cls_sources"].to(device), normalized=True),
        )
    except ValueError as exc:
        raise ProfileError(f"{path}: {exc}") from None


# -- fitting internals -----------------------------------------------------------------------
@dataclass
class _References:
    """What one pass over the references collects (CPU, fp32)."""

    sources: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    patches: list[torch.Tensor] = field(default_factory=list)  # (views·N, D) per batch
    patch_sources: list[torch.Tensor] = field(default_factory=list)
    cls1: list[torch.Tensor] = field(default_factory=list)
    cls2: list[torch.Tensor] = field(default_factory=list)
    cls_sources: list[torch.Tensor] = field(default_factory=list)
    originals: list[VisionFeatures] = field(default_factory=list)  # un-augmented views
    calibration_scores: dict[str, list[float]] = field(default_factory=dict)
    inputs: list[Any] = field(default_factory=list)  # tiled: the images used, read again
    tiles: int = 0  # tiled: tiles encoded (un-augmented)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # tiled: (H, W) of each


def dihedral_views(images: torch.Tensor) -> list[torch.Tensor]:
    """(B, 3, S, S) → the 8 flips and 90° rotations, the images themselves first."""
    views = []
    for flipped in (images, images.flip(-1)):
        views.extend(torch.rot90(flipped, k, dims=(-2, -1)) for k in range(4))
    return views


def _encode_references(
    detector: Detector,
    images: Iterable[Any],
    class_name: str,
    batch: int,
    augment: bool,
    on_error: str,
    progress: Callable[[int], None] | None,
) -> _References:
    from ..data.images import ImageLoadError
    from .tiling import crop_tiles

    refs = _References()
    pending: list[torch.Tensor] = []

    def encode(x: torch.Tensor, index: torch.Tensor, keep_originals: bool) -> None:
        """(b, 3, S, S) images of the references ``index`` (b,) into the bank lists."""
        b = x.shape[0]
        x = x.to(detector.device)
        views = dihedral_views(x) if augment else [x]
        per_forward = max(1, batch // b) if augment else 1
        for v in range(0, len(views), per_forward):
            chunk = torch.cat(views[v : v + per_forward])
            with torch.no_grad():
                f = detector.model.encode_image(chunk)
            reps = chunk.shape[0] // b
            src = index.repeat(reps)
            n_patch = f.patches.shape[1]
            refs.patches.append(f.patches.reshape(-1, f.patches.shape[-1]).float().cpu())
            refs.patch_sources.append(src.repeat_interleave(n_patch))
            refs.cls1.append(f.cls1[:, 0].float().cpu())
            refs.cls2.append(f.cls2[:, 0].float().cpu())
            refs.cls_sources.append(src)
            if v == 0 and keep_originals:  # the un-augmented images come first
                refs.originals.append(
                    VisionFeatures(
                        f.cls1[:b].float().cpu(),
                        f.cls2[:b].float().cpu(),
                        f.patches[:b].float().cpu(),
                    )
                )

    def flush() -> None:
        first = len(refs.sources) - len(pending)
        encode(torch.stack(pending), torch.arange(first, first + len(pending)), True)
        pending.clear()
        if progress is not None:
            progress(len(refs.sources))

    tiled = detector.tile is not None
    lookahead = 1 if tiled else 2 * batch
    for position, item in enumerate(detector.load_images(images, class_name, lookahead)):
        if item.error is not None:
            if on_error == "raise":
                raise ImageLoadError(item.source, item.error or "unreadable")
            logger.warning("reference %s left out: %s", item.source, item.error)
            refs.failed.append((item.source, item.error or "unreadable"))
            continue
        refs.sources.append(item.source)
        if not tiled:
            pending.append(item.tensor)
            if len(pending) >= batch:
                flush()
            continue
        # tiled: every tile of the reference, tagged with the reference's index
        refs.inputs.append(images[position])
        assert item.original_size is not None
        refs.sizes.append(item.original_size)
        grid = detector.tile_grid(item.original_size)
        index = len(refs.sources) - 1
        for start in range(0, len(grid.boxes), batch):
            boxes = grid.boxes[start : start + batch]
            x = crop_tiles(item.image, boxes, detector.image_size)
            encode(x, torch.full((len(boxes),), index, dtype=torch.long), False)
            refs.tiles += len(boxes)
        if progress is not None:
            progress(len(refs.sources))
    if pending:
        flush()
    return refs


def _calibrate(
    detector: Detector,
    profile: Profile,
    refs: _References,
    alpha: float,
    pixel_alpha: float,
    batch: int,
) -> dict[str, dict[str, Calibration | None]]:
    """Leave-one-out scores of every reference in every mode → thresholds per mode."""
    n = len(refs.sources)
    size = (detector.image_size, detector.image_size)
    modes = MODES if n >= 2 else ("zero-shot",)
    if n < 2:
        logger.warning(
            "1 reference image: the few-shot and fused thresholds need at least 2 (each is "
            "scored against a bank without it); only zero-shot is calibrated"
        )
    n_pixels = n * size[0] * size[1]
    keep = pixels_to_keep(n_pixels, pixel_alpha)
    scores: dict[str, list[float]] = {m: [] for m in modes}
    tops: dict[str, torch.Tensor] = {m: torch.empty(0) for m in modes}
    head, _ = detector.head_for([profile.class_name])
    class_text = head.class_text[:1]
    start = 0
    for original in refs.originals:
        b = original.patches.shape[0]
        f = VisionFeatures(*(t.to(detector.device) for t in original))
        exclude = torch.arange(start, start + b, device=detector.device)
        start += b
        with torch.no_grad():
            zs = head.score_features(f, class_text.expand(b, -1, -1), size)
            distances = profile.bank(f, exclude) if n >= 2 else None
            for mode in modes:
                s = zs if mode == "zero-shot" else head.fuse(zs, distances, size, mode)
                image = s.score_cls1 if detector.cls == "cls1" else s.score_cls2
                scores[mode].extend(float(v) for v in image.cpu())
                flat = torch.cat([tops[mode], s.maps.float().reshape(-1).cpu()])
                tops[mode] = torch.topk(flat, min(keep, flat.numel())).values
    refs.calibration_scores = scores
    out: dict[str, dict[str, Calibration | None]] = {}
    for mode in MODES:
        if mode not in scores:
            out[mode] = {"image": None, "pixel": None}
            continue
        image = conformal_threshold(np.asarray(scores[mode]), alpha)
        if not image.attainable and mode == modes[0]:  # n is the same in every mode
            logger.warning("%s: %s", profile.class_name, image.note)
        pixel = pixel_threshold(tops[mode].numpy(), n_pixels, pixel_alpha)
        out[mode] = {"image": image, "pixel": pixel}
    return out


def _calibrate_tiled(
    detector: Detector,
    profile: Profile,
    refs: _References,
    alpha: float,
    pixel_alpha: float,
    batch: int,
) -> dict[str, dict[str, Calibration | None]]:
    """:func:`_calibrate` for a tiling detector: each reference read again and scored as a
    tiled prediction (:meth:`Detector.tiled_evidence`) against the bank without its own
    tiles, in every mode from one forward pass per batch of tiles."""
    n = len(refs.sources)
    size = (detector.image_size, detector.image_size)
    modes = MODES if n >= 2 else ("zero-shot",)
    if n < 2:
        logger.warning(
            "1 reference image: the few-shot and fused thresholds need at least 2 (each is "
            "scored against a bank without it); only zero-shot is calibrated"
        )
    head, _ = detector.head_for([profile.class_name])
    class_text = head.class_text[:1]
    n_pixels = sum(h * w for h, w in refs.sizes)
    keep = pixels_to_keep(n_pixels, pixel_alpha)
    scores: dict[str, list[float]] = {m: [] for m in modes}
    tops: dict[str, torch.Tensor] = {m: torch.empty(0) for m in modes}
    items = detector.load_images(refs.inputs, profile.class_name, lookahead=1)
    for index, item in enumerate(items):
        if item.error is not None or item.source != refs.sources[index]:
            raise ProfileError(
                f"reference {refs.sources[index]} could not be read again for calibration "
                f"({item.error or 'another image came back'})"
            )

        def score(x: torch.Tensor, exclude: int = index) -> dict[str, Any]:
            b = x.shape[0]
            with torch.no_grad():
                f = detector.model.encode_image(x.to(detector.device))
                zs = head.score_features(f, class_text.expand(b, -1, -1), size)
                if n < 2:
                    return {"zero-shot": zs}
                ex = torch.full((b,), exclude, dtype=torch.long, device=detector.device)
                d = profile.bank(f, ex)
                return {m: zs if m == "zero-shot" else head.fuse(zs, d, size, m) for m in modes}

        assert item.original_size is not None
        grid = detector.tile_grid(item.original_size)
        evidence = detector.tiled_evidence(
            item.image, grid.boxes, item.original_size, score, batch_size=batch
        )
        for mode in modes:
            ev = evidence[mode]
            scores[mode].append(ev.score(detector.cls))
            m = ev.anomaly_map.reshape(-1)
            flat = torch.cat([tops[mode], torch.topk(m, min(keep, m.numel())).values])
            tops[mode] = torch.topk(flat, min(keep, flat.numel())).values
        del evidence
    refs.calibration_scores = scores
    out: dict[str, dict[str, Calibration | None]] = {}
    for mode in MODES:
        if mode not in scores:
            out[mode] = {"image": None, "pixel": None}
            continue
        image = conformal_threshold(np.asarray(scores[mode]), alpha)
        if not image.attainable and mode == modes[0]:
            logger.warning("%s: %s", profile.class_name, image.note)
        pixel = pixel_threshold(tops[mode].numpy(), n_pixels, pixel_alpha)
        out[mode] = {"image": image, "pixel": pixel}
    return out


def load_profiles(
    specs: Sequence[str | os.PathLike | Profile], device: str | torch.device = "cpu"
) -> dict[str, Profile]:
    """Profiles by class name; two profiles of one class are refused."""
    by_class: dict[str, Profile] = {}
    for spec in specs:
        p = spec if isinstance(spec, Profile) else Profile.load(spec, device)
        if p.class_name in by_class:
            raise ProfileError(
                f"two profiles of class {p.class_name!r}: "
                f"{by_class[p.class_name].name} and {p.name}"
            )
        by_class[p.class_name] = p
    return by_class


def profile_digest(profile: Profile) -> str:
    """An id of a profile's content (identity, bank tensors): for stores keyed on it."""
    b = profile.bank
    return digest(
        {
            "identity": profile.identity,
            "patches": tensor_digest(b.patches.features),
            "patch_sources": tensor_digest(b.patches.sources),
            "cls1": tensor_digest(b.cls1.features),
            "cls2": tensor_digest(b.cls2.features),
        }
    )
