"""Fitting a profile: normal images of one class in, a :class:`~.profile.Profile` out.

:func:`fit_profile` reads the references through the detector's pipeline (decoding, the pixel
limit, its ROI and tiling), encodes them once and makes

- the bank: every patch and both CLS tokens of every reference (tiled: of every tile holding
  ROI pixels; untiled with an ROI: the patches of the cells inside it), optionally of the 8
  flips and 90° rotations, each tagged with its reference; above ``max_bank`` patches a greedy
  k-centre coreset;
- the thresholds of each mode, by leave-one-out: each reference is scored exactly as a
  prediction scores an image (its ROI and tiles too) against the bank without its own entries,
  and the image threshold is the conformal quantile of those scores
  (:func:`~.calibration.conformal_threshold`); the pixel threshold the same quantile of the
  references' map pixels (inside the ROI). Scores against a bank missing one reference run a
  little higher than a new image's against the whole bank, so the rate on new normal images
  is at most the stated one (conservative).

A reference that cannot be read is left out (listed) or, with ``on_error="raise"``, stops the
fit; one whose features or scores are not finite stops it with a one-line
:class:`~.profile.ProfileError` naming the image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.images import ImageLoadError
from ..data.roi import fit_roi, roi_cells
from ..fingerprint import file_digest
from ..tips.vision import VisionFeatures
from ..validation import choice, in_range, positive_int
from .calibration import Calibration, conformal_threshold, pixel_threshold, pixels_to_keep
from .decision import Thresholds
from .detector import Detector
from .head import DetectorOutput
from .memory_bank import MemoryBank, ReferenceBank, greedy_coreset
from .names import DEFAULT_FALSE_ALARM_RATE, DEFAULT_MAX_BANK, DEFAULT_PIXEL_FALSE_ALARM_RATE, MODES
from .pipeline import LoadedImage, NonFiniteError
from .profile import Profile, ProfileError
from .tiling import crop_tiles

logger = logging.getLogger(__name__)

__all__ = ["dihedral_views", "fit_profile", "recalibrate"]


def fit_profile(
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
        detector: the detector whose model, prompts and settings (tiling and ROI included)
            the profile is for.
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
        ProfileError: no reference could be read; a reference's features or scores are not
            finite (named).
        ImageLoadError: with ``on_error="raise"``, an unreadable reference.

    Example:
        >>> profile = fit_profile(Detector("b14"), good_paths, "tile")  # doctest: +SKIP
        >>> profile.save("profiles/tile")  # doctest: +SKIP
    """
    in_range(false_alarm_rate, "false_alarm_rate", 0, 1, low_open=True, high_open=True)
    in_range(pixel_false_alarm_rate, "pixel_false_alarm_rate", 0, 1, low_open=True, high_open=True)
    positive_int(max_bank, "max_bank")
    choice(on_error, "on_error", ("raise", "record"))
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
    cls_sources = torch.cat(refs.cls_sources).to(device)
    bank = ReferenceBank(
        MemoryBank(patches.to(device), patch_sources.to(device)),
        MemoryBank(torch.cat(refs.cls1).to(device), cls_sources),
        MemoryBank(torch.cat(refs.cls2).to(device), cls_sources),
    )
    config = detector.config
    info: dict[str, Any] = {
        "settings": config.settings(),
        "references": {
            "used": n,
            "failed": len(refs.failed),
            "views_per_image": 8 if augment else 1,
            "sources": refs.sources,
            # each reference's file by content: updates refuse duplicates, copies are found
            "sha256": [_sha256(images[p]) for p in refs.positions],
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
    if config.tile is not None:
        info["bank"]["tiles"] = refs.tiles
    profile = Profile(
        class_name=class_name,
        bank=bank,
        identity=detector.identity.scoring(),
        thresholds=Thresholds({mode: {"image": None, "pixel": None} for mode in MODES}),
        info=info,
        roi=None if config.roi is None else os.path.abspath(config.roi),
    )
    if calibrate:
        scores, thresholds = _calibrate(
            detector, profile, refs, images, false_alarm_rate, pixel_false_alarm_rate, batch
        )
        profile.thresholds = thresholds
        info["calibration"] = {
            "method": "leave-one-out" if n >= 2 else "zero-shot only (1 reference)",
            "false_alarm_rate": false_alarm_rate,
            "pixel_false_alarm_rate": pixel_false_alarm_rate,
            "scores": scores,
        }
    return profile


def _sha256(image: Any) -> str | None:
    """SHA-256 of a reference given as a file (None for an in-memory image)."""
    return file_digest(image) if isinstance(image, (str, os.PathLike)) else None


def recalibrate(
    detector: Detector,
    profile: Profile,
    images: Iterable[str | os.PathLike | Any],
    *,
    batch_size: int | None = None,
) -> tuple[dict[str, list[float]], Thresholds]:
    """``profile``'s thresholds again, with ``detector``'s network: the same leave-one-out
    rule as :func:`fit_profile` (each reference scored against the profile's own bank without
    its entries, the conformal quantile at the profile's false-alarm rates), on the features
    ``detector.model.encode_image`` gives now, e.g. an int8 engine's (see
    :func:`tipsomaly.deploy.export.export`).

    ``images`` must be the profile's references in their order (``info.references.sources``:
    the bank's entries are tagged with their positions). Returns each mode's scores and the
    thresholds.

    Raises:
        ProfileError: a reference is not finite; the profile records no calibration.
        ImageLoadError: a reference cannot be read.
    """
    calibration = profile.info.get("calibration") or {}
    if "false_alarm_rate" not in calibration:
        raise ProfileError(f"{profile.name} records no calibration to redo")
    images = list(images)
    batch = batch_size or detector.batch_size
    refs = _encode_references(detector, images, profile.class_name, batch, False, "raise", None)
    return _calibrate(
        detector,
        profile,
        refs,
        images,
        float(calibration["false_alarm_rate"]),
        float(calibration["pixel_false_alarm_rate"]),
        batch,
    )


def _not_finite(source: str, what: str) -> ProfileError:
    """A reference whose features or scores are not finite would poison every distance."""
    return ProfileError(
        f"reference {source}: {what} is not finite (NaN or inf); check the model weights, or "
        "leave it out"
    )


def dihedral_views(images: torch.Tensor) -> list[torch.Tensor]:
    """(B, 3, S, S) → the 8 flips and 90° rotations, the images themselves first."""
    views = []
    for flipped in (images, images.flip(-1)):
        views.extend(torch.rot90(flipped, k, dims=(-2, -1)) for k in range(4))
    return views


# -- encoding -------------------------------------------------------------------------------------
@dataclass
class _References:
    """What one pass over the references collects (CPU, fp32)."""

    sources: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # each used reference's input position
    patches: list[torch.Tensor] = field(default_factory=list)  # (views·N, D) per batch
    patch_sources: list[torch.Tensor] = field(default_factory=list)
    cls1: list[torch.Tensor] = field(default_factory=list)
    cls2: list[torch.Tensor] = field(default_factory=list)
    cls_sources: list[torch.Tensor] = field(default_factory=list)
    originals: list[tuple[VisionFeatures, list[LoadedImage]]] = field(default_factory=list)
    pixels: list[int] = field(default_factory=list)  # each reference's calibration pixels
    tiles: int = 0  # tiled: tiles encoded (un-augmented)


def _encode_references(
    detector: Detector,
    images: list[Any],
    class_name: str,
    batch: int,
    augment: bool,
    on_error: str,
    progress: Callable[[int], None] | None,
) -> _References:
    refs = _References()
    pending: list[LoadedImage] = []
    grid = detector.grid

    def encode(x: torch.Tensor, index: torch.Tensor, cells: torch.Tensor | None) -> VisionFeatures:
        """(b, 3, S, S) images of the references ``index`` (b,) into the bank lists; returns
        the un-augmented views' features. ``cells`` (N,) bool: the patches kept (an ROI)."""
        b = x.shape[0]
        x = x.to(detector.device)
        views = dihedral_views(x) if augment else [x]
        per_forward = max(1, batch // b) if augment else 1
        first: VisionFeatures | None = None
        for v in range(0, len(views), per_forward):
            chunk = torch.cat(views[v : v + per_forward])
            with torch.no_grad():
                f = detector.model.encode_image(chunk)
            f = VisionFeatures(*(t.float().cpu() for t in f))
            for row in range(b):  # a non-finite reference would poison every distance
                if not all(bool(torch.isfinite(t[row::b]).all()) for t in f):
                    raise _not_finite(refs.sources[int(index[row])], "the network's output")
            src = index.repeat(chunk.shape[0] // b)
            p = f.patches if cells is None else f.patches[:, cells]
            refs.patches.append(p.reshape(-1, p.shape[-1]))
            refs.patch_sources.append(src.repeat_interleave(p.shape[1]))
            refs.cls1.append(f.cls1[:, 0])
            refs.cls2.append(f.cls2[:, 0])
            refs.cls_sources.append(src)
            if first is None:  # the un-augmented images come first
                first = VisionFeatures(f.cls1[:b], f.cls2[:b], f.patches[:b])
        assert first is not None
        return first

    def flush() -> None:
        start = len(refs.sources) - len(pending)
        index = torch.arange(start, start + len(pending))
        # one ROI for every reference (the config's): its cells are the same for all
        roi = pending[0].roi
        cells = None if roi is None else torch.from_numpy(roi_cells(roi, grid))
        f = encode(torch.stack([p.tensor for p in pending]), index, cells)  # type: ignore[misc]
        refs.originals.append((f, list(pending)))
        pending.clear()
        if progress is not None:
            progress(len(refs.sources))

    tiled = detector.tile is not None
    loaded = detector.load_images(images, class_name, lookahead=1 if tiled else 2 * batch)
    for position, item in enumerate(loaded):
        if item.error is not None:
            if on_error == "raise":
                raise ImageLoadError(item.source, item.error)
            logger.warning("reference %s left out: %s", item.source, item.error)
            refs.failed.append((item.source, item.error))
            continue
        refs.sources.append(item.source)
        refs.positions.append(position)
        refs.pixels.append(_pixels(item, detector.image_size, tiled))
        if not tiled:
            pending.append(item)
            if len(pending) >= batch:
                flush()
            continue
        # tiled: every tile of the reference (holding ROI pixels), tagged with its index
        boxes = detector.scored_boxes(item)
        index = len(refs.sources) - 1
        for start in range(0, len(boxes), batch):
            chunk = boxes[start : start + batch]
            x = crop_tiles(item.image, chunk, detector.image_size)
            encode(x, torch.full((len(chunk),), index, dtype=torch.long), None)
            refs.tiles += len(chunk)
        if progress is not None:
            progress(len(refs.sources))
    if pending:
        flush()
    return refs


def _pixels(item: LoadedImage, size: int, tiled: bool) -> int:
    """How many of a reference's map pixels count for the pixel threshold: the map at model
    size untiled, at the image's size tiled; only those inside its ROI."""
    if item.roi is None:
        h, w = item.original_size if tiled else (size, size)  # type: ignore[misc]
        return int(h) * int(w)
    return int((item.roi if tiled else fit_roi(item.roi, (size, size))[0]).sum())


# -- calibration ---------------------------------------------------------------------------------
#: per reference: each mode's (image score, the map values that count for the pixel threshold)
Evidence = dict[str, tuple[float, torch.Tensor]]


def _calibrate(
    detector: Detector,
    profile: Profile,
    refs: _References,
    images: list[Any],
    alpha: float,
    pixel_alpha: float,
    batch: int,
) -> tuple[dict[str, list[float]], Thresholds]:
    """Leave-one-out scores of every reference in every mode → thresholds per mode (see the
    module doc); returns the scores too (``calibration.csv``)."""
    n = len(refs.sources)
    modes = MODES if n >= 2 else ("zero-shot",)
    if n < 2:
        logger.warning(
            "1 reference image: the few-shot and fused thresholds need at least 2 (each is "
            "scored against a bank without it); only zero-shot is calibrated"
        )
    head, _ = detector.head_for([profile.class_name])
    class_text = head.class_text[:1]
    size = (detector.image_size, detector.image_size)

    def outputs(f: VisionFeatures, exclude: torch.Tensor) -> dict[str, DetectorOutput]:
        """Every mode's outputs of B references' features, each without its own entries."""
        b = f.patches.shape[0]
        with torch.no_grad():
            zs = head.score_features(f, class_text.expand(b, -1, -1), size)
            distances = profile.bank(f, exclude) if n >= 2 else None
            return {
                m: head.output(zs if m == "zero-shot" else head.fuse(zs, distances, size, m))
                for m in modes
            }

    evidence = (
        _tiled_evidence(detector, refs, images, profile.class_name, outputs, batch)
        if detector.tile is not None
        else _untiled_evidence(detector, refs, outputs)
    )
    n_pixels = sum(refs.pixels)
    keep = pixels_to_keep(n_pixels, pixel_alpha)
    scores: dict[str, list[float]] = {m: [] for m in modes}
    tops = {m: torch.empty(0) for m in modes}
    for index, by_mode in enumerate(evidence):
        for mode, (score, values) in by_mode.items():
            if not np.isfinite(score) or not bool(torch.isfinite(values).all()):
                raise _not_finite(refs.sources[index], f"its {mode} score")
            scores[mode].append(score)
            flat = torch.cat([tops[mode], torch.topk(values, min(keep, values.numel())).values])
            tops[mode] = torch.topk(flat, min(keep, flat.numel())).values
    by_mode: dict[str, dict[str, Calibration | None]] = {}
    for mode in MODES:
        if mode not in scores:
            by_mode[mode] = {"image": None, "pixel": None}
            continue
        image = conformal_threshold(np.asarray(scores[mode]), alpha)
        if not image.attainable and mode == modes[0]:  # n is the same in every mode
            logger.warning("%s: %s", profile.class_name, image.note)
        pixel = pixel_threshold(tops[mode].numpy(), n_pixels, pixel_alpha)
        by_mode[mode] = {"image": image, "pixel": pixel}
    return scores, Thresholds(by_mode)


def _untiled_evidence(
    detector: Detector, refs: _References, outputs: Callable[..., dict[str, DetectorOutput]]
) -> Iterable[Evidence]:
    """Per reference, from its stored features: each mode's image score and its map's pixels
    at model size (inside the ROI), as the pipeline scores an untiled image."""
    start = 0
    for features, items in refs.originals:
        b = features.patches.shape[0]
        f = VisionFeatures(*(t.to(detector.device) for t in features))
        exclude = torch.arange(start, start + b, device=detector.device)
        start += b
        by_mode = outputs(f, exclude)
        for k, item in enumerate(items):
            scored = {}
            for mode, out in by_mode.items():
                s1, s2, small, _ = detector.untiled_scores(out, k, item.roi)
                values = small.reshape(-1)
                if item.roi is not None:
                    values = small[torch.from_numpy(fit_roi(item.roi, small.shape)[0])]
                scored[mode] = (s1 if detector.cls == "cls1" else s2, values)
            yield scored


def _tiled_evidence(
    detector: Detector,
    refs: _References,
    images: list[Any],
    class_name: str,
    outputs: Callable[..., dict[str, DetectorOutput]],
    batch: int,
) -> Iterable[Evidence]:
    """Per reference, read again and scored tile by tile against the bank without its own
    tiles: each mode's image score and blended map pixels (inside the ROI), as the pipeline
    scores a tiled image."""
    again = detector.load_images([images[p] for p in refs.positions], class_name, lookahead=1)
    for index, item in enumerate(again):
        if item.error is not None or item.source != refs.sources[index]:
            raise ProfileError(
                f"reference {refs.sources[index]} could not be read again for calibration "
                f"({item.error or 'another image came back'})"
            )

        def score(x: torch.Tensor, exclude: int = index) -> dict[str, DetectorOutput]:
            with torch.no_grad():
                f = detector.model.encode_image(x.to(detector.device))
            ex = torch.full((x.shape[0],), exclude, dtype=torch.long, device=detector.device)
            return outputs(f, ex)

        try:
            evidence = detector.tiled_evidence(
                item.image,
                detector.scored_boxes(item),
                item.original_size,  # type: ignore[arg-type]
                score,
                roi=item.roi,
                batch_size=batch,
            )
        except NonFiniteError:
            raise _not_finite(item.source, "the network's output") from None
        yield {
            mode: (
                ev.score(detector.cls),
                ev.anomaly_map.reshape(-1)
                if item.roi is None
                else ev.anomaly_map[torch.from_numpy(item.roi)],
            )
            for mode, ev in evidence.items()
        }
