"""The records, review, reload and monitoring endpoints (``serve --db``):

- ``GET /v1/records``: the newest records first, filtered (``outcome`` anomalous|normal,
  ``unreviewed``, ``class_name``, ``station``, ``since``/``until`` ISO 8601 or epoch seconds),
  paged by ``before_id``; ``GET /v1/records/{id}``, its ``/image`` (the upload, as kept by
  ``--keep-images``) and ``/overlay`` (PNG heat map over it, drawn from the kept map);
- ``POST /v1/records/{id}/review`` ``{"verdict", "reviewer", "class"?}``;
- ``POST /v1/profiles/reload``: switch to the profile folders' current versions;
- ``GET /v1/monitor``: the drift check of each profiled class;
- ``GET /metrics``: Prometheus (open like ``/health``: a scraper carries no token).

Everything under ``/v1/`` is behind the service's token (:class:`~.app.Guard`). A database
that cannot answer gives 503, an unknown id 404, a review that does not fit its record 409.
"""

from __future__ import annotations

import contextlib
import datetime
import io
from collections.abc import Iterator
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidOptionError, first_line
from ..records import RecordNotFoundError, RecordsUnavailableError, ReviewConflictError
from ..report.overlay import overlay
from .errors import BadRequestError, ConflictError, NotFoundError, UnavailableError
from .service import Service

router = APIRouter()


class Review(BaseModel):
    """``POST /v1/records/{id}/review``'s body."""

    model_config = ConfigDict(populate_by_name=True)

    verdict: str = Field(
        description="confirmed_defect or false_alarm (a flagged record); missed_defect or "
        "confirmed_normal (a passed one)"
    )
    reviewer: str = Field(description="who reviewed it")
    class_name: str | None = Field(
        None, alias="class", description="optional: must be the record's class"
    )


def _service(request: Request) -> Service:
    return request.app.state.service


def _recorder(request: Request):
    recorder = _service(request).recorder
    if recorder is None:
        raise ConflictError("this server keeps no records: start it with --db")
    return recorder


@contextlib.contextmanager
def _answers() -> Iterator[None]:
    """The records' errors as HTTP answers (one line each)."""
    try:
        yield
    except RecordNotFoundError as exc:
        raise NotFoundError(str(exc)) from None
    except ReviewConflictError as exc:
        raise ConflictError(str(exc)) from None
    except RecordsUnavailableError as exc:
        raise UnavailableError(first_line(exc), retry_after=5) from None
    except InvalidOptionError as exc:
        raise BadRequestError(first_line(exc)) from None


def _when(text: str | None, name: str) -> float | None:
    """``since``/``until``: epoch seconds, or ISO 8601 (UTC unless it says)."""
    if text is None or not text.strip():
        return None
    with contextlib.suppress(ValueError):
        return float(text)
    try:
        t = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadRequestError(f"{name} must be ISO 8601 or epoch seconds, got {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    return t.timestamp()


@router.get("/v1/records")
def list_records(
    request: Request,
    outcome: Annotated[str | None, Query(description="anomalous or normal")] = None,
    unreviewed: bool = False,
    class_name: str | None = None,
    station: str | None = None,
    since: Annotated[str | None, Query(description="ISO 8601 or epoch seconds")] = None,
    until: str | None = None,
    before_id: int | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """The newest records first; the next page: ``before_id`` = the last id of this one."""
    recorder = _recorder(request)
    with _answers():
        rows = recorder.store.query(
            outcome=outcome or None,
            unreviewed=unreviewed,
            class_name=class_name or None,
            station=station or None,
            since=_when(since, "since"),
            until=_when(until, "until"),
            before_id=before_id,
            limit=limit,
        )
    return {"records": rows, "next_before_id": rows[-1]["id"] if len(rows) == limit else None}


@router.get("/v1/records/{record_id}")
def get_record(request: Request, record_id: int) -> dict[str, Any]:
    """One record with its reviews."""
    recorder = _recorder(request)
    with _answers():
        return recorder.store.get(record_id)


def _kept(request: Request, record_id: int) -> tuple[dict[str, Any], bytes]:
    recorder = _recorder(request)
    with _answers():
        record = recorder.store.get(record_id)
    data = None if recorder.images is None else recorder.images.get(record["image_sha256"])
    if data is None:
        raise NotFoundError(f"record {record_id}'s image was not kept (serve --keep-images DIR)")
    return record, data


@router.get("/v1/records/{record_id}/image")
def record_image(request: Request, record_id: int) -> Response:
    """The image as uploaded."""
    _, data = _kept(request, record_id)
    with contextlib.suppress(Exception), Image.open(io.BytesIO(data)) as im:
        kind = Image.MIME.get(im.format or "", "application/octet-stream")
        return Response(data, media_type=kind, headers={"Cache-Control": "private, max-age=3600"})
    return Response(data, media_type="application/octet-stream")


@router.get("/v1/records/{record_id}/overlay")
async def record_overlay(request: Request, record_id: int) -> Response:
    """The heat map over the image (PNG, the image's size), coloured as the answer's
    ``overlay_png``: with a pixel threshold t, t green and 2 t red."""
    record, data = _kept(request, record_id)
    recorder = _service(request).recorder
    grey = None if record["map_sha256"] is None else recorder.images.get(record["map_sha256"])
    if grey is None:
        raise NotFoundError(f"record {record_id} has no kept map (no score)")
    service = _service(request)

    def draw() -> bytes:
        image = service.decode([(f"record {record_id}", data)])[0]
        with Image.open(io.BytesIO(grey)) as m:
            anomaly_map = np.asarray(m, dtype=np.float32) / 255.0
        t = record["pixel_threshold"]
        span = (0.0, 2.0 * t) if t is not None and t > 0 else None
        buf = io.BytesIO()
        Image.fromarray(overlay(image, anomaly_map, span=span)).save(buf, "PNG")
        return buf.getvalue()

    png = await run_in_threadpool(draw)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.post("/v1/records/{record_id}/review")
def review_record(request: Request, record_id: int, review: Review) -> dict[str, Any]:
    """Store a verdict on a record; the record afterwards (with every review)."""
    recorder = _recorder(request)
    with _answers():
        return recorder.store.review(record_id, review.verdict, review.reviewer, review.class_name)


@router.post("/v1/profiles/reload")
async def reload_profiles(request: Request) -> dict[str, Any]:
    """Switch to the profile folders' current versions (in-flight batches finish on the old)."""
    return await run_in_threadpool(_service(request).reload)


@router.get("/v1/monitor")
def monitor(request: Request) -> dict[str, Any]:
    """Per profiled class: is the false-alarm promise still kept, have the scores moved."""
    service = _service(request)
    recorder = _recorder(request)
    with _answers():
        return service.monitor(recorder.store)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    m = _service(request).metrics
    return Response(m.exposition(), media_type=m.content_type)


__all__ = ["Review", "router"]
