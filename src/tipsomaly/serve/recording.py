"""One record per decision (``serve --db``): what :class:`Recorder` stores for each answer.

The route calls :meth:`Recorder.write` once per request, after the answers are made and before
they are sent: one transaction for the request's records. ``strict`` (the default): when the
records cannot be stored (database down, full, read-only), the request is answered 503 and
logged in one line, so no decision leaves without its record. ``best-effort``: the answers go
out anyway with ``record_id`` null, the failure is logged and counted
(``tipsomaly_records_total{result="failed"}``).

With ``--keep-images`` the upload's bytes and its map (an 8-bit grey PNG) are kept by SHA-256
before the record is committed, so a record never names an image that is not there (an image
without a record, after a failure, is harmless: the next request of it reuses it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import OutputError, first_line
from ..records import RecordsError
from ..records.images import ImageStore, sha256
from ..records.store import RecordStore, decision_record
from .config import ServeConfig
from .errors import UnavailableError

if TYPE_CHECKING:
    from ..method.prediction import Prediction
    from .monitoring import Metrics
    from .profiles import ProfileRef

logger = logging.getLogger(__name__)


@dataclass
class Decision:
    """What one answered file is recorded from."""

    filename: str
    data: bytes
    prediction: Prediction
    result: dict[str, Any]
    profile: ProfileRef


class Recorder:
    """The records database (and image folder) of a service.

    Raises:
        MissingExtraError, RecordsError: the database cannot be opened (one line).
        OutputError: the image folder cannot be made.
    """

    def __init__(self, config: ServeConfig, metrics: Metrics | None = None) -> None:
        assert config.db is not None
        self.strict = config.records == "strict"
        self.store = RecordStore(config.db, durable=self.strict)
        self.images = None if config.keep_images is None else ImageStore(config.keep_images)
        self.metrics = metrics
        self.failed = 0
        self.stored = 0

    def write(
        self,
        decisions: Sequence[Decision],
        *,
        station: str | None,
        identity: dict[str, Any] | None,
        latency_ms: float,
    ) -> list[int | None]:
        """Store one record per decision (one transaction); their ids, also set as each
        answer's ``record_id``.

        Raises:
            UnavailableError: strict, and the records could not be stored (503).
        """
        try:
            rows = [self._row(d, station, identity, latency_ms) for d in decisions]
            ids: list[int | None] = list(self.store.add(rows))
        except (RecordsError, OutputError) as exc:
            self.failed += len(decisions)
            if self.metrics is not None:
                self.metrics.records.labels("failed").inc(len(decisions))
            reason = first_line(exc)
            if self.strict:
                logger.error("not answered (--records strict): %s", reason)
                raise UnavailableError(
                    f"the decision was not answered: its record cannot be stored ({reason})",
                    retry_after=5,
                ) from None
            logger.error("answered without a record (--records best-effort): %s", reason)
            ids = [None] * len(decisions)
        else:
            self.stored += len(ids)
            if self.metrics is not None:
                self.metrics.records.labels("stored").inc(len(ids))
        for d, record_id in zip(decisions, ids, strict=True):
            d.result["record_id"] = record_id
        return ids

    def _row(
        self, d: Decision, station: str | None, identity: dict[str, Any] | None, latency_ms: float
    ) -> dict[str, Any]:
        digest, map_digest = sha256(d.data), None
        if self.images is not None:
            m = d.prediction.anomaly_map_original if d.prediction.ok else None
            digest, map_digest = self.images.keep(d.data, m)
        height, width = d.result.get("size") or (None, None)
        return decision_record(
            d.result,
            source="serve",
            station=station,
            filename=d.filename,
            image_sha256=digest,
            image_kept=self.images is not None,
            map_sha256=map_digest,
            width=width,
            height=height,
            profile_id=d.profile.id,
            profile_version=d.profile.version,
            identity=identity or {},
            latency_ms=round(latency_ms, 3),
        )

    def close(self) -> None:
        self.store.close()


__all__ = ["Decision", "Recorder"]
