"""What the server tells its operator: Prometheus metrics, model headers, JSON-lines access logs.

Metrics are ``prometheus_client`` objects in a registry of the app. With several server processes
(``digitlab serve --processes N``) prometheus_client's multiprocess mode is on
(``PROMETHEUS_MULTIPROC_DIR`` is set before any process imports it): every process writes its
values to files in that folder and ``/metrics``, whichever process answers, sums them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Requests take 1 to 50 ms when all goes well; photos for /v1/read up to a few seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The server's metrics; ``render()`` is the body of ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("digitlab_http_requests", "HTTP requests answered, by route template and status.",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("digitlab_http_request_duration_seconds",
                                 "Time from the request's arrival to the end of its answer, by route template.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("digitlab_inference_batch_size", "Images per forward pass of the model.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.preprocessed = Counter("digitlab_images_preprocessed", "Uploaded pictures decoded and preprocessed, "
                                    "by where: inline (small ones), worker (a worker process) or thread.",
                                    ["where"], registry=r)
        self.load_seconds = Gauge("digitlab_model_load_seconds", "Seconds the server process took to load the model.",
                                  registry=r, multiprocess_mode="max")
        self.model = Gauge("digitlab_model_info", "The model being served (always 1).", ["name", "version", "sha256"],
                           registry=r, multiprocess_mode="max")

    def render(self) -> tuple[bytes, str]:
        folder = multiprocess_dir()
        if folder is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=folder)
        return generate_latest(merged), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Drop the live gauges of a server process that has ended (multiprocess mode only)."""
    if multiprocess_dir() is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class Observer:
    """Pure-ASGI middleware: counts and times every HTTP request, adds the model's identity headers
    to every answer and, given a stream, writes one JSON line per request to it."""

    def __init__(self, app: Any, metrics: Metrics, identity: dict[str, str], access_log: Any = None) -> None:
        self.app, self.metrics, self.access_log = app, metrics, access_log
        self.headers = [(f"x-model-{k}".encode(), str(v).encode()) for k, v in identity.items()]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering
        sent = 0
        received = 0

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        async def observing_send(message: dict) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), *self.headers]}
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, observing_send)
        finally:
            seconds = time.perf_counter() - t0
            route_obj = scope.get("route")
            # The template, never the raw path: unknown paths would each make a new series.
            route = getattr(route_obj, "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(seconds)
            if self.access_log is not None:
                self._log(scope, route, status, seconds, received, sent)

    def _log(self, scope: dict, route: str, status: int, seconds: float, received: int, sent: int) -> None:
        client = scope.get("client")
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
            "client": f"{client[0]}:{client[1]}" if client else None,
            "method": scope["method"],
            "path": scope["path"],
            "route": route,
            "status": status,
            "ms": round(seconds * 1000, 3),
            "bytes_in": received,
            "bytes_out": sent,
            "pid": os.getpid(),
        }
        try:
            self.access_log.write(json.dumps(line, separators=(",", ":")) + "\n")
            self.access_log.flush()
        except (OSError, ValueError):  # a closed or full log must not fail the request
            pass


def open_access_log(target: str | None) -> Any:
    """``-``: standard error; a path: appended to (line-buffered); None: no access log."""
    if target is None:
        return None
    if target == "-":
        return sys.stderr
    return open(target, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the server
