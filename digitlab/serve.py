"""The HTTP API and the draw-a-digit page over one ``Predictor``.

``create_app(run)`` loads the model once and returns a FastAPI app:

    POST /v1/predict        one image: multipart upload, raw image body, JSON {"image": base64}
                            or JSON {"pixels": 28x28 array of 0..255}
    POST /v1/predict/batch  up to 256 images (multipart files or JSON {"images": [...]})
    POST /v1/read           a field: digits, a date or an amount (``digitlab.fields.read_field``)
    GET  /v1/model, /healthz, /readyz, /metrics, /docs (OpenAPI), / (the page in ``digitlab/static``)

Bad input is answered with a 4xx and a JSON body ``{"error": slug, "detail": sentence}``, never a
500: ``digitlab.serving.guard`` caps bodies at 5 MB (a 413 after reading and discarding the rest,
so that every client reads it), times slow bodies out (408) and checks the framing headers; JSON
nested too deeply is a 400; images go through ``digitlab.preprocess``, which refuses oversized
pictures by their header before decoding them. The OpenAPI bodies (``digitlab.serving.schema``)
state the same rules; ``digitlab.serving.observe`` counts, times and logs every request and puts
the model's name, version and sha256 in every answer.

Small uploaded pictures (drawings, 28x28 digits) are decoded and preprocessed inline, larger
ones in a small pool of worker processes (they would otherwise share the GIL with the HTTP
handling for long); inference runs on one dedicated thread that
takes every request waiting in its queue as one batch (adaptive micro-batching: no added delay
when idle, large batches under load, one forward at a time so the model is never used
concurrently), and the event loop hands it the requests of each of its turns together. Request
parsing avoids pydantic in the hot path; JSON is read and written with the standard library. The
startup heap is frozen out of the garbage collector's view (full collections of torch's heap were
the JSON p99). /docs is Swagger UI served from ``digitlab/static``, so it works offline.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import gc
import json
import os
import queue
import socket
import sys
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from digitlab.errors import ConfigError, DigitlabError, ImageError
from digitlab.serving.guard import BODY_TIMEOUT, MAX_BODY_BYTES, HttpGuard
from digitlab.serving.schema import MAX_SIDE, MIN_SIDE

__all__ = ["MAX_BATCH", "MAX_BODY_BYTES", "ApiError", "Batcher", "create_app", "serve"]

MAX_BATCH = 256
STATIC_DIR = Path(__file__).parent / "static"


class ApiError(Exception):
    """A 4xx answer: HTTP status, a short slug and one sentence for the user."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _table(fmt: str) -> np.ndarray:
    return np.array([fmt.format(v).encode() for v in range(256)], dtype="S4").view(np.uint32)


# Each 0..255 value as its JSON text in a 4-byte cell, padded with NUL bytes, viewed as one uint32.
_FIRST, _NEXT = _table("[{}"), _table(",{}")
_ROW_END = np.array([b"],"], dtype="S4").view(np.uint32)[0]


def _uint8_json(x: np.ndarray) -> bytes:
    """``json.dumps(x.tolist())`` (compact) of a 2-D uint8 array: the 28x28 input took json 45 us, this 10.

    Every value becomes its text cell by table lookup, a row is "[v,v,...]," and the padding is dropped.
    """
    if x.dtype != np.uint8 or x.ndim != 2 or 0 in x.shape:
        return _json_bytes(x.tolist())
    h, w = x.shape
    cells = np.empty((h, w + 1), np.uint32)
    cells[:, 0] = _FIRST[x[:, 0]]
    cells[:, 1:w] = _NEXT[x[:, 1:]]
    cells[:, w] = _ROW_END
    text = cells.view(np.uint8).ravel()
    return b"[" + text[text != 0][:-1].tobytes() + b"]"


def _error_body(error: str, detail: Any) -> bytes:
    return _json_bytes({"error": error, "detail": detail})


# --- inference: one thread, adaptive batches ------------------------------------------------------


class Batcher:
    """Runs ``predictor.predict_proba`` on one thread, batching every request waiting in the queue.

    While a forward pass runs, new requests queue up and go into the next batch together, so the
    batch size follows the load. ``window`` (seconds) optionally waits that long for more requests
    after the first one arrives.
    """

    def __init__(self, predictor: Any, max_batch: int = 1024, window: float = 0.0,
                 on_batch: Any = None) -> None:
        self.predictor, self.max_batch, self.window, self.on_batch = predictor, max_batch, window, on_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Requests waiting for the end of the event loop's turn (predict), by loop.
        self._waiting: dict[asyncio.AbstractEventLoop, list[tuple[np.ndarray, asyncio.Future]]] = {}
        self.batches = 0
        self.images = 0

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="digitlab-inference", daemon=True)
                    self._thread.start()

    def submit(self, images: np.ndarray) -> concurrent.futures.Future:
        """Queue uint8 images (N, H, W); the future resolves to their probabilities (N, K)."""
        self._ensure_thread()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((images, fut))
        return fut

    async def predict(self, images: np.ndarray) -> np.ndarray:
        """``submit`` from the event loop: the requests that reach this point in one turn of the loop go
        to the thread together, at the end of that turn.

        Handing each request over as it came made the thread wake for nearly every one: small
        pictures are preprocessed on the event loop, so under load the loop submitted one image at a
        time while the thread ran the model one image at a time (1.2 images per forward pass on
        average at 32 clients, ~0.35 ms of CPU per image instead of ~0.1 in batches of 8 or more),
        and every hand-over and answer was a thread switch of its own.
        """
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        waiting = self._waiting.get(loop)
        if waiting is None:
            waiting = self._waiting[loop] = []
            loop.call_soon(self._hand_over, loop)
        waiting.append((images, fut))
        return await fut

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        group = self._waiting.pop(loop)
        try:
            x = group[0][0] if len(group) == 1 else np.concatenate([i for i, _ in group])
            done = asyncio.wrap_future(self.submit(x), loop=loop)
        except Exception as exc:  # noqa: BLE001 - handed to each waiting request, which reports it
            self._deliver(group, None, exc)
            return

        def answer(f: asyncio.Future) -> None:
            if f.cancelled():  # only if the loop is shutting down
                for _, fut in group:
                    fut.cancel()
            elif f.exception() is not None:
                self._deliver(group, None, f.exception())
            else:
                self._deliver(group, f.result(), None)

        done.add_done_callback(answer)

    @staticmethod
    def _deliver(group: list[tuple[np.ndarray, asyncio.Future]], probs: np.ndarray | None,
                 exc: BaseException | None) -> None:
        start = 0
        for images, fut in group:
            if not fut.done():  # a request whose client left was cancelled meanwhile
                if probs is None:
                    fut.set_exception(exc)
                else:
                    fut.set_result(probs[start : start + len(images)])
            start += len(images)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None

    def _loop(self) -> None:
        import time

        while True:
            item = self._queue.get()
            if item is None:
                return
            items = [item]
            count = len(item[0])
            deadline = time.perf_counter() + self.window
            while count < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    try:
                        nxt = self._queue.get(timeout=left)
                    except queue.Empty:
                        break
                if nxt is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                items.append(nxt)
                count += len(nxt[0])
            self._run(items)

    def _run(self, items: list[tuple[np.ndarray, concurrent.futures.Future]]) -> None:
        try:
            x = items[0][0] if len(items) == 1 else np.concatenate([i for i, _ in items])
            probs = self.predictor.predict_proba(x)
        except Exception as exc:  # noqa: BLE001 - handed to each waiting request, which reports it
            for _, fut in items:
                fut.set_exception(exc)
            return
        self.batches += 1
        self.images += len(x)
        if self.on_batch is not None:
            self.on_batch(len(x))
        start = 0
        for images, fut in items:
            fut.set_result(probs[start : start + len(images)])
            start += len(images)


# --- parsing requests ---------------------------------------------------------------------------


def _decode_base64(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise ApiError(422, "invalid_request", f"{where} must be a base64 string.")
    if text.startswith("data:"):
        text = text.partition(",")[2]  # data URL from canvas.toDataURL()
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_base64", f"{where} is not valid base64; encode the image file's bytes.") from None


def _numbers_only(value: list) -> bool:
    """True if ``value`` is a list of lists of JSON numbers (not true/false, which numpy would take as 1/0)."""
    allowed = {int, float}
    return all(isinstance(row, list) and set(map(type, row)) <= allowed for row in value)


class Inputs:
    """What a request asked to classify, before preprocessing: encoded images or pixel arrays."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        shape = tuple(predictor.input_shape[1:])
        self.shape = shape
        self.max_value = float(predictor.meta.get("max_value", predictor.scaler.to_dict().get("max_value", 255)))

    def pixels(self, value: Any, where: str) -> np.ndarray:
        """A JSON array in the model's input format -> uint8 (H, W), or a 422 naming the problem."""
        h, w = self.shape
        top = int(self.max_value)
        if not isinstance(value, list) or not _numbers_only(value):
            raise ApiError(422, "invalid_pixels", f"{where} must be a {h}x{w} array of numbers from 0 to {top}.")
        try:
            a = np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError):
            raise ApiError(422, "invalid_pixels", f"{where} must be a {h}x{w} array of numbers "
                           f"(rows of equal length) from 0 to {top}.") from None
        if a.shape != (h, w):
            raise ApiError(422, "invalid_pixels", f"{where} has shape {list(a.shape)}; the model takes {h}x{w}.")
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > self.max_value:
            raise ApiError(422, "invalid_pixels", f"{where} has values outside 0..{top}; scale the pixels to 0..{top}.")
        return np.round(a).astype(np.uint8)

    def item(self, obj: Any, where: str) -> tuple[str, Any]:
        """One JSON image description -> ("bytes", data) | ("pixels", array) | ("raw", array)."""
        if not isinstance(obj, dict):
            raise ApiError(422, "invalid_request", f"{where} must be an object with 'image' (base64) or 'pixels'.")
        has_image, has_pixels = "image" in obj, "pixels" in obj
        if has_image == has_pixels:
            raise ApiError(422, "invalid_request",
                           f"{where} must have exactly one of 'image' (base64 file) or 'pixels' (array).")
        unknown = set(obj) - {"image", "pixels", "preprocess"}
        if unknown:
            raise ApiError(422, "invalid_request", f"{where} has unknown field(s) {', '.join(sorted(unknown))}.")
        if has_image:
            return "bytes", _decode_base64(obj["image"], f"{where}.image")
        pre = obj.get("preprocess", False)
        if not isinstance(pre, bool):
            raise ApiError(422, "invalid_request", f"{where}.preprocess must be true or false.")
        if pre:
            return "raw", self._any_pixels(obj["pixels"], f"{where}.pixels")
        return "pixels", self.pixels(obj["pixels"], f"{where}.pixels")

    def _any_pixels(self, value: Any, where: str) -> np.ndarray:
        # A drawing of any size that still needs the MNIST treatment (centring, 20 px box).
        if not isinstance(value, list) or not _numbers_only(value):
            raise ApiError(422, "invalid_pixels", f"{where} must be a 2-D array of numbers from 0 to 255.")
        try:
            a = np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError):
            raise ApiError(422, "invalid_pixels", f"{where} must be a 2-D array of numbers from 0 to 255.") from None
        if a.ndim != 2 or min(a.shape) < MIN_SIDE or max(a.shape) > MAX_SIDE:
            raise ApiError(422, "invalid_pixels", f"{where} must be a 2-D array of {MIN_SIDE} to {MAX_SIDE} rows "
                           f"and columns (rows of equal length).")
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 255:
            raise ApiError(422, "invalid_pixels", f"{where} has values outside 0..255.")
        return np.round(a).astype(np.uint8)


async def _parse_json(request: Request) -> Any:
    body = await request.body()
    if not body.strip():
        raise ApiError(400, "empty_body", "The request body is empty; send an image or a JSON object.")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"The request body is not valid JSON ({exc}).") from None
    except RecursionError:
        # The C decoder stops at the interpreter's recursion limit (~1,000 levels); the bodies of
        # this API are 4 levels deep.
        raise ApiError(400, "json_too_deep", "The JSON body is nested too deeply; "
                       "send {\"pixels\": [[...]]} or {\"image\": \"...\"}.") from None


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _form_files(body: bytes, content_type: str, field: str) -> list[bytes]:
    """The files of a multipart/form-data body, in order; every part must be named ``field``.

    python-multipart's push parser on the body in memory (the guard has bounded it): no temporary
    files, at most ``MAX_BATCH`` parts, and a form that does not reach its closing boundary is
    refused rather than read as a shorter one. Every part is taken as an image file, with or
    without a filename (this API has no text fields): one that is not gets ``invalid_image``.
    """
    from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "invalid_multipart", "The multipart form has no boundary in its Content-Type.")
    files: list[bytes] = []
    chunks: list[bytes] = []
    header = [b"", b""]
    disposition = [b""]
    wanted = field.encode()

    def on_part_begin() -> None:
        if len(files) >= MAX_BATCH:
            raise ApiError(422, "too_many_parts", f"The multipart form has over {MAX_BATCH} parts; "
                           f"send at most {MAX_BATCH} files.")
        chunks.clear()
        disposition[0] = b""

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        if header[0].lower() == b"content-disposition":
            disposition[0] = header[1]
        header[0] = header[1] = b""

    def on_headers_finished() -> None:
        name = parse_options_header(disposition[0])[1].get(b"name")
        if name != wanted:
            shown = name.decode("utf-8", "replace") if name is not None else "(none)"
            raise ApiError(422, "invalid_request", f"The form field '{shown}' is not expected here; "
                           f"send the image(s) as file field(s) named '{field}'.")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunks.append(data[start:end])

    def on_part_end() -> None:
        files.append(b"".join(chunks))

    callbacks = {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                 "on_header_value": on_header_value, "on_header_end": on_header_end,
                 "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
                 "on_part_end": on_part_end}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - python-multipart's parse errors (and header limits)
        raise ApiError(400, "invalid_multipart", f"The multipart form cannot be read ({exc}).") from None
    if parser.state != MultipartState.END:
        raise ApiError(400, "invalid_multipart", "The multipart form is cut short: it never reaches its closing "
                       "boundary.")
    if not files:
        raise ApiError(422, "no_file", f"The form holds no file; upload the image as a file field named '{field}'.")
    return files


async def _request_items(request: Request, inputs: Inputs, batch: bool) -> list[tuple[str, Any]]:
    """Every image of a request as (kind, payload); raises ApiError for bodies that cannot be used."""
    ctype = _content_type(request)
    if ctype == "application/x-www-form-urlencoded":
        raise ApiError(422, "no_file", "A URL-encoded form cannot hold a file; upload the image as multipart/form-data "
                       "with a file field named 'file'.")
    if ctype == "multipart/form-data":
        files = _form_files(await request.body(), request.headers["content-type"], "files" if batch else "file")
        if not batch and len(files) > 1:
            raise ApiError(422, "too_many_files", "Upload one file here; send several to /v1/predict/batch.")
        return [("bytes", f) for f in files]
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        body = await request.body()
        if not body:
            raise ApiError(400, "empty_body", "The request body is empty; send the bytes of an image file.")
        return [("bytes", body)]
    if ctype in ("", "application/json") or ctype.endswith("+json"):
        obj = await _parse_json(request)
        if not batch:
            return [inputs.item(obj, "The body")]
        if not isinstance(obj, dict) or set(obj) != {"images"} or not isinstance(obj["images"], list):
            raise ApiError(422, "invalid_request", 'The body must be {"images": [...]} with one object per image.')
        images = obj["images"]
        if not images:
            raise ApiError(422, "invalid_request", "The list of images is empty; send 1 to 256 images.")
        if len(images) > MAX_BATCH:
            raise ApiError(422, "too_many_images",
                           f"{len(images)} images is over the limit of {MAX_BATCH}; split them into smaller batches.")
        return [inputs.item(o, f"images[{i}]") for i, o in enumerate(images)]
    raise ApiError(415, "unsupported_media_type",
                   f"Content type '{ctype}' is not accepted; send multipart/form-data, application/json or image/*.")


UPLOAD = "The uploaded image"


def _preprocess_job(data: Any, target: str) -> np.ndarray:
    from digitlab.preprocess import load_pixels, preprocess

    if isinstance(data, np.ndarray):
        return preprocess(data, target, "The pixel array")
    if not isinstance(data, bytes):  # a picture from _small_image, its header already parsed
        data = load_pixels(data, UPLOAD)
    return preprocess(data, target, UPLOAD)


# Pictures up to this many pixels (a 300x300 drawing; a 28x28 digit is 784) are preprocessed right
# on the event loop: ~0.5 ms of work for a 28x28 PNG (was ~1 ms), less than handing the bytes to a
# worker process and the array back, and less than a thread hand-off under the GIL (28x28 PNGs,
# 32 clients: 388 req/s inline, 287 in threads, 3.1 vs 4.1 ms of server CPU per request).
SMALL_PIXELS = 300 * 300


def _small_image(payload: Any) -> Any:
    """The payload to preprocess right here if it is small (an array, or the picture with its header
    parsed, so that it is not parsed twice); None if it is a job for the pool."""
    from digitlab.preprocess import open_header

    if isinstance(payload, np.ndarray):
        return payload if payload.size <= SMALL_PIXELS else None
    try:
        img = open_header(payload, UPLOAD)
    except Exception:  # noqa: BLE001 - unreadable or refused: a worker reads it again and explains
        return None
    w, h = img.size
    return img if w * h <= SMALL_PIXELS else None


class Preprocessor:
    """Runs ``digitlab.preprocess``: small pictures inline, larger ones off the event loop in a
    pool of processes (``workers`` > 0, so decoding and the MNIST pipeline of big photos use every
    core instead of sharing the GIL with HTTP, and a worker that dies, out of memory say, costs
    only its request: the pool is rebuilt). With ``workers`` 0 larger pictures run in threads."""

    def __init__(self, target: str, workers: int = 0, counter: Any = None) -> None:
        self.target, self.workers = target, workers
        # counter: a labelled metric, counted per image with where="inline", "thread" or "worker".
        self.counter = counter
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        if workers:
            self._pool = self._new_pool()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        import multiprocessing

        # forkserver: never fork this process (it runs torch's and uvicorn's threads).
        ctx = multiprocessing.get_context("forkserver")
        return concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init)

    def warm_up(self) -> None:
        """Start the worker processes now rather than on the first request."""
        if self._pool is not None:
            list(self._pool.map(_noop, range(self.workers * 2)))

    async def run(self, payloads: list[Any]) -> list[np.ndarray | ApiError]:
        loop = asyncio.get_running_loop()
        pool = self._pool
        futs: list[Any] = []
        for p in payloads:
            small = _small_image(p)
            if small is not None:
                futs.append(small)
                self._count("inline")
                continue
            self._count("worker" if pool is not None else "thread")
            try:
                futs.append(loop.run_in_executor(pool, _preprocess_job, p, self.target))
            except concurrent.futures.process.BrokenProcessPool as exc:  # a worker died while idle
                futs.append(exc)
        out: list[np.ndarray | ApiError] = []
        for fut in futs:
            try:
                if isinstance(fut, BaseException):
                    raise fut
                if isinstance(fut, asyncio.Future):
                    out.append(await fut)
                else:  # small: here, on the event loop
                    out.append(_preprocess_job(fut, self.target))
            except ImageError as exc:
                out.append(ApiError(422, "invalid_image", str(exc)))
            except concurrent.futures.process.BrokenProcessPool:
                self._replace(pool)
                out.append(ApiError(503, "worker_failed", "The image worker stopped while reading this image; "
                                    "send a smaller image or try again."))
        return out

    def _count(self, where: str) -> None:
        if self.counter is not None:
            self.counter.labels(where).inc()

    def _replace(self, pool: Any) -> None:
        """A new pool in place of a broken one (once, whichever request noticed first)."""
        with self._lock:
            if self._pool is pool and pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()

    @property
    def healthy(self) -> bool:
        pool = self._pool
        return pool is None or not getattr(pool, "_broken", False)

    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and operators)."""
        pool = self._pool
        return sorted((getattr(pool, "_processes", None) or {}).keys()) if pool is not None else []

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _noop(i: int) -> int:
    return i


def _freeze_heap() -> None:
    """Move every object alive now (modules, torch, the model) out of the garbage collector's view.

    Requests allocate many small objects, so full collections keep coming, and each one walked
    the whole heap of torch and FastAPI: 12 pauses of ~200 ms in a 10-s benchmark, all clients
    stalled (they were the JSON path's p99). After a freeze a full collection only walks what
    was created since.
    """
    gc.collect()
    gc.freeze()


def _worker_init() -> None:
    import multiprocessing

    import digitlab.preprocess  # noqa: F401 - imported now so that it is frozen too

    _freeze_heap()
    # A worker outlived a server that was stopped with SIGTERM (and kept the forkserver alive):
    # leave as soon as the server process is gone, whatever way it ended.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_after, args=(parent,), name="digitlab-orphan-watch", daemon=True).start()


def _exit_after(parent: Any) -> None:
    parent.join()
    os._exit(0)


# --- the app ---------------------------------------------------------------------------------------


def model_identity(predictor: Any) -> dict[str, str]:
    """name, version and sha256 of the served model: the architecture, the run, the weights file."""
    import hashlib

    from digitlab.reader import sha256_file
    from digitlab.runs import MODEL_WEIGHTS

    weights = predictor.path / MODEL_WEIGHTS if predictor.path else None
    if weights is not None and weights.is_file():
        digest = sha256_file(weights)  # the same checksum as the bundled reader's model card and model.json
    else:  # a Predictor built in memory: the hash of its weights as safetensors would store them
        from safetensors.torch import save

        state = {k: v.contiguous() for k, v in predictor.model.state_dict().items()}
        digest = hashlib.sha256(save(state)).hexdigest()
    version = predictor.path.name if predictor.path else "unsaved"
    return {"name": predictor.name, "version": version, "sha256": digest}


# /v1/read's query, stated in OpenAPI exactly as _read_options checks it (clients generated from the schema,
# and schemathesis, then send only what the server accepts).
READ_PARAMETERS = [
    {"name": "format", "in": "query", "required": False,
     "description": "digits (a row of digits), date (an ISO date) or amount (a decimal)",
     "schema": {"type": "string", "enum": ["digits", "date", "amount"], "default": "digits"}},
    {"name": "day_first", "in": "query", "required": False,
     "description": "dates: the day before the month (21.11.2026) or not (11/21/2026)",
     "schema": {"type": "boolean", "default": True}},
    {"name": "threshold", "in": "query", "required": False,
     "description": "field confidence below which the reading is marked for review",
     "schema": {"type": "number", "minimum": 0, "maximum": 1}},
]


def _read_options(query: Any) -> dict[str, Any]:
    """``/v1/read``'s query parameters as ``read_field`` options; a bad one is a 422."""
    options: dict[str, Any] = {"format": query.get("format", "digits")}
    if options["format"] not in ("digits", "date", "amount"):
        raise ApiError(422, "invalid_parameter", f"format={options['format']} is unknown; use digits, date or amount.")
    day_first = query.get("day_first", "true").lower()
    if day_first not in ("true", "false", "1", "0"):
        raise ApiError(422, "invalid_parameter", f"day_first={day_first} is not true or false.")
    options["day_first"] = day_first in ("true", "1")
    if "threshold" in query:
        try:
            options["threshold"] = float(query["threshold"])
        except ValueError:
            options["threshold"] = -1.0
        if not 0.0 <= options["threshold"] <= 1.0:
            raise ApiError(422, "invalid_parameter", f"threshold={query['threshold']} is not a probability (0 to 1).")
    return options


def create_app(
    run: str | Path | Any,
    runtime: str = "torch",
    threshold: float | None = None,
    window: float = 0.0,
    max_body: int = MAX_BODY_BYTES,
    workers: int = 0,
    body_timeout: float = BODY_TIMEOUT,
    access_log: str | None = None,
) -> FastAPI:
    """The FastAPI app of a run (name, folder or a ready ``Predictor``).

    ``access_log``: None (off), ``-`` (standard error) or a file to append JSON lines to."""
    import time

    import digitlab
    from digitlab.fields import read_field
    from digitlab.models import count_parameters
    from digitlab.predict import Predictor
    from digitlab.serving import schema
    from digitlab.serving.observe import Metrics, Observer, open_access_log

    metrics = Metrics()
    t0 = time.perf_counter()
    predictor = run if isinstance(run, Predictor) else Predictor.from_run(run, threshold=threshold, runtime=runtime)
    identity = model_identity(predictor)
    metrics.load_seconds.set(time.perf_counter() - t0)
    metrics.model.labels(identity["name"], identity["version"], identity["sha256"]).set(1)
    batcher = Batcher(predictor, window=window, on_batch=metrics.batch_size.observe)
    preprocessor = Preprocessor(predictor.target, workers, counter=metrics.preprocessed)
    inputs = Inputs(predictor)
    meta = predictor.meta
    model_info = {
        **identity,
        "run": predictor.path.name if predictor.path else None,
        "dataset": meta.get("dataset"),
        "classes": predictor.classes,
        "input_shape": list(predictor.input_shape),
        "parameters": count_parameters(predictor.model),
        "test_accuracy": meta.get("test_accuracy"),
        "threshold": predictor.threshold,
        "runtime": predictor.runtime,
        "tta": predictor.tta,
        "temperature": predictor.temperature,
        "preprocess": predictor.target,
        "digitlab_version": digitlab.__version__,
    }
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(app: Any):  # noqa: ANN202 - starlette's lifespan protocol
        await asyncio.get_running_loop().run_in_executor(None, preprocessor.warm_up)
        _freeze_heap()
        state["ready"] = True
        yield
        state["ready"] = False
        batcher.close()
        preprocessor.close()

    app = FastAPI(
        title="digitlab",
        version=digitlab.__version__,
        description=f"Handwritten-digit classifier '{predictor.name}' ({meta.get('dataset')}). "
        "Errors are JSON {\"error\", \"detail\"}. Every answer carries the model's identity in "
        "X-Model-Name, X-Model-Version and X-Model-Sha256.",
        lifespan=lifespan,
        docs_url=None,  # served below from digitlab/static, so /docs works offline
        redoc_url=None,  # ReDoc would load its script from a CDN
    )
    app.state.predictor = predictor
    app.state.batcher = batcher
    app.state.preprocessor = preprocessor
    app.state.metrics = metrics
    app.state.identity = identity
    # Outermost first: the observer sees every answer, the guard's too.
    app.add_middleware(HttpGuard, limit=max_body, body_timeout=body_timeout)
    app.add_middleware(Observer, metrics=metrics, identity=identity, access_log=open_access_log(access_log))

    h, w = predictor.input_shape[1:]
    bodies = schema.bodies(h, w, int(inputs.max_value), MAX_BATCH, max_body)
    image_errors = schema.errors(400, 408, 413, 415, 422, 503)

    def reply(obj: Any, status: int = 200) -> Response:
        return Response(_json_bytes(obj), status_code=status, media_type="application/json")

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        headers = {"retry-after": "1"} if exc.status == 503 else None
        return Response(_error_body(exc.error, exc.detail), exc.status, media_type="application/json",
                        headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        slug = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return Response(_error_body(slug, str(exc.detail)), exc.status_code, media_type="application/json",
                        headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        return Response(_error_body("invalid_request", str(exc.errors())), 422, media_type="application/json")

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> Response:
        return Response(_error_body("internal_error", f"{type(exc).__name__}: the server failed; see its log."), 500,
                        media_type="application/json")

    async def to_inputs(items: list[tuple[str, Any]]) -> list[np.ndarray | ApiError]:
        """Model inputs for the request's items; each image that cannot be used becomes its ApiError."""
        todo = [p for kind, p in items if kind != "pixels"]
        done = iter(await preprocessor.run(todo) if todo else [])
        return [p if kind == "pixels" else next(done) for kind, p in items]

    def describe(p: np.ndarray, x: np.ndarray) -> dict:
        out = predictor.explain_probs(p[None])[0].to_dict()
        out["input"] = x.tolist()
        return out

    @app.post("/v1/predict", summary="Classify one image", responses=image_errors,
              openapi_extra={"requestBody": {"required": True, "content": bodies["image"]}})
    async def predict(request: Request) -> Response:
        """Class, confidence, top 3, all probabilities, unsure flag and the 28x28 input the model saw."""
        items = await _request_items(request, inputs, batch=False)
        (x,) = await to_inputs(items)
        if isinstance(x, ApiError):
            raise x
        probs = await batcher.predict(x[None])
        # describe()'s JSON, with the input array (most of the answer) written by _uint8_json.
        head = _json_bytes(predictor.explain_probs(probs[:1])[0].to_dict())
        return Response(head[:-1] + b',"input":' + _uint8_json(x) + b"}", media_type="application/json")

    @app.post("/v1/predict/batch", summary="Classify up to 256 images", responses=image_errors,
              openapi_extra={"requestBody": {"required": True, "content": bodies["batch"]}})
    async def predict_batch(request: Request) -> Response:
        """One result per image, in order; an image that cannot be used gets {"error", "detail"} in its place."""
        items = await _request_items(request, inputs, batch=True)
        if len(items) > MAX_BATCH:
            raise ApiError(422, "too_many_images",
                           f"{len(items)} images is over the limit of {MAX_BATCH}; split them into smaller batches.")
        xs = await to_inputs(items)
        good = [x for x in xs if not isinstance(x, ApiError)]
        probs = await batcher.predict(np.stack(good)) if good else np.zeros((0, len(predictor.classes)))
        results, k = [], 0
        for x in xs:
            if isinstance(x, ApiError):
                results.append({"error": x.error, "detail": x.detail})
            else:
                results.append(describe(probs[k], x))
                k += 1
        return reply({"count": len(results), "ok": len(good), "results": results})

    @app.post("/v1/read", summary="Read a row of handwritten digits", responses=image_errors,
              openapi_extra={"parameters": READ_PARAMETERS,
                             "requestBody": {"required": True, "content": bodies["image"]}})
    async def read(request: Request) -> Response:
        """The symbols left to right ('?' where unsure in 'marked'), with a box (x0, y0, x1, y1) per symbol in
        the sent image's pixels. Query: format=digits|date|amount, day_first=true|false, threshold=P (the field
        confidence below which 'review' is true)."""
        options = _read_options(request.query_params)
        (kind, payload), = await _request_items(request, inputs, batch=False)

        def work() -> dict:
            from digitlab.preprocess import open_image

            image = open_image(payload, "The uploaded image") if kind == "bytes" else payload
            # The model is shared with the batching thread: Predictor.predict_proba takes its lock.
            reading = read_field(predictor, image, name="The uploaded image", **options)
            out = reading.to_dict()
            for d, x in zip(out["digits"], reading.inputs, strict=True):
                d["input"] = x.tolist()
            return out

        try:
            return reply(await asyncio.get_running_loop().run_in_executor(None, work))
        except ImageError as exc:
            raise ApiError(422, "invalid_image", str(exc)) from None
        except ConfigError as exc:
            raise ApiError(422, "unsupported", str(exc)) from None

    @app.get("/v1/model", summary="The model behind the API")
    async def model() -> Response:
        return reply(model_info)

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> Response:
        return reply({"status": "ok", "model": predictor.name})

    @app.get("/readyz", summary="Readiness: model loaded, workers started, image pool usable",
             responses=schema.errors(503))
    async def readyz() -> Response:
        checks = {"model": True, "started": state["ready"], "image_workers": preprocessor.healthy}
        if all(checks.values()):
            return reply({"status": "ready", "checks": checks})
        return Response(_error_body("not_ready", "The server is not ready: "
                                    + ", ".join(k for k, ok in checks.items() if not ok) + " not ready."),
                        503, media_type="application/json", headers={"retry-after": "1"})

    @app.get("/metrics", summary="Prometheus metrics (text format)",
             responses={"200": {"description": "Prometheus text exposition format",
                                "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics_page() -> Response:
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        # FastAPI's page with Swagger UI's files vendored in digitlab/static (swagger-ui-dist,
        # Apache-2.0, see swagger-ui.LICENSE) instead of a CDN; no validator badge from swagger.io.
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="digitlab API",
                                   swagger_js_url="/static/swagger-ui-bundle.js",
                                   swagger_css_url="/static/swagger-ui.css",
                                   swagger_favicon_url="/static/swagger-favicon-32x32.png",
                                   swagger_ui_parameters={"validatorUrl": None})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


_APP_OPTIONS_ENV = "DIGITLAB_SERVE_APP"


def app_from_env() -> FastAPI:
    """The app of one of several server processes (``serve(processes=N)``): options from the environment."""
    from digitlab.utils import set_threads

    opts = json.loads(os.environ[_APP_OPTIONS_ENV])
    set_threads(opts.pop("threads"))
    return create_app(**opts)


def serve(
    run: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    runtime: str = "torch",
    threshold: float | None = None,
    threads: int | None = 1,
    window: float = 0.0,
    workers: int | None = None,
    log_level: str = "warning",
    processes: int = 1,
    body_timeout: float = BODY_TIMEOUT,
    access_log: str | None = None,
) -> None:
    """Serve ``run`` under uvicorn until interrupted. Port 0 picks a free port; the URL is printed.

    ``workers`` processes decode and preprocess uploaded images larger than ``SMALL_PIXELS``
    (default: one per core, shared among the server processes; 0: threads of the server process).
    ``processes`` > 1 runs that many server processes on one socket (uvicorn's supervisor, which
    restarts a process that dies), each with its own copy of the model; ``/metrics`` adds up all of them.
    """
    import tempfile

    import uvicorn

    from digitlab.runs import resolve_run
    from digitlab.utils import set_threads

    if not 0 <= port <= 65535:
        raise ConfigError(f"Port {port} is not a TCP port; choose one from 1 to 65535 (0: any free port).")
    if not 1 <= processes <= 64:
        raise ConfigError(f"--processes {processes} is out of range; give 1 to 64 server processes.")
    if not body_timeout > 0:
        raise ConfigError(f"--body-timeout {body_timeout} is not a duration; give a number of seconds above 0.")
    if workers is None:
        workers = max(1, (os.cpu_count() or 1) // processes)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"Cannot listen on {host}:{port} ({exc.strerror}); "
                          "choose another --port or --host.") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    common = dict(log_level=log_level, access_log=False, http="auto", loop="auto", timeout_keep_alive=30,
                  backlog=2048)
    options = dict(runtime=runtime, threshold=threshold, window=window, workers=workers, body_timeout=body_timeout,
                   access_log=access_log)
    if processes == 1:
        # One intra-op thread: batches are small, and the other core parses HTTP and preprocesses images.
        set_threads(threads)
        try:
            app = create_app(run, **options)
        except BaseException:
            sock.close()
            raise
        server = uvicorn.Server(uvicorn.Config(app, **common))
        print(f"digitlab serving {app.state.predictor.name} on http://{shown}:{bound}/ (API docs: /docs)", flush=True)
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
            app.state.batcher.close()
            app.state.preprocessor.close()
        if not server.started:
            raise DigitlabError(f"The server on {host}:{bound} did not start; see the messages above.")
        sys.stdout.flush()
        return

    from uvicorn.supervisors import Multiprocess

    path = resolve_run(run)  # a clear error now, not one per process
    metrics_dir = tempfile.TemporaryDirectory(prefix="digitlab-metrics-")
    # Set before any server process imports prometheus_client (they are spawned, not forked).
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir.name
    os.environ[_APP_OPTIONS_ENV] = json.dumps({"run": str(path), "threads": threads, **options})
    config = uvicorn.Config("digitlab.serve:app_from_env", factory=True, workers=processes, **common)
    print(f"digitlab serving {path.name} on http://{shown}:{bound}/ with {processes} processes (API docs: /docs)",
          flush=True)
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
        metrics_dir.cleanup()
