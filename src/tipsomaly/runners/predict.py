"""``predict`` as a library call: expand the inputs, score every image, write tables and images.

Output layout under ``out_dir``::

    scores.csv            one row per input, appended and flushed as each image is scored
    scores.json           the same rows + summary + settings: written with "complete": false
                          when the run starts (before any row), again at the end
                          ("complete": true, or false when the run stops early)
    overlays/<name>.png   heat map over the image, at the image's original size
    masks/<name>.png      0/255 mask of map >= threshold           (only with a pixel threshold:
                          given, or a profile's calibrated one)
    maps/<name>.npy       raw map, float32 (H, W), original size   (only with save_maps)
    defects.csv           one row per defect record (with a pixel threshold; see below)
    defects_coco.json     the defects as COCO results with RLE masks (defects_format="coco")
    report.html           the run for people (report=True): images most anomalous first,
                          score histogram, counts (:mod:`tipsomaly.report.predict_page`);
                          report-assets/thumbs/<name>.jpg its thumbnails, written with each
                          image's other files; rank 0 writes the page under torchrun

Decisions, defect records, tiling and the ROI are the predictor's
(:mod:`tipsomaly.method.pipeline`); ``roi_dir`` gives each image its own ROI instead
(``<roi_dir>/<name>.<ext>``, else ``<roi_dir>/<stem>.<ext>``; an image without one is an error
row). ``<name>`` is the image's output name (:func:`~tipsomaly.data.inputs.output_names`: its
path below the inputs' common folder, without extension), the table's ``name`` column.

Integrity: one run at a time writes into ``out_dir`` (:class:`~.lock.OutputLock`), and an
output file never exists without its row (:mod:`.image_outputs`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .. import __version__
from ..data.inputs import NoInputsError, expand_inputs, folder_class_name, output_names
from ..data.roi import RoiError, RoiLookup
from ..errors import InvalidOptionError, OutputError
from ..method.pipeline import Predictor
from ..method.prediction import NON_FINITE, Prediction
from ..method.profile import ProfileError
from ..report.html import remove_stale_report
from ..report.overlay import DEFAULT_ALPHA, OVERLAY_SCALES
from ..report.plots import need_matplotlib
from ..report.predict_page import write_predict_report
from ..report.results import printable
from ..report.tables import ScoreTable
from ..validation import choice, in_range
from . import distributed
from .distributed import DistInfo
from .image_outputs import (
    ImageOutputError,
    ImageOutputs,
    discard,
    remove_outputs,
    write_images,
)

logger = logging.getLogger(__name__)

ClassNames = str | Callable[[Path], str]
#: how the image score is made, for scores.json's settings
SCORE_RULES = {
    "untiled": "global (CLS) abnormal evidence + max patch evidence",
    "untiled+roi": "global (CLS) abnormal evidence of the whole image + max patch evidence over "
    "the patch cells at least half inside the ROI; map 0 outside the ROI",
    "tiled": "max over the tiles of the global (CLS) abnormal evidence + max of the blended map",
    "tiled+roi": "max over the tiles holding ROI pixels of the global (CLS) abnormal evidence "
    "+ max of the blended map inside the ROI; map 0 outside the ROI (tiles without ROI "
    "pixels are not scored)",
}


@dataclass
class PredictSummary:
    """What a :func:`run_predict` call did: counts, where the outputs are, every row."""

    images: int
    ok: int
    failed: int
    out_dir: Path
    csv_path: Path
    json_path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed_paths(self) -> list[str]:
        return [r["path"] for r in self.rows if r["status"] != "ok"]


@dataclass(frozen=True)
class _Inspection:
    """A run's per-image ROI folder, what its rows hold and its per-image files."""

    roi_dir: RoiLookup | None
    coco: bool
    with_defects: bool
    with_roi: bool
    files: ImageOutputs = ImageOutputs()
    records: Any = None  # runners.recording.PredictRecords (--db), or None

    def roi_for(self, file: Path, name: str) -> Any:
        """The ROI mask file of one input from ``roi_dir``, None without ``roi_dir``, or a
        ``str``: why its image has none (it becomes an error row)."""
        if self.roi_dir is None:
            return None
        try:
            return self.roi_dir.find([name, file.stem])
        except RoiError as exc:
            return str(exc)


# -- the run --------------------------------------------------------------------------------
def run_predict(
    detector: Predictor,
    paths: Iterable[str | os.PathLike],
    *,
    class_name: ClassNames | None = None,
    class_from_folder: bool = False,
    out_dir: str | os.PathLike = "tipsomaly-out",
    save_maps: bool = False,
    overlays: bool = True,
    overlay_scale: str = "fixed",
    overlay_alpha: float = DEFAULT_ALPHA,
    batch_size: int | None = None,
    progress: bool = False,
    settings: dict[str, Any] | None = None,
    roi_dir: str | os.PathLike | None = None,
    boxes: bool = True,
    records: Any = None,
    report: bool = False,
) -> PredictSummary:
    """Score every image named by ``paths`` and write the outputs (layout in the module doc).

    Args:
        detector: a ready predictor (:class:`~tipsomaly.method.detector.Detector`, or an
            export's :class:`~tipsomaly.deploy.inferencers.ExportedDetector`); its config says
            the thresholds, tiling, ROI, profiles and defect settings.
        paths: files, folders and glob patterns (see :func:`expand_inputs`).
        class_name: the class of every image (``"hazelnut"``), or a function path → name.
        class_from_folder: use each image's parent folder name instead (``class_name`` unset).
        out_dir: output folder (created); an earlier run's files of the same names are
            replaced (or removed, for an image that failed this time), others left alone.
        save_maps: write the raw maps, ``maps/<name>.npy`` float32 (H, W).
        overlays: write ``overlays/<name>.png`` (the image is read a second time for it).
        overlay_scale: ``"threshold"`` (the pixel threshold at the middle colour), ``"fixed"``
            (map [0, 1] → colours, comparable across images) or ``"per-image"``.
        overlay_alpha: weight of the heat map in the overlay, in [0, 1].
        batch_size: images per forward pass (default: the predictor's).
        settings: extra entries for the ``settings`` object of ``scores.json``.
        roi_dir: a folder of per-image ROI masks (matched by name, see the module doc), in
            place of the predictor's one ROI.
        boxes: draw each defect's box on its overlay, labelled ``#<id> <peak>``.
        records: a :class:`~.recording.PredictRecords` (``--db``): each scored image's record
            is committed before its row is written.
        report: write ``report.html`` and its thumbnails (needs the ``report`` extra).

    Returns:
        a :class:`PredictSummary`; a failed image is a row with status ``error``, not an
        exception.

    Raises:
        NoInputsError: ``paths`` name no image file.
        RoiError: ``roi_dir`` is no folder.
        OutputLockedError: another run is writing into ``out_dir``.
        MissingExtraError: ``report`` without matplotlib (before any work).
        OutputError: ``out_dir`` cannot be written (read-only or full disk); the rows written
            before stay.
        KeyboardInterrupt and any other exception stop the run; the rows computed so far are
            in ``scores.csv`` and ``scores.json`` (``"complete": false``).
    """
    if (class_name is None) == (not class_from_folder):
        raise InvalidOptionError("give exactly one of class_name and class_from_folder=True")
    choice(overlay_scale, "overlay_scale", OVERLAY_SCALES)
    in_range(overlay_alpha, "overlay_alpha", 0, 1)
    if roi_dir is not None and not Path(roi_dir).is_dir():
        raise RoiError(f"ROI folder {roi_dir} is not a folder")
    if report:
        need_matplotlib()
    config = detector.config
    paths = list(paths)
    out = Path(out_dir)
    files = expand_inputs(paths, exclude=[out])
    if not files:
        raise NoInputsError(paths)
    names = output_names(files)
    name_of: Callable[[Path], str]
    if class_from_folder:
        name_of = folder_class_name
    elif isinstance(class_name, str):
        name_of = lambda _p: class_name  # noqa: E731
    else:
        name_of = class_name  # type: ignore[assignment]
    classes = [name_of(f) for f in files]
    detector.check_classes(dict.fromkeys(classes))
    profiled = detector.profile_classes()
    if profiled:
        missing = sorted(set(classes) - set(profiled))
        if missing:
            raise ProfileError(
                f"no profile for class(es) {', '.join(map(repr, missing))} (profiles: "
                f"{', '.join(map(repr, sorted(profiled)))}); fit one with "
                "`tipsomaly fit` or leave out --profile"
            )
        _warn_uncalibrated(detector, profiled)
    logger.info("%d input image(s); writing to %s", len(files), out)
    with_roi = config.roi is not None or roi_dir is not None
    inspect = _Inspection(
        RoiLookup(roi_dir=roi_dir) if roi_dir is not None else None,
        config.defects_format == "coco",
        with_defects=config.pixel_threshold is not None or bool(profiled),
        with_roi=with_roi,
        files=ImageOutputs(
            save_maps, overlays, overlay_scale, overlay_alpha, bool(boxes), thumbs=report
        ),
        records=records,
    )
    run_settings = {
        **run_record(detector, roi_dir),
        "overlay_scale": overlay_scale if overlays else None,
        "overlay_alpha": overlay_alpha if overlays else None,
        "defects": None
        if not inspect.with_defects
        else {
            "threshold": "the pixel threshold: map >= threshold, 8-connected regions",
            "min_area_px": config.min_defect_area,
            "pixel_size_mm": config.pixel_size_mm,
            "format": config.defects_format,
            "bbox": "[x0, y0, x1, y1], original pixels, ends excluded",
            "boxes_on_overlays": bool(boxes and overlays),
        },
        **(settings or {}),
    }
    info = distributed.current()  # under torchrun: each rank scores its share, rank 0 merges
    run = functools.partial(_run_sharded, info) if info.active else _run
    with distributed.output_lock(out, info):
        job = (detector, files, names, classes, out, run_settings)
        table = run(*job, inspect=inspect, batch_size=batch_size, progress=progress)
        if not report and info.is_main:
            remove_stale_report(out)
        if report and info.is_main:  # under torchrun: of every rank's rows, merged
            page = write_predict_report(
                out, table.rows, run_settings, overlays="overlays" if overlays else None
            )
            logger.info("report: %s", page)
    return PredictSummary(
        images=len(table.rows),
        ok=table.n_ok,
        failed=table.n_failed,
        out_dir=out,
        csv_path=table.csv_path,
        json_path=table.json_path,
        rows=table.rows,
    )


def run_record(detector: Predictor, roi_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """``scores.json``'s settings: the predictor's identity and the settings of the run."""
    c = detector.config
    identity = detector.identity
    rule = ("tiled" if c.tile is not None else "untiled") + (
        "+roi" if c.roi is not None or roi_dir is not None else ""
    )
    pixel = identity.pixel_prompts
    return {
        "tipsomaly": __version__,
        "identity": identity.to_dict(),
        "model": identity.model.get("name"),
        **{k: getattr(c, k) for k in ("image_size", "sigma", "cls")},
        "prompt_type": identity.prompts.get("name"),
        "pixel_prompts": None if pixel is None else pixel.get("source"),
        "threshold": c.pixel_threshold,
        "image_threshold": c.image_threshold,
        "mode": detector.mode,
        "profiles": detector.profile_names() or None,
        "tile": c.tile,
        "tile_overlap": c.tile_overlap if c.tile is not None else None,
        "roi": None if c.roi is None else str(c.roi),
        "roi_dir": None if roi_dir is None else str(roi_dir),
        "max_pixels": c.max_pixels,
        "device": str(c.device),
        "dtype": identity.precision,
        "engine": identity.engine,
        "precision": identity.precision,
        "image_score": SCORE_RULES[rule],
    }


def _run(
    detector: Predictor,
    files: list[Path],
    names: list[str],
    classes: list[str],
    out: Path,
    run_settings: dict[str, Any],
    *,
    batch_size: int | None,
    progress: bool,
    inspect: _Inspection,
    table_dir: Path | None = None,
) -> ScoreTable:
    """The run proper, with the output folder's lock held (rows in ``table_dir``, default
    ``out``)."""
    table = _table(table_dir or out, detector, inspect)
    with_profile = bool(detector.profile_classes())
    with_decision = with_profile or detector.config.image_threshold is not None
    complete = False
    bar = tqdm(total=len(files), unit="img", desc="predict", disable=not progress)
    redirect = logging_redirect_tqdm() if progress else contextlib.nullcontext()
    try:
        table.write_json(complete=False, settings=run_settings)  # before any row
        for name in names:  # this run's rows are not written yet: nor are its files
            remove_outputs(out, name)
        with redirect:
            rois = [inspect.roi_for(f, n) for f, n in zip(files, names, strict=True)]
            sent = [i for i, r in enumerate(rois) if not isinstance(r, str)]
            extra = {"roi": [rois[i] for i in sent]} if inspect.roi_dir is not None else {}
            predictions = detector.iter_predict(
                [str(files[i]) for i in sent],
                [classes[i] for i in sent],
                batch_size=batch_size,
                on_error="record",
                **extra,
            )
            for i, name in enumerate(names):
                if isinstance(rois[i], str):  # no ROI mask for it: not scored
                    pred = Prediction(str(files[i]), classes[i], error=rois[i])
                else:
                    pred = next(predictions)
                row = _row(pred, name, with_decision, with_profile)
                if inspect.with_roi:
                    row["note"] = "; ".join(pred.notes) or None
                    for note in pred.notes:
                        logger.warning("%s: %s", printable(pred.source), note)
                if inspect.with_defects:
                    row["defects"] = None
                written: list[tuple[Path, Path]] = []
                if row["status"] == "ok":
                    defects = None if pred.defects is None else [d.to_dict() for d in pred.defects]
                    if inspect.with_defects:
                        row["defects"] = defects
                    try:
                        limit = detector.config.max_pixels
                        written = write_images(pred, out, name, inspect.files, defects, limit)
                    except ImageOutputError as exc:
                        row = _error_row(row, str(exc))
                if row["status"] != "ok":
                    logger.warning("%s", printable(row["error"]))
                try:
                    if inspect.records is not None:  # the record first: no row without it
                        inspect.records.add(detector, pred)
                    table.add(row)
                except BaseException:
                    discard(written)
                    raise
                for tmp, final in written:  # the row is on disk: now its files
                    try:
                        os.replace(tmp, final)
                    except OSError as exc:
                        discard([(tmp, final)])
                        raise OutputError(final, exc) from None
                bar.update(1)
        complete = True
    finally:
        bar.close()
        try:
            table.write_json(complete=complete, settings=run_settings)
        except OSError as exc:
            if complete:
                raise
            logger.error("%s", printable(exc))
        table.close()
    return table


#: under torchrun, each rank's own table (``rank-<r>/scores.csv``) until rank 0 merges them
RANKS_DIR = ".tipsomaly-ranks"


def _run_sharded(
    info: DistInfo,
    detector: Predictor,
    files: list[Path],
    names: list[str],
    classes: list[str],
    out: Path,
    run_settings: dict[str, Any],
    **options: Any,
) -> ScoreTable:
    """:func:`_run` under torchrun: this rank scores inputs ``rank::world_size`` (interleaved
    in input order), writing their overlays, masks and maps where one process would (names
    are unique per input) and their rows to its own table ``OUT/.tipsomaly-ranks/rank-<r>/``;
    rank 0 gathers every rank's rows and writes ``scores.csv``/``scores.json`` in input order,
    as one process does, then removes the rank tables (an interrupted job leaves them). Rank
    0 returns the merged table, the others their own.
    """
    info.check_same([[str(f) for f in files], names, classes], "the list of input images")
    merged = None
    if info.is_main:  # replaces an older scores.csv at once, as one process does
        merged = _table(out, detector, options["inspect"])
    try:
        if merged is not None:
            merged.write_json(complete=False, settings=run_settings)
        mine = info.shard(range(len(files)))
        options["progress"] = options["progress"] and info.is_main
        table = _run(
            detector,
            [files[i] for i in mine],
            [names[i] for i in mine],
            [classes[i] for i in mine],
            out,
            run_settings,
            table_dir=out / RANKS_DIR / f"rank-{info.rank:05d}",
            **options,
        )
        try:
            gathered = info.gather(table.rows, "merging the rows of every process")
        except distributed.DistributedError as exc:
            raise distributed.DistributedError(
                f"{exc}. Each process's rows so far are in {out / RANKS_DIR}/rank-*/scores.csv"
            ) from None
        if merged is None or gathered is None:
            return table
        rows: list[dict[str, Any]] = [{}] * len(files)
        for rank, part in enumerate(gathered):
            for i, row in zip(info.shard(range(len(files)), rank=rank), part, strict=True):
                rows[i] = row
        for row in rows:
            merged.add(row)
        merged.write_json(complete=True, settings=run_settings)
        shutil.rmtree(out / RANKS_DIR, ignore_errors=True)
        return merged
    finally:
        if merged is not None:
            merged.close()


def _table(folder: Path, detector: Predictor, inspect: _Inspection) -> ScoreTable:
    with_profile = bool(detector.profile_classes())
    return ScoreTable(
        folder,
        with_is_anomalous=detector.config.image_threshold is not None,
        with_profile=with_profile,
        with_defects=inspect.with_defects,
        with_note=inspect.with_roi,
        coco=inspect.coco,
    )


def _warn_uncalibrated(detector: Predictor, classes: list[str]) -> None:
    """One warning per profile without the thresholds this run would take from it."""
    for name in classes:
        mode, image, pixel, _ = detector.decision(name)
        lacking = [what for what, value in (("image", image), ("pixel", pixel)) if value is None]
        if lacking:
            logger.warning(
                "profile of %r has no calibrated %s threshold for mode %s (fitted on too few "
                "reference images): no decision for its images; give --image-threshold / "
                "--threshold, or fit on 2 or more images",
                name,
                " or ".join(lacking),
                mode,
            )


def _row(
    pred: Prediction, name: str, with_decision: bool, with_profile: bool = False
) -> dict[str, Any]:
    """The table row of one prediction (the predictor makes non-finite scores failures)."""
    error = None
    if not pred.ok:
        what = "score" if pred.error == NON_FINITE else "load"  # read but not scored, or not read
        error = f"cannot {what} image '{pred.source}': {pred.error}"
    row: dict[str, Any] = {
        "path": pred.source,
        "class_name": pred.class_name,
        "image_score": pred.image_score,
        "score_cls1": pred.score_cls1,
        "score_cls2": pred.score_cls2,
        "status": "ok",
        "error": None,
        "name": name,
    }
    if with_decision:
        row["is_anomalous"] = pred.is_anomalous
    if with_profile:
        row["threshold"] = pred.threshold
        row["mode"] = pred.mode
    return row if error is None else _error_row(row, error)


def _error_row(row: dict[str, Any], error: str) -> dict[str, Any]:
    row = {**row, "status": "error", "error": error}
    for key in ("image_score", "score_cls1", "score_cls2"):
        row[key] = float("nan")
    for key in ("is_anomalous", "defects"):
        if key in row:
            row[key] = None
    return row
