"""What the service answers besides 200: each error carries its HTTP status (no FastAPI here)."""

from __future__ import annotations

from typing import Any

from ..errors import TipsomalyError


class ServiceError(TipsomalyError):
    """A request the service refuses; ``status`` is the HTTP status it is answered with,
    ``errors`` optional details (one dict per problem), ``retry_after`` seconds for 503."""

    status = 500

    def __init__(
        self,
        message: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.errors = errors or []
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"detail": message[, "errors": [...]]}``."""
        out: dict[str, Any] = {"detail": str(self)}
        if self.errors:
            out["errors"] = self.errors
        return out

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class BadRequestError(ServiceError, ValueError):
    """Unreadable uploads, an unknown class, a threshold out of range: 422."""

    status = 422


class NotFoundError(ServiceError, KeyError):
    """An unknown record id, or a record whose image was not kept: 404."""

    status = 404

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConflictError(ServiceError, ValueError):
    """A request that contradicts the state it acts on (a review of another class, a reload
    with nothing to reload): 409."""

    status = 409


class TooLargeError(ServiceError, ValueError):
    """A request body or file count over the limits: 413."""

    status = 413


class UnavailableError(ServiceError, RuntimeError):
    """The model is loading, failed to load, or the service is stopping: 503."""

    status = 503


class QueueFullError(UnavailableError):
    """More images wait for the model than the queue holds: 503 with ``Retry-After``."""


__all__ = [
    "BadRequestError",
    "ConflictError",
    "NotFoundError",
    "QueueFullError",
    "ServiceError",
    "TooLargeError",
    "UnavailableError",
]
