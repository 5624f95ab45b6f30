"""The JSON the service answers with, as pydantic models (the package's only pydantic import).

They document the API (``GET /v1/openapi.json``) and check every answer before it leaves.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Health(BaseModel):
    """``GET /health``: ``ready`` (200), or ``loading`` / ``failed`` / ``stopping`` (503)."""

    status: str = Field(description="ready, loading, failed or stopping")
    model: str | None = Field(None, description="the model's name, once loaded")
    error: str | None = Field(None, description="why loading failed")
    queued: int | None = Field(None, description="images waiting for the model")


class FileResult(BaseModel):
    """One uploaded file's answer."""

    filename: str = Field(description="the upload's file name (or 'file N')")
    class_name: str
    image_score: float | None = Field(
        description="anomaly score in [0, 2], higher = more anomalous (the CLS token of --cls); "
        "equal to `tipsomaly predict`'s for the same file and settings"
    )
    score_cls1: float | None
    score_cls2: float | None
    mode: str = Field(description="zero-shot, or with a profile of the class its mode")
    threshold: float | None = Field(
        description="image-score threshold used for is_anomalous: the request's, else the "
        "profile's calibrated one, else none"
    )
    threshold_source: str | None = Field(
        description="request (the request's threshold), given (the server's --image-threshold "
        "or --threshold), profile (calibrated) or null"
    )
    pixel_threshold: float | None = Field(
        description="the pixel threshold of the defect records: the server's --threshold, else "
        "the profile's calibrated one (null: no defect records)"
    )
    is_anomalous: bool | None = Field(description="image_score >= threshold (null: no threshold)")
    defects: list[dict[str, Any]] | None = Field(
        None,
        description="with a pixel threshold (a profile's or --threshold): the connected regions "
        "of map >= threshold, as predict's scores.json records them (bbox [x0, y0, x1, y1], "
        "area_px, peak, mean, centroid)",
    )
    tiles: int | None = Field(None, description="tiles scored (tiled detectors), else null")
    roi: str | None = Field(
        None,
        description="the region of interest applied: request (the request's roi part), server "
        "(the server's --roi) or null (the whole image); the map is 0 outside it",
    )
    notes: list[str] = Field(default_factory=list, description="remarks (a resized ROI mask)")
    size: list[int] = Field(description="[height, width] of the image, after EXIF orientation")
    batch_images: int = Field(description="images in the forward pass that scored this one")
    queue_ms: float = Field(description="from queueing to the start of that forward pass")
    forward_ms: float = Field(description="that forward pass")
    overlay_png: str | None = Field(
        None,
        description="return_map=png: base64 PNG, heat map over the image, original size; "
        "colours as `predict` draws them (with a pixel threshold: it is green, twice it red; "
        "else map 0..1 blue..red)",
    )
    map_png: str | None = Field(
        None, description="return_map=png: base64 8-bit grey PNG, value/255 = map, original size"
    )
    map_npy: str | None = Field(
        None, description="return_map=npy: base64 .npy file, float32 (H, W) map, original size"
    )
    error: str | None = Field(None, description="why this image has no score (non-finite)")
    record_id: int | None = Field(
        None, description="with --db: the id of this decision's record (null: not recorded)"
    )


class Timing(BaseModel):
    """Where a request's time went, in milliseconds."""

    read_ms: float = Field(description="reading the uploaded parts")
    decode_ms: float = Field(description="decoding the images")
    wait_ms: float = Field(description="queued and scored (the forward passes)")
    render_ms: float = Field(description="overlays, maps and the answer")
    record_ms: float | None = Field(
        None, description="with --db: storing the records (committed before answering)"
    )
    total_ms: float


class PredictResponse(BaseModel):
    """``POST /v1/predict``: one result per ``file`` part, in order."""

    results: list[FileResult]
    timing: Timing


class ErrorItem(BaseModel):
    filename: str
    error: str


class ErrorResponse(BaseModel):
    """Every refusal: 401, 413, 422 (also FastAPI's own form checks, whose ``detail`` is a
    list), 503 (with a ``Retry-After`` header when retrying can help)."""

    detail: Any = Field(description="what is wrong and what to do")
    errors: list[ErrorItem] | None = Field(None, description="422: each unreadable upload")


class ProfileInfo(BaseModel):
    class_name: str | None
    path: str | None
    mode: str | None = None
    threshold: float | None = None
    pixel_threshold: float | None = None


class Info(BaseModel):
    """``GET /v1/info``: what is served and how; ``stats`` counts the requests and forwards."""

    version: str
    status: str
    error: str | None
    model: str | None
    model_spec: str | None
    image_size: int | None
    dtype: str | None
    device: str | None
    prompt_type: str | None
    pixel_prompts: str | None
    sigma: float | None
    cls: str | None
    engine: str | None = Field(None, description="torch, onnxruntime or openvino")
    tile: int | str | None = None
    tile_overlap: float | None = None
    tiling: dict[str, Any] | None = Field(None, description="{tile, overlap}; null: untiled")
    roi: str | None = Field(
        None, description="the server's ROI mask file (--roi), applied without a roi part"
    )
    image_threshold: float | None = Field(None, description="--image-threshold, if given")
    pixel_threshold: float | None = Field(None, description="--threshold, if given")
    min_defect_area: int | None = None
    identity: dict[str, Any] | None = Field(
        None, description="what produces the scores (model fingerprint, prompts, tiling...)"
    )
    mode: str | None
    profiles: list[ProfileInfo]
    classes: list[str] | None = Field(description="class names accepted (null: any)")
    limits: dict[str, Any]
    auth: bool = Field(description="whether /v1/ needs a bearer token")
    records: dict[str, Any] | None = Field(
        None, description="with --db: {db (no password), keep_images, mode strict|best-effort}"
    )
    stats: dict[str, Any]


__all__ = [
    "ErrorItem",
    "ErrorResponse",
    "FileResult",
    "Health",
    "Info",
    "PredictResponse",
    "ProfileInfo",
    "Timing",
]
