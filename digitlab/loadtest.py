"""Load generator for ``digitlab bench serve``: many keep-alive clients on loopback, for a fixed time.

The server runs as its own process (``digitlab serve``), so the two do not share a GIL. The
client is deliberately cheap, because it burns the same CPU cores as the server: one Python
process, one asyncio event loop (uvloop when installed), one HTTP/1.1 keep-alive connection per
simulated client over raw asyncio streams, requests pre-encoded once, and responses checked by
status line only (their predictions are checked once, before the timed part). Each client sends
its next request as soon as the previous answer has arrived (a closed loop), so requests/s is
the server's throughput at that concurrency.

Payloads (single-image predictions of MNIST test digits, cycled through 200 different ones):

- ``json``: ``POST /v1/predict`` with ``{"pixels": 28x28 array}``, the model's input as is;
- ``png``: ``POST /v1/predict`` with a multipart upload of the digit as a PNG file (dark ink on
  white, as a user's picture), so the server decodes and preprocesses it the MNIST way.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

CLIENT = ("1 Python process, asyncio streams (uvloop if installed), one HTTP/1.1 keep-alive connection "
          "per client, closed loop")
PAYLOADS = ("json", "png")


def start_server(run: str | Path, host: str = "127.0.0.1", port: int = 0, runtime: str = "torch",
                 timeout: float = 90.0, extra: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``digitlab serve RUN`` as a subprocess; returns it and its URL once /healthz answers."""
    from digitlab.errors import DigitlabError

    log = tempfile.TemporaryFile()
    cmd = [sys.executable, "-m", "digitlab", "serve", str(run), "--host", host, "--port", str(port),
           "--runtime", runtime, *(extra or [])]
    # Own session: stop_server can then end the image workers too (they could outlive a terminated server).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    url = None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    line = b""
    try:
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            if sel.select(timeout=0.2):
                chunk = os.read(proc.stdout.fileno(), 4096)
                line += chunk
                for text in line.decode(errors="replace").splitlines():
                    if " on http://" in text:
                        url = text.split(" on ", 1)[1].split()[0].rstrip("/")
        while url is not None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return proc, url
            except OSError:
                time.sleep(0.1)
    finally:
        sel.close()
    stop_server(proc)
    log.seek(0)
    tail = log.read().decode(errors="replace").strip().splitlines()[-5:]
    raise DigitlabError(f"The server for run '{run}' did not come up within {timeout:.0f} s "
                        f"({' / '.join(tail) or 'no output'}); try 'digitlab serve {run}' to see why.")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(OSError):  # what is left of the server's session: forkserver and workers
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.stdout:
        proc.stdout.close()


def _http_request(host: str, port: int, path: str, body: bytes, content_type: str) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + body


def _png(digit: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(255 - digit).save(buf, format="PNG")  # dark ink on white, like a drawing
    return buf.getvalue()


def build_requests(kind: str, host: str, port: int, n: int = 200) -> tuple[list[bytes], list[str]]:
    """Pre-encoded HTTP requests for ``n`` MNIST test digits, and their true classes."""
    from digitlab.data import load_dataset

    ds = load_dataset("mnist")
    images, labels = ds.test_images[:n], ds.test_labels[:n]
    out = []
    for img in images:
        if kind == "json":
            body = json.dumps({"pixels": img.tolist()}, separators=(",", ":")).encode()
            out.append(_http_request(host, port, "/v1/predict", body, "application/json"))
        elif kind == "png":
            boundary = "digitlabbench0123456789"
            body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"digit.png\"\r\n"
                    "Content-Type: image/png\r\n\r\n").encode() + _png(img) + f"\r\n--{boundary}--\r\n".encode()
            out.append(_http_request(host, port, "/v1/predict", body, f"multipart/form-data; boundary={boundary}"))
        else:
            from digitlab.errors import ConfigError

            raise ConfigError(f"Unknown payload '{kind}'; choose json, png or both.")
    return out, [ds.classes[int(y)] for y in labels]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def _check(host: str, port: int, requests: list[bytes], classes: list[str]) -> float:
    """Send every request once and return the share answered with the true class."""
    reader, writer = await asyncio.open_connection(host, port)
    right = 0
    try:
        for req, cls in zip(requests, classes, strict=True):
            writer.write(req)
            status, body = await _read_response(reader)
            right += status == 200 and json.loads(body).get("class") == cls
    finally:
        writer.close()
    return right / len(requests)


async def _load(host: str, port: int, requests: list[bytes], clients: int, seconds: float,
                warmup: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    async def client(k: int) -> None:
        i = k * 7
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                writer.write(requests[i % len(requests)])
                i += 1
                try:
                    status, _ = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    return
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    latencies.append(t1 - t0)
                    if status != 200:
                        errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = min(time.perf_counter(), stop_at) - measure_from
    lat = np.asarray(latencies) * 1000.0
    q = np.percentile(lat, [50, 95, 99]) if lat.size else [float("nan")] * 3
    return {
        "requests": int(lat.size),
        "seconds": round(elapsed, 3),
        "requests_per_second": round(lat.size / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": {"p50": round(float(q[0]), 2), "p95": round(float(q[1]), 2), "p99": round(float(q[2]), 2),
                       "max": round(float(lat.max()), 2) if lat.size else float("nan")},
        "errors": sum(errors.values()),
        "error_kinds": errors,
    }


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid`` and its descendants (its image
    workers); None: this process. None is returned where /proc is missing (not Linux)."""
    if pid is None:
        return time.process_time()
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        stats = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    stats[int(entry.name)] = (int(fields[1]), sum(int(v) for v in fields[11:15]))
    except OSError:
        return None
    tree, total, grew = {pid}, 0, True
    while grew:
        new = {p for p, (ppid, _) in stats.items() if ppid in tree} - tree
        tree |= new
        grew = bool(new)
    total = sum(stats[p][1] for p in tree if p in stats)
    return total / ticks if pid in stats else None


def load(url: str, kind: str = "json", clients: int = 32, seconds: float = 10.0, warmup: float = 1.0,
         server_pid: int | None = None) -> dict:
    """Run the closed-loop load against a running server; ``kind`` is a payload of ``PAYLOADS``."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests, classes = build_requests(kind, host, port)
    accuracy = _run(_check(host, port, requests, classes))
    cpu0 = _cpu_seconds(None), _cpu_seconds(server_pid) if server_pid else None
    # The client is the stopwatch: a full garbage collection here (tens of ms with numpy and
    # torch imported) would be counted as server latency. The timed run is bounded, so its few
    # cycles can wait until it ends.
    gc.collect()
    gc.disable()
    try:
        result = _run(_load(host, port, requests, clients, seconds, warmup))
    finally:
        gc.enable()
    cpu1 = _cpu_seconds(None), _cpu_seconds(server_pid) if server_pid else None
    # CPU per request of each side (warm-up included in both counts), a figure less sensitive than
    # requests/s to other work on a shared machine.
    total = result["requests"] * (seconds + warmup) / seconds if result["requests"] else 0
    cpu = {}
    for side, a, b in (("client", cpu0[0], cpu1[0]), ("server", cpu0[1], cpu1[1])):
        if a is not None and b is not None and total:
            cpu[f"{side}_ms_per_request"] = round((b - a) * 1000 / total, 3)
    return {"payload": kind, "clients": clients, "check_accuracy": round(accuracy, 4), **result, "cpu": cpu}


def bench_serve(run: str | Path = "latest", clients: int = 32, seconds: float = 10.0, payload: str = "both",
                runtime: str = "torch", warmup: float = 1.0, server_args: list[str] | None = None) -> dict[str, Any]:
    """Start ``digitlab serve`` on loopback, load it with each payload in turn, stop it; figures per payload."""
    from digitlab.bench import machine_info
    from digitlab.errors import ConfigError
    from digitlab.runs import resolve_run

    if clients < 1:
        raise ConfigError(f"--clients {clients} sends nothing; give 1 or more clients.")
    if not 0 < seconds <= 3600:
        raise ConfigError(f"--seconds {seconds} is out of range; give a duration from 0 to 3600 seconds.")
    kinds = list(PAYLOADS) if payload == "both" else [payload]
    if any(k not in PAYLOADS for k in kinds):
        raise ConfigError(f"Unknown payload '{payload}'; choose json, png or both.")
    path = resolve_run(run)
    proc, url = start_server(path, runtime=runtime, extra=server_args)
    try:
        results = {k: load(url, k, clients, seconds, warmup, proc.pid) for k in kinds}
    finally:
        stop_server(proc)
    return {
        "run": str(path),
        "runtime": runtime,
        "client": CLIENT,
        "server": f"digitlab serve {' '.join(server_args or [])} (uvicorn, adaptive micro-batching, 1 torch thread)"
        .replace("  ", " "),
        "server_args": server_args or [],
        "machine": machine_info(),
        "target": {"requests_per_second": 800, "p99_ms": 50, "clients": 32, "errors": 0},
        "results": results,
    }


def print_serve(result: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"digitlab bench serve: {result['run']} ({result['runtime']})")
    # "right": share of the checked requests answered with the true class; CPU in ms per request.
    for col in ("payload", "clients", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "right", "srv cpu",
                "cli cpu"):
        table.add_column(col, justify="left" if col == "payload" else "right")
    for r in result["results"].values():
        lat = r["latency_ms"]
        table.add_row(r["payload"], str(r["clients"]), f"{r['requests_per_second']:.0f}", f"{lat['p50']:.1f}",
                      f"{lat['p95']:.1f}", f"{lat['p99']:.1f}", str(r["errors"]), f"{r['check_accuracy']:.1%}",
                      *(f"{r['cpu'][k]:.2f}" if k in r["cpu"] else "-"
                        for k in ("server_ms_per_request", "client_ms_per_request")))
    console.print(table)
    m = result["machine"]
    console.print(f"client: {result['client']}", highlight=False, soft_wrap=True)
    console.print(f"server: {result['server']}", highlight=False, soft_wrap=True)
    console.print(f"machine: {m['cpu']}, {m['cores']} cores, load {m['load_average']}", highlight=False)
    console.print("payloads: json = 28x28 pixel array; png = multipart upload of a PNG, preprocessed by the server",
                  highlight=False)
