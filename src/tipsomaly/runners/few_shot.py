"""What ``eval`` scores a class's test images against besides its prompts: drawn references
(the few-shot protocol, ``shots``) or given profiles (``profiles``).

Few-shot protocol (``shots`` K > 0, as WinCLIP and AnomalyDINO report it for K = 1, 2, 4): for
each class, K normal images of the dataset's own ``train`` split (:func:`draw_shots`, a
deterministic draw from ``shot_seed``) are fitted into a
:class:`~tipsomaly.method.profile.Profile` (a bank, no thresholds), and the class's test images
are scored against it in ``mode`` (default ``fused``). A class with fewer than K train normal
images is skipped (warned, and named in the result's ``few_shot``); a dataset where no class
can be evaluated so (no train split, as in the ``folder`` layout) is a :class:`FewShotError`.
Each class's rows live in a store below the few-shot one (keyed on shots, seed and mode), under
a key of its references' bytes, beside a record of the bank's digest (:func:`bank_digest`); a
class whose bank comes out different when it is fitted again has its rows computed again.

Given profiles (``profiles``, from ``tipsomaly fit``): each class with a profile is scored
against it in ``mode`` (default ``fused``), nothing fitted; its rows live in a store below the
zero-shot one under a key of the class, the mode and the profile's :func:`bank_digest`, so they
never mix with zero-shot rows nor with another profile's. A class without a profile is
scored zero-shot, its rows those of the zero-shot store.

Both hand the evaluator one :class:`ClassSetup` per class, and keep :attr:`record`, what
``results.json`` records of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import fingerprint
from ..data.meta import MetaError, Sample, meta_path_for, parse_split
from ..data.names import display_path, relative_name
from ..errors import OutputError, TipsomalyError
from ..files import atomic_write_text
from .store import PredictionStore, sub_store

if TYPE_CHECKING:
    from ..method.detector import Detector
    from .config import EvalConfig

logger = logging.getLogger(__name__)

__all__ = [
    "BANK_RECORD",
    "ClassSetup",
    "DrawnReferences",
    "FewShotError",
    "GivenProfiles",
    "ShotDraw",
    "Skip",
    "bank_digest",
    "draw_shots",
]

#: the file beside a few-shot class's stored rows that records its bank's digest
BANK_RECORD = "bank.json"
#: layouts whose builders put every image in the test split (named in the error)
_TEST_ONLY_LAYOUTS = ("folder", "ksdd", "medical")


class FewShotError(TipsomalyError, ValueError):
    """``shots`` cannot be honoured for a dataset (no train split, too few normal images)."""


class Skip(Exception):
    """A class that cannot be evaluated under the few-shot protocol (why: ``str(skip)``)."""


@dataclasses.dataclass(frozen=True)
class ShotDraw:
    """The reference images of a dataset's classes under the few-shot protocol.

    ``references``: class → its K train normal samples, in draw order; ``skipped``: class →
    why it cannot be evaluated with K references (fewer train normal images than K).
    """

    references: dict[str, list[Sample]]
    skipped: dict[str, str]


@dataclasses.dataclass
class ClassSetup:
    """How one class is evaluated: the store of its rows; ``before_compute``, run once before
    any of its images is computed (True: the stored rows were dropped, compute them all);
    ``share``: the detector holds a profile fitted for it then, which other processes need."""

    store: PredictionStore
    before_compute: Callable[[], bool] | None = None
    share: bool = False


def bank_digest(profile: Any) -> str:
    """:func:`~tipsomaly.method.profile.profile_digest` of a profile without ``sigma`` and
    ``cls`` in its identity: they shape maps and pick the printed token, not the stored
    outputs, so changing them keeps reusing the stored predictions."""
    from ..method.profile import profile_digest

    identity = {k: v for k, v in profile.identity.items() if k not in ("sigma", "cls")}
    return profile_digest(dataclasses.replace(profile, identity=identity))


# -- drawn references ---------------------------------------------------------------------------
class DrawnReferences:
    """The few-shot protocol on one dataset (see the module doc).

    :attr:`record`: ``{"shots", "shot_seed", "mode", "classes": {class: {"references": [paths
    relative to the root, in draw order], "bank": digest}}, "skipped": {class: reason}}``.
    """

    #: the :class:`~.evaluate.EvalResult` field that holds :attr:`record`
    field = "few_shot"

    def __init__(
        self, settings: EvalConfig, draw: ShotDraw, root: Path, detector: Callable[[], Detector]
    ) -> None:
        self.settings, self.draw, self.root, self._detector = settings, draw, root, detector
        self.record: dict[str, Any] = {
            "shots": settings.shots,
            "shot_seed": settings.shot_seed,
            "mode": settings.scoring_mode,
            "classes": {},
            "skipped": {},
        }

    def setup(self, store: PredictionStore, class_name: str) -> ClassSetup:
        """The class's references store (rows of an unrecorded bank dropped) and the
        ``before_compute`` hook that fits the references, drops rows of another bank and
        records the bank.

        Raises:
            Skip: the class has no K usable references.
        """
        if class_name in self.draw.skipped:
            raise Skip(self.draw.skipped[class_name])
        references = self.draw.references[class_name]
        try:
            digests = [fingerprint.file_digest(s.image_path) for s in references]
        except OSError as exc:
            raise Skip(f"a reference image cannot be read ({exc.strerror or exc})") from None
        class_store = sub_store(store, "references", class_name, digests)
        recorded = _read_bank_record(class_store.root)
        if recorded is None and class_store.root.exists():  # rows of an unknown bank
            _drop(class_store.root)
        record = {
            "references": [relative_name(r.image_path, self.root) for r in references],
            "bank": recorded,
        }
        self.record["classes"][class_name] = record

        def before_compute() -> bool:
            """Fit the references and score against them; True: the stored rows are stale."""
            bank = self._fit(class_name, references)
            stale = recorded is not None and recorded != bank
            if stale:
                logger.warning(
                    "class %s: the references give another bank than the stored predictions "
                    "were scored against (%s, now %s); computing the class again",
                    class_name,
                    recorded[:12],
                    bank[:12],
                )
                _drop(class_store.root)
            if stale or recorded is None:
                _write_bank_record(class_store.root, class_name, references, bank)
            record["bank"] = bank
            return stale

        return ClassSetup(class_store, before_compute, share=True)

    def _fit(self, class_name: str, references: Sequence[Sample]) -> str:
        """Fit the class's profile (a bank, no thresholds), set it on the detector in the
        settings' mode; return its :func:`bank_digest`."""
        from ..method.fitting import fit_profile
        from ..method.profile import ProfileError

        detector = self._detector()
        paths = [str(r.image_path) for r in references]
        logger.info(
            "class %s: %d reference image(s) (seed %d): %s",
            class_name,
            len(paths),
            self.settings.shot_seed,
            ", ".join(paths),
        )
        try:
            profile = fit_profile(detector, paths, class_name, calibrate=False, on_error="record")
        except ProfileError as exc:
            raise Skip(str(exc)) from None
        failed = profile.info.get("references", {}).get("errors", [])
        if failed:
            first = failed[0]
            raise Skip(
                f"{len(failed)} of its {len(paths)} reference image(s) cannot be read "
                f"({first['path']}: {first['error']})"
            )
        detector.set_profiles([profile], self.settings.scoring_mode)
        return bank_digest(profile)


def _read_bank_record(folder: Path) -> str | None:
    """The bank digest recorded in ``folder`` (None: no readable record)."""
    try:
        record = json.loads((folder / BANK_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    bank = record.get("bank") if isinstance(record, dict) else None
    return bank if isinstance(bank, str) else None


def _write_bank_record(
    folder: Path, class_name: str, references: Sequence[Sample], bank: str
) -> None:
    paths = [str(r.image_path) for r in references]
    text = json.dumps({"class": class_name, "references": paths, "bank": bank}, indent=1)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(folder, exc) from None
    atomic_write_text(folder / BANK_RECORD, text + "\n")


def _drop(folder: Path) -> None:
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise OutputError(folder, exc) from None


# -- given profiles -----------------------------------------------------------------------------
class GivenProfiles:
    """``profiles`` on one dataset (see the module doc); read here without the model, for
    their digests (the detector loads them again onto its device).

    :attr:`record`: ``{"mode", "classes": {class: {"profile": folder, "bank": digest}},
    "zero_shot": [classes without a profile]}``.

    Raises:
        ProfileError: a profile cannot be read, or two are of one class.
    """

    #: the :class:`~.evaluate.EvalResult` field that holds :attr:`record`
    field = "profiles"

    def __init__(self, settings: EvalConfig) -> None:
        from ..method.profile import load_profiles

        self.profiles = load_profiles(settings.profiles)
        self.mode = settings.scoring_mode
        self.record: dict[str, Any] = {"mode": self.mode, "classes": {}, "zero_shot": []}

    def setup(self, store: PredictionStore, class_name: str) -> ClassSetup:
        """The class's profile store, or the zero-shot ``store`` for a class without one."""
        profile = self.profiles.get(class_name)
        if profile is None:
            self.record["zero_shot"].append(class_name)
            return ClassSetup(store)
        bank = bank_digest(profile)
        self.record["classes"][class_name] = {"profile": profile.name, "bank": bank}
        return ClassSetup(sub_store(store, "profile", class_name, self.mode, bank))


# -- the few-shot draw ---------------------------------------------------------------------------
def _rank(seed: int, class_name: str, relative: str) -> str:
    text = f"{seed}\n{class_name}\n{relative}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(text).hexdigest()


def draw_shots(
    root: str | os.PathLike,
    classes: Sequence[str],
    shots: int,
    seed: int,
    *,
    name: str | None = None,
    allow_outside_root: bool = False,
) -> ShotDraw:
    """Each class's ``shots`` reference images: normal images (``anomaly`` 0) of the dataset's
    ``train`` split, drawn deterministically from ``seed``.

    The draw ranks a class's train normal images by the SHA-256 of (seed, class, path relative
    to the root) and takes the first ``shots``: it depends on nothing else (not on the file
    order, the other classes or the machine), and the K = 1 references of a seed are among its
    K = 2 ones, and so on. A class with fewer than ``shots`` train normal images is in
    ``skipped``.

    Raises:
        FewShotError: no class can be drawn (no train split, as in the ``folder`` layout, or
            too few normal images everywhere).
        MetaError: ``meta.json``'s train entries of these classes are invalid.
    """
    from ..data.meta import _load_json  # the checked reader of read_meta

    root = Path(root)
    name = name or root.resolve().name
    path = meta_path_for(root)
    data = _load_json(path)
    split = None
    if isinstance(data, dict):
        folded = [k for k in data if isinstance(k, str) and k.lower() == "train"]
        split = "train" if "train" in data else folded[0] if len(folded) == 1 else None
    by_class = data.get(split) if split is not None else None
    if split is not None and not isinstance(by_class, dict):
        raise MetaError(path, f"split {split!r} must map class names to lists")
    present = [c for c in classes if by_class and c in by_class]
    train: dict[str, list[Sample]] = {}
    if present:  # the entries of these classes, checked as read_meta checks the test split
        train = parse_split(
            data,
            path.parent,
            split or "train",
            present,
            allow_empty=True,
            source=path,
            allow_outside_root=allow_outside_root,
        ).samples
    references: dict[str, list[Sample]] = {}
    skipped: dict[str, str] = {}
    found: dict[str, int] = {}
    for cls in classes:
        normal = {s.image_path: s for s in train.get(cls, []) if s.anomaly == 0}
        found[cls] = len(normal)
        if len(normal) < shots:
            skipped[cls] = (
                f"only {len(normal)} normal image(s) in the train split, {shots} needed"
                if normal
                else "no normal image in the train split"
            )
            continue
        ranked = sorted(
            normal.values(),
            key=lambda s: _rank(seed, cls, relative_name(s.image_path, path.parent)),
        )
        references[cls] = ranked[:shots]
    if references:
        return ShotDraw(references, skipped)
    if not any(found.values()):
        layout = _layout_note(path.parent)
        raise FewShotError(
            f"dataset {name}: --shots {shots} draws each class's reference images from the "
            f"dataset's train split, but {display_path(path)} lists no normal train "
            f'image{layout}; give it a train split (normal images under "train" in meta.json, '
            "as the mvtec, visa and dagm layouts write) or evaluate without --shots"
        )
    most = max(found.values())
    raise FewShotError(
        f"dataset {name}: --shots {shots} needs {shots} normal train images per class, but no "
        f"class has that many (at most {most}); use --shots {most} or fewer"
    )


def _layout_note(root: Path) -> str:
    from ..data.layouts import detect_layout

    try:
        layout = detect_layout(root)
    except Exception:  # noqa: BLE001 - only a hint in a message
        return ""
    if layout in _TEST_ONLY_LAYOUTS:
        return f" (layout {layout}: it has no train split, every image is a test image)"
    return f" (layout {layout})"
