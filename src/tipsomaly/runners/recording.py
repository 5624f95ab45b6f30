"""``predict --db``: one record per scored image, as ``serve --db`` writes them (source
``predict``, the input's path as ``filename``, no station, no latency).

Each record is committed before its row is added to ``scores.csv``, so no decision of the run
exists without its record; a database that cannot take one stops the run (the rows written
before stay, each with its record).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..method.profile import profile_digest
from ..records.images import ImageStore, sha256
from ..records.store import RecordStore, decision_record

if TYPE_CHECKING:
    from ..method.pipeline import Predictor
    from ..method.prediction import Prediction

logger = logging.getLogger(__name__)


class PredictRecords:
    """The records database (and image folder) of a ``predict`` run.

    Raises:
        MissingExtraError, RecordsError, RecordsUnavailableError: the database cannot be
            opened; OutputError: the image folder cannot be made.
    """

    def __init__(self, db: str | os.PathLike, keep_images: str | os.PathLike | None = None) -> None:
        self.store = RecordStore(db)
        self.images = None if keep_images is None else ImageStore(keep_images)
        self.written = 0
        self._predictor: Predictor | None = None
        self._refs: dict[str, tuple[str, int]] = {}
        self._identity: dict[str, Any] = {}

    def _setup(self, predictor: Predictor) -> None:
        if self._predictor is not predictor:
            self._predictor = predictor
            self._identity = predictor.identity.to_dict()
            profiles = getattr(predictor, "profiles", None) or {}
            self._refs = {n: (profile_digest(p), p.version) for n, p in profiles.items()}

    def add(self, predictor: Predictor, prediction: Prediction) -> int | None:
        """Record one prediction of ``predictor``; its id (None for an input that cannot be
        read: it has no decision and no bytes to name it by).

        Raises:
            RecordsUnavailableError: the record could not be stored.
        """
        self._setup(predictor)
        path = Path(prediction.source)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        digest, map_digest = sha256(data), None
        if self.images is not None:
            m = prediction.anomaly_map_original if prediction.ok else None
            digest, map_digest = self.images.keep(data, m)
        profile_id, version = self._refs.get(prediction.class_name, (None, None))
        size = prediction.original_size or (None, None)
        answer = prediction.to_dict()
        answer["roi"] = None if prediction.roi is None else "run"  # --roi or --roi-dir
        (record_id,) = self.store.add(
            [
                decision_record(
                    answer,
                    source="predict",
                    filename=str(path),
                    image_sha256=digest,
                    image_kept=self.images is not None,
                    map_sha256=map_digest,
                    height=size[0],
                    width=size[1],
                    profile_id=profile_id,
                    profile_version=version,
                    identity=self._identity,
                )
            ]
        )
        self.written += 1
        return record_id

    def close(self) -> None:
        self.store.close()


__all__ = ["PredictRecords"]
