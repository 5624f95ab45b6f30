"""Engines without an export step: ``--engine onnxruntime|openvino`` exports on first use.

:func:`open_engine` gives the :class:`~tipsomaly.deploy.inferencers.ExportedDetector` of a
configuration's class, from the engine cache ``$TIPSOMALY_HOME/engines/KEY/``: ``KEY`` is a
digest of what the graph depends on (:func:`engine_key`: the model's id, the prompts, pixel
prompts, image size, sigma, CLS token, class, profile content, mode, thresholds given,
precision, the calibration images' content and tipsomaly's version), so a run with the same
record finds the graph of an earlier run and starts at once; anything else gets its own.

Writes are safe against crashes and other processes: the export is made in a temporary
folder beside the entry and renamed into place whole (a folder appears complete or not at
all), under the entry's :class:`~tipsomaly.runners.lock.OutputLock`; a second process
waits for the first one's export and uses it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..deploy.metadata import EXPORT_JSON
from ..errors import InvalidOptionError, OutputError
from ..fingerprint import digest, file_digest
from ..identity import spec_id
from ..method.config import DetectorConfig
from .lock import OutputLock, OutputLockedError

logger = logging.getLogger(__name__)

__all__ = ["EXPORTS_DIR", "ClassEngines", "engine_key", "open_engine"]

#: the engine cache, under tipsomaly's cache root
EXPORTS_DIR = "engines"
#: how long a second process waits for another's export of the same engine, in seconds
WAIT_S = 3600.0
#: the graph format each engine runs
FORMAT = {"onnxruntime": "onnx", "openvino": "openvino"}
#: options that are not the graph's (how it is run, or the engine's own choice)
_RUN_OPTIONS = ("model", "profiles", "engine", "precision", "calibration_images", "dtype")


def cache_root() -> Path:
    from ..tips.weights import cache_dir

    return cache_dir() / EXPORTS_DIR


def quantization_recipe() -> int:
    from ..deploy.quantize import RECIPE

    return RECIPE


def engine_key(config: DetectorConfig, class_name: str, calibration: list[str]) -> str:
    """The cache key of ``config``'s engine for ``class_name`` (see the module doc)."""
    settings = config.settings()
    record = {
        "model": spec_id(config.model),
        "prompt_type": config.prompt_type,
        "prompt_file": None if config.prompt_file is None else spec_id(config.prompt_file),
        "pixel_prompts": spec_id(settings["pixel_prompts"]),
        **{k: settings[k] for k in ("image_size", "sigma", "cls", "tile", "tile_overlap")},
        "roi": None if config.roi is None else spec_id(config.roi),
        "class_name": class_name,
        "profiles": sorted(spec_id(p) for p in config.profiles),
        "mode": config.mode,
        "thresholds": [config.image_threshold, config.pixel_threshold],
        "engine": config.engine,
        "precision": "int8" if config.precision == "int8" else "fp32",  # bf16: a runtime hint
        "calibration": sorted(file_digest(f) for f in calibration),
        "recipe": quantization_recipe() if config.precision == "int8" else None,
        "tipsomaly": __version__,
    }
    return digest(record, 24)


def open_engine(
    config: DetectorConfig, given: dict[str, Any], class_name: str | None = None
) -> Any:
    """The exported engine of ``config`` (``engine`` onnxruntime or openvino, resolved by
    :func:`tipsomaly.cli.options.resolve_engine`) for ``class_name`` (default: the one
    profile's class), exported on first use.

    Raises:
        InvalidOptionError: no class, or several.
        ExportError, ProfileError...: as ``tipsomaly export`` raises them.
    """
    from ..deploy.inferencers import ExportedDetector

    class_name = _class_name(config, class_name)
    calibration = _calibration(config, class_name)
    folder = cache_root() / engine_key(config, class_name, calibration)
    if not (folder / EXPORT_JSON).is_file():
        _export_once(config, class_name, calibration, folder)
    else:
        logger.info("engine cache hit: %s", folder)
    kept = {k: v for k, v in given.items() if k not in _RUN_OPTIONS and k != "device"}
    return ExportedDetector(
        folder,
        runtime=config.engine,
        precision=None if config.precision == "fp32" else config.precision,
        **kept,
    )


def _class_name(config: DetectorConfig, class_name: str | None) -> str:
    if class_name is not None:
        return class_name
    if len(config.profiles) == 1:
        from ..method.profile import read_record

        return str(read_record(config.profiles[0])["class_name"])
    raise InvalidOptionError(
        f"--engine {config.engine} exports the detector of one class: give --class-name"
        + (" (or one --profile)" if len(config.profiles) > 1 else "")
    )


def _calibration(config: DetectorConfig, class_name: str) -> list[str]:
    """int8: the calibration images, ``--calibration-images`` or the profile's references."""
    if config.precision != "int8":
        return []
    if config.calibration_images is not None:
        from ..deploy.quantize import image_files

        files = [str(p) for p in image_files(config.calibration_images)]
        if not files:
            raise InvalidOptionError(
                f"--calibration-images {config.calibration_images}: no image files there"
            )
        return files
    from ..deploy.export import reference_files
    from ..method.profile import load_profiles

    profiles = load_profiles(list(config.profiles), "cpu")
    if class_name not in profiles:
        raise InvalidOptionError(
            f"--precision int8: no profile of {class_name!r} to calibrate on; give "
            "--calibration-images DIR"
        )
    return reference_files(profiles[class_name])


def _export_once(
    config: DetectorConfig, class_name: str, calibration: list[str], folder: Path
) -> None:
    """Export into ``folder`` unless another process does it now (then wait for it)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the cache cannot be written: one line naming it
        raise OutputError(folder.parent, exc) from None
    lock = OutputLock(folder.parent / f".{folder.name}.lock", command=f"export {folder.name}")
    waited = time.monotonic()
    while True:
        try:
            lock.acquire()
            break
        except OutputLockedError:
            if time.monotonic() - waited > WAIT_S:
                raise
            time.sleep(1.0)  # another process exports this engine: use its result
    try:
        if (folder / EXPORT_JSON).is_file():
            return
        _export(config, class_name, calibration, folder)
    finally:
        lock.release()


def _export(config: DetectorConfig, class_name: str, calibration: list[str], folder: Path) -> None:
    from ..deploy.export import export
    from ..method.detector import Detector

    logger.info(
        "exporting %r for %s (%s) on first use -> %s",
        class_name,
        config.engine,
        config.precision,
        folder,
    )
    detector = Detector.from_config(config.replace(device="cpu", dtype="fp32", precision=None))
    work = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        export(
            detector,
            class_name,
            work,
            FORMAT[config.engine],
            precision="int8" if config.precision == "int8" else "fp32",
            calibration=calibration,
        )
        if folder.exists():  # an incomplete entry (its export.json gone): ours replaces it
            shutil.rmtree(folder)
        os.replace(work, folder)  # the whole folder appears at once
    finally:
        shutil.rmtree(work, ignore_errors=True)


class ClassEngines:
    """``eval --engine``: the exported engine of each class (with its profile, if one is
    given), exported on first use and cached as :func:`open_engine`'s; what the prediction
    store's filler asks of a detector (:meth:`score_batch`, :meth:`iter_predict`).

    Raises:
        InvalidOptionError: with ``shots`` (the few-shot draw fits its profiles on torch).
    """

    device = "cpu"

    def __init__(self, config: Any) -> None:
        if getattr(config, "shots", 0):
            raise InvalidOptionError(
                f"--shots with --engine {config.engine}: the few-shot draw fits its profiles "
                "with torch; fit profiles (`tipsomaly fit`) and give them with --profile"
            )
        from ..method.profile import read_record

        self.config = config
        self.profiles = {str(read_record(p)["class_name"]): p for p in config.profiles}
        self._engines: dict[str, Any] = {}

    def engine(self, class_name: str) -> Any:
        """The class's :class:`~tipsomaly.deploy.inferencers.ExportedDetector`."""
        if class_name not in self._engines:
            profile = self.profiles.get(class_name)
            config = self.config.replace(
                profiles=() if profile is None else (profile,),
                mode=None if profile is None else self.config.mode,
            )
            self._engines[class_name] = open_engine(config, {}, class_name)
        return self._engines[class_name]

    def score_batch(self, images: Any, class_names: str | list[str]) -> Any:
        """(B, 3, S, S) images → the network outputs the store keeps (``global_probs_cls1``,
        ``global_probs_cls2`` (B, 2), ``patch_probs`` (B, N, 2): [normal, abnormal], as the
        torch engine's :class:`~tipsomaly.method.head.BatchScores`)."""
        import numpy as np
        import torch

        names = [class_names] * len(images) if isinstance(class_names, str) else class_names
        x = images.float().cpu().numpy()
        parts: dict[str, list] = {"global_cls1": [], "global_cls2": [], "patch_evidence": []}
        order: list[int] = []
        for name in dict.fromkeys(names):
            rows = [i for i, n in enumerate(names) if n == name]
            out = self.engine(name).run(x[rows])
            for key, values in parts.items():
                values.append(np.asarray(out[key]))
            order += rows
        back = np.argsort(order)

        def probs(key: str) -> torch.Tensor:
            evidence = torch.from_numpy(np.concatenate(parts[key])[back])
            return torch.stack([1.0 - evidence, evidence], dim=-1)

        from types import SimpleNamespace

        return SimpleNamespace(
            global_probs_cls1=probs("global_cls1"),
            global_probs_cls2=probs("global_cls2"),
            patch_probs=probs("patch_evidence"),
        )

    def iter_predict(self, inputs: Any, class_names: str, **kwargs: Any) -> Any:
        """Tiled ``eval``: the class's engine predicts (its tiles, the ROIs given)."""
        return self.engine(class_names).iter_predict(inputs, class_names, **kwargs)
