"""The endpoints: ``GET /health``, ``GET /v1/info``, ``POST /v1/predict`` and the page ``GET /``.

The token and the body-size limit are checked earlier, by :class:`~.app.Guard`, before any body
is read. Endpoints never touch the model: :class:`~.service.Service` queues images for its
model thread, and this module awaits the answers on the event loop (no thread held while
waiting), so the queue, not the server's thread pool, is what bounds the work in flight.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from .config import STATION_HEADER
from .errors import TooLargeError
from .schemas import ErrorResponse, Health, Info, PredictResponse
from .service import LOADING_RETRY_S, Service, station_of, upload_label

STATIC = Path(__file__).resolve().parent / "static"
#: the page loads nothing from elsewhere (no CDN): scripts and styles from /static only
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "style-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter()

_ERRORS = {
    401: {"model": ErrorResponse, "description": "a token is set and the request lacks it"},
    413: {"model": ErrorResponse, "description": "body over --max-upload-mb, or too many files"},
    422: {"model": ErrorResponse, "description": "unreadable image, bad class or option"},
    503: {"model": ErrorResponse, "description": "loading, stopping, or the queue is full"},
}


def service_of(request: Request) -> Service:
    return request.app.state.service


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(request: Request):
    """200 once the model is loaded and serving; 503 while loading (``Retry-After``), after a
    failed load, or while stopping."""
    service = service_of(request)
    status = service.status
    if status == "ready" and service.detector is not None:
        batcher = service.batcher
        return Health(
            status="ready",
            model=None if service.identity is None else service.identity.model.get("name"),
            queued=None if batcher is None else batcher.queued,
        )
    body = Health(status=status, error=service.error).model_dump()
    headers = {"Retry-After": str(LOADING_RETRY_S)} if status == "loading" else {}
    return JSONResponse(body, status_code=503, headers=headers)


@router.get("/v1/info", response_model=Info, responses={401: _ERRORS[401]})
def info(request: Request):
    """The model and its settings, the profiles, the limits and counters of what was served."""
    return service_of(request).info()


@router.post("/v1/predict", response_model=PredictResponse, responses=_ERRORS)
async def predict(
    request: Request,
    file: Annotated[list[UploadFile], File(description="one or more images")],
    class_name: Annotated[
        str | None, Form(description="what the images show; default: the one profile's class")
    ] = None,
    threshold: Annotated[
        float | None,
        Form(
            description="image-score threshold in [0, 2] for is_anomalous (default: the "
            "profile's calibrated one)"
        ),
    ] = None,
    return_map: Annotated[
        str, Form(description="none, png (overlay + grey map) or npy (float32 map)")
    ] = "none",
    roi: Annotated[
        UploadFile | None,
        File(
            description="a region-of-interest mask image for every file of the request (white "
            "= inspect; resized to each image when sizes differ); default: the server's --roi"
        ),
    ] = None,
):
    """Score each uploaded image; the answers come in the order of the ``file`` parts. With
    ``--db``, each answer's record is stored first (``record_id``); the ``X-Station-Id`` header
    names the client's station in it."""
    start = time.perf_counter()
    service = service_of(request)
    service.check_options(threshold, return_map)
    limit = service.config.max_files
    if len(file) > limit:
        raise TooLargeError(f"{len(file)} files in one request; at most {limit} (--max-files)")
    name = service.resolve_class(class_name)
    station = station_of(request.headers.get(STATION_HEADER))
    service.check_room(len(file))  # a full queue: 503 before decoding anything
    uploads = [(upload_label(f.filename, i), await f.read()) for i, f in enumerate(file)]
    mask_part = None if roi is None else (upload_label(roi.filename or "roi", 0), await roi.read())
    read = time.perf_counter()
    mask = None if mask_part is None else await run_in_threadpool(service.decode_roi, *mask_part)
    images = await run_in_threadpool(service.decode, uploads)
    decoded = time.perf_counter()
    futures = service.submit(images, name, mask)
    try:
        answers = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
    except asyncio.CancelledError:  # the client is gone: its images need not be scored
        for f in futures:
            f.cancel()
        raise
    scored = time.perf_counter()

    def render() -> list[dict]:
        return [
            service.result(
                label,
                image,
                pred,
                batch,
                threshold=threshold,
                return_map=return_map,
                request_roi=mask is not None,
            )
            for (label, _), image, ((pred, _ref), batch) in zip(
                uploads, images, answers, strict=True
            )
        ]

    # overlays and maps take a while for large images: off the event loop; scores alone are quick
    results = render() if return_map == "none" else await run_in_threadpool(render)
    rendered = time.perf_counter()
    if service.recorder is not None:  # committed before the answer leaves (or 503, strict)
        await run_in_threadpool(
            service.record, uploads, answers, results, station=station, started=start
        )
    service.metrics.decided(results)
    end = time.perf_counter()
    service.metrics.latency.observe(end - start)
    ms = 1000.0
    return {
        "results": results,
        "timing": {
            "read_ms": round((read - start) * ms, 3),
            "decode_ms": round((decoded - read) * ms, 3),
            "wait_ms": round((scored - decoded) * ms, 3),
            "render_ms": round((rendered - scored) * ms, 3),
            "record_ms": None if service.recorder is None else round((end - rendered) * ms, 3),
            "total_ms": round((end - start) * ms, 3),
        },
    }


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
def page() -> FileResponse:
    """The inspection page (plain HTML and JS from ``static/``; nothing from elsewhere)."""
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=PAGE_HEADERS)


__all__ = ["PAGE_HEADERS", "STATIC", "router"]
