"""``GET /metrics``: the service's counters in the Prometheus text format (prometheus-client).

Each app has its own :class:`~prometheus_client.CollectorRegistry` (several apps in one process,
as in tests, do not clash). The metrics (``_total`` is added to counters by the library):

- ``tipsomaly_http_requests_total{method, route, status}``: every request answered (``route``
  the path template, ``other`` for unknown paths);
- ``tipsomaly_predict_latency_seconds``: histogram of ``POST /v1/predict``'s answer time;
- ``tipsomaly_batch_images``: histogram of the images per forward pass;
- ``tipsomaly_queue_images``: images waiting for the model now;
- ``tipsomaly_decisions_total{class_name, outcome}``: outcome anomalous, normal, undecided (no
  threshold) or error;
- ``tipsomaly_flag_rate{class_name}``: the share of decided images flagged since the start;
- ``tipsomaly_records_total{result}``: records stored, or failed (best-effort: answered
  without one; strict: refused with 503);
- ``tipsomaly_profile_version{class_name}``: the profile version deciding the class now;
- ``tipsomaly_profile_reloads_total{result}``: reloads done or failed.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import require

#: latency buckets, seconds: 5 ms to 30 s
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
OUTCOMES = ("anomalous", "normal", "undecided", "error")


def outcome(result: dict[str, Any]) -> str:
    """One answer's outcome label (see the module doc)."""
    if result.get("error"):
        return "error"
    flagged = result.get("is_anomalous")
    return "undecided" if flagged is None else "anomalous" if flagged else "normal"


class Metrics:
    """The service's Prometheus metrics (see the module doc); ``queued`` reads the queue depth
    when scraped."""

    def __init__(self, queued: Callable[[], int]) -> None:
        pc = require("prometheus_client", "serve", "GET /metrics")
        self.registry = pc.CollectorRegistry()
        r = self.registry
        self.content_type = pc.CONTENT_TYPE_LATEST
        self._generate = pc.generate_latest
        self.requests = pc.Counter(
            "tipsomaly_http_requests", "HTTP requests answered", ["method", "route", "status"],
            registry=r,
        )  # fmt: skip
        self.latency = pc.Histogram(
            "tipsomaly_predict_latency_seconds", "POST /v1/predict answer time",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch = pc.Histogram(
            "tipsomaly_batch_images", "images per forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue = pc.Gauge("tipsomaly_queue_images", "images waiting for the model", registry=r)
        self.queue.set_function(queued)
        self.decisions = pc.Counter(
            "tipsomaly_decisions", "decisions answered", ["class_name", "outcome"], registry=r
        )
        self.flag_rate = pc.Gauge(
            "tipsomaly_flag_rate", "share of decided images flagged since the start",
            ["class_name"], registry=r,
        )  # fmt: skip
        self.records = pc.Counter(
            "tipsomaly_records", "records stored or failed", ["result"], registry=r
        )
        self.profile_version = pc.Gauge(
            "tipsomaly_profile_version", "profile version deciding the class", ["class_name"],
            registry=r,
        )  # fmt: skip
        self.reloads = pc.Counter(
            "tipsomaly_profile_reloads", "profile reloads", ["result"], registry=r
        )
        self._lock = threading.Lock()
        self._decided: Counter[str] = Counter()
        self._flagged: Counter[str] = Counter()

    def decided(self, results: Iterable[dict[str, Any]]) -> None:
        """Count the answers of a request."""
        for result in results:
            name, label = result["class_name"], outcome(result)
            self.decisions.labels(name, label).inc()
            if label in ("anomalous", "normal"):
                with self._lock:
                    self._decided[name] += 1
                    self._flagged[name] += label == "anomalous"
                    rate = self._flagged[name] / self._decided[name]
                self.flag_rate.labels(name).set(rate)

    def versions(self, versions: dict[str, Any]) -> None:
        """The profile versions now deciding (class → :class:`~.profiles.ProfileRef`)."""
        for name, ref in versions.items():
            if ref.version is not None:
                self.profile_version.labels(name).set(ref.version)

    def exposition(self) -> bytes:
        return self._generate(self.registry)


class CountRequests:
    """ASGI middleware counting each HTTP answer in ``tipsomaly_http_requests_total`` (the
    route's path template, known once routed)."""

    def __init__(self, app: Any, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "other"
            self.metrics.requests.labels(scope["method"], path, str(status[0])).inc()


__all__ = ["CountRequests", "Metrics", "outcome"]
