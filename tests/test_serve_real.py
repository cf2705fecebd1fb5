"""`digitlab serve` as a real process on 127.0.0.1: hostile bodies over a socket, the clients people use
(curl, urllib, requests, httpx), the operator endpoints, the image worker processes, several server
processes, and schemathesis against the published OpenAPI schema. Every answer's status is asserted."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import pytest
import requests
from conftest import require_binary
from PIL import Image
from test_serve import bomb_png, drawing, field_image, png

from digitlab.data import load_dataset
from digitlab.loadtest import start_server, stop_server
from digitlab.preprocess import preprocess
from digitlab.serve import MAX_BATCH, MAX_BODY_BYTES, SMALL_PIXELS

ROOT = Path(__file__).resolve().parents[1]
BODY_TIMEOUT = 2.0
# One group: these servers are real processes, and two test workers starting them at once only slow both.
pytestmark = pytest.mark.xdist_group("real-server")


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    ds = load_dataset("mnist")
    return ds.test_images[:32], ds.test_labels[:32]


@pytest.fixture(scope="session")  # once per worker, however xdist orders the modules it is sent
def server(quick_run, tmp_path_factory):
    """One server process with one image worker process, a short body timeout and an access log."""
    log = tmp_path_factory.mktemp("serve-log") / "access.jsonl"
    proc, url = start_server(quick_run, extra=["--workers", "1", "--body-timeout", str(BODY_TIMEOUT),
                                               "--access-log", str(log)])
    yield url, proc, log
    stop_server(proc)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def urllib_post(url: str, data: bytes, content_type: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, headers={"content-type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def multipart(files: list[tuple[str, bytes]], boundary: str = "digitlabtest") -> tuple[bytes, str]:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
             f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def raw_exchange(url: str, data: bytes, pause_after: int | None = None, wait: float = 10.0) -> tuple[int, bytes]:
    """Send bytes as they are on a new connection (optionally stopping after ``pause_after`` bytes and
    keeping the connection open); returns the status of the first answer and its body."""
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=wait) as s:
        s.sendall(data if pause_after is None else data[:pause_after])
        got = b""
        while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < _length(got):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    return int(head[9:12]), body[:_length(got)] if _length(got) else body


def _length(got: bytes) -> int:
    m = re.search(rb"(?im)^content-length:\s*(\d+)", got.split(b"\r\n\r\n", 1)[0])
    return int(m.group(1)) if m else 0


def request_head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def error_slug(body: bytes) -> str:
    return json.loads(body)["error"]


# --- hostile bodies ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/predict", b"[" * 100_000),
    ("/v1/predict", b'{"image": ' + b"[" * 50_000),
    ("/v1/predict", b'{"image": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
    ("/v1/predict/batch", b'{"images": ' + b'[{"a": ' * 20_000),
    ("/v1/read", b"[" * 100_000),
])
def test_deeply_nested_json_is_400(server, path, body):
    status, out = urllib_post(server[0] + path, body, "application/json")
    assert status == 400 and out["error"] == "json_too_deep", out


def test_nested_json_that_parses_is_a_shape_error(server):
    # 900 levels still parse; the server then reports the wrong shape, never a recursion failure.
    body = b'{"pixels": ' + b"[" * 900 + b"]" * 900 + b"}"
    status, out = urllib_post(server[0] + "/v1/predict", body, "application/json")
    assert status == 422 and out["error"] == "invalid_pixels", out


def _big_multipart() -> tuple[bytes, str]:
    return multipart([("file", b"\0" * (8 * 2**20))])


def test_oversized_body_is_413_for_urllib(server):
    data, ctype = _big_multipart()
    status, out = urllib_post(server[0] + "/v1/predict", data, ctype)
    assert status == 413 and out["error"] == "body_too_large", out
    status, out = urllib_post(server[0] + "/v1/read", b"\0" * (6 * 2**20), "image/png")
    assert status == 413 and out["error"] == "body_too_large", out


def test_oversized_body_is_413_for_requests_and_httpx(server):
    url = server[0] + "/v1/predict"
    big = b"\0" * (8 * 2**20)
    r = requests.post(url, files={"file": ("big.png", big, "image/png")}, timeout=30)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    r = requests.post(url, data=big, headers={"content-type": "image/png"}, timeout=30)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"

    def chunks():  # no Content-Length: chunked, counted while it streams in
        for _ in range(7):
            yield b"\0" * 2**20

    r = requests.post(url, data=chunks(), headers={"content-type": "image/png"}, timeout=30)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    with httpx.Client(timeout=30) as c:
        r = c.post(url, files={"file": ("big.png", big, "image/png")})
        assert r.status_code == 413 and r.json()["error"] == "body_too_large"
        r = c.post(server[0] + "/v1/predict/batch", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "body_too_large"
        assert c.get(server[0] + "/healthz").status_code == 200


def test_oversized_body_is_413_for_curl(server, tmp_path):
    curl = require_binary("curl")
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (8 * 2**20))
    for args in (["-F", f"file=@{big}"], ["--data-binary", f"@{big}", "-H", "content-type: image/png"],
                 # without Expect: 100-continue curl sends the whole body before reading: drained, then 413
                 ["--data-binary", f"@{big}", "-H", "content-type: image/png", "-H", "Expect:"]):
        out = subprocess.run([curl, "-sS", "-o", "-", "-w", "\n%{http_code}", *args, server[0] + "/v1/predict"],
                             capture_output=True, text=True, timeout=60)
        body, _, code = out.stdout.rpartition("\n")
        assert out.returncode == 0 and code == "413", (args, out.stdout, out.stderr)
        assert json.loads(body)["error"] == "body_too_large"


def test_just_under_the_limit_is_read(server):
    status, out = urllib_post(server[0] + "/v1/predict", b"\0" * (MAX_BODY_BYTES - 1000), "image/png")
    assert status == 422 and out["error"] == "invalid_image", out


@pytest.mark.parametrize(("length", "status"), [("abc", 400), ("-5", 400), ("+2", 400), ("2, 3", 400),
                                                ("99999999999999999999999", 400),
                                                (str(6 * 2**20), 413)])
def test_bad_content_length(server, length, status):
    head = request_head("/v1/predict", {"Content-Type": "application/json", "Content-Length": length})
    got, _ = raw_exchange(server[0], head + b"{}")
    assert got == status


def test_conflicting_content_lengths_are_400(server):
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n" \
           b"Content-Length: 3\r\n\r\n{}"
    assert raw_exchange(server[0], head)[0] == 400


def test_compressed_body_is_415(server):
    head = request_head("/v1/predict", {"Content-Type": "application/json", "Content-Encoding": "gzip",
                                        "Content-Length": "2"})
    status, body = raw_exchange(server[0], head + b"{}")
    assert status == 415 and error_slug(body) == "unsupported_encoding"


@pytest.mark.parametrize(("body", "ctype", "status", "slug"), [
    # truncated: no closing boundary
    (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nxxx',
     "multipart/form-data; boundary=b", 400, "invalid_multipart"),
    # a part without its headers' end
    (b'--b\r\nContent-Disposition: form-da\r\n--b--\r\n', "multipart/form-data; boundary=b", 400, "invalid_multipart"),
    # no boundary parameter
    (b'--b\r\n\r\n--b--\r\n', "multipart/form-data", 400, "invalid_multipart"),
    # only a closing boundary: a valid empty form
    (b"--b--\r\n", "multipart/form-data; boundary=b", 422, "no_file"),
])
def test_broken_multipart(server, body, ctype, status, slug):
    got, out = urllib_post(server[0] + "/v1/predict", body, ctype)
    assert got == status and out["error"] == slug, out


def test_too_many_parts_is_422(server):
    data, ctype = multipart([("files", b"x") for _ in range(MAX_BATCH + 1)])
    status, out = urllib_post(server[0] + "/v1/predict/batch", data, ctype)
    assert status == 422 and out["error"] == "too_many_parts", out
    fields = "".join('--b\r\nContent-Disposition: form-data; name="files"\r\n\r\n1\r\n' for _ in range(MAX_BATCH + 1))
    status, out = urllib_post(server[0] + "/v1/predict/batch", (fields + "--b--\r\n").encode(),
                              "multipart/form-data; boundary=b")
    assert status == 422 and out["error"] == "too_many_parts", out


def test_slow_body_is_408(server):
    body = b'{"pixels": [[0]]}'
    head = request_head("/v1/predict", {"Content-Type": "application/json", "Content-Length": str(len(body))})
    t0 = time.monotonic()
    status, out = raw_exchange(server[0], head + body, pause_after=len(head) + 5, wait=BODY_TIMEOUT * 10)
    assert status == 408 and error_slug(out) == "body_timeout"
    assert time.monotonic() - t0 >= BODY_TIMEOUT * 0.9
    assert requests.get(server[0] + "/healthz", timeout=10).status_code == 200


def _jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 255).save(buf, format="JPEG", quality=50)
    return buf.getvalue()


def _zeros_png(side: int) -> bytes:
    """A real PNG of side x side white pixels: a few kB that inflate to side^2 bytes."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 255).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@pytest.mark.parametrize("path", ["/v1/read", "/v1/predict"])
def test_bombs_and_huge_photos_are_422(server, path):
    url = server[0] + path
    for data in (bomb_png(), bomb_png(60_000, 1_000), _jpeg(7_000, 6_000)):
        status, out = urllib_post(url, data, "image/png")
        assert status == 422 and out["error"] == "invalid_image", out
        assert "megapixel" in out["detail"], out
    # 36 megapixels in 40 kB, under the limit: decoded, then found blank.
    status, out = urllib_post(url, _zeros_png(6_000), "image/png")
    assert status == 422 and out["error"] == "invalid_image" and "blank" in out["detail"], out
    assert requests.get(server[0] + "/readyz", timeout=10).status_code == 200


# --- operator endpoints ---------------------------------------------------------------------------------


def metric(text: str, name: str, /, **labels: str) -> float:
    """The sum of a metric's samples that carry ``labels``."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
                found = True
    assert found, f"no {name} {labels} in /metrics"
    return total


def test_model_identity_in_every_answer(server, quick_run, mnist):
    url = server[0]
    sha = hashlib.sha256((quick_run / "model.safetensors").read_bytes()).hexdigest()
    model = requests.get(url + "/v1/model", timeout=10).json()
    assert model["sha256"] == sha and model["version"] == quick_run.name and model["name"] == "fast"
    answers = [
        requests.get(url + "/v1/model", timeout=10),
        requests.get(url + "/healthz", timeout=10),
        requests.get(url + "/readyz", timeout=10),
        requests.get(url + "/metrics", timeout=10),
        requests.get(url + "/nothing", timeout=10),
        requests.post(url + "/v1/predict", json={"pixels": mnist[0][0].tolist()}, timeout=10),
        requests.post(url + "/v1/predict", data=b"x" * (6 * 2**20), headers={"content-type": "image/png"},
                      timeout=30),
    ]
    assert [r.status_code for r in answers] == [200, 200, 200, 200, 404, 200, 413]
    for r in answers:
        assert r.headers["x-model-sha256"] == sha and r.headers["x-model-name"] == "fast"
        assert r.headers["x-model-version"] == quick_run.name


def test_healthz_readyz_and_metrics(server, mnist):
    url = server[0]
    assert requests.get(url + "/healthz", timeout=10).json()["status"] == "ok"
    ready = requests.get(url + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    before = requests.get(url + "/metrics", timeout=10).text
    n0 = metric(before, "digitlab_http_requests_total", route="/v1/predict", status="200") \
        if 'route="/v1/predict",status="200"' in before else 0.0
    for img in mnist[0][:5]:
        assert requests.post(url + "/v1/predict", json={"pixels": img.tolist()}, timeout=10).status_code == 200
    assert requests.post(url + "/v1/predict", json={"pixels": [[1]]}, timeout=10).status_code == 422
    r = requests.get(url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert metric(text, "digitlab_http_requests_total", route="/v1/predict", status="200") == n0 + 5
    assert metric(text, "digitlab_http_requests_total", route="/v1/predict", status="422") >= 1
    assert metric(text, "digitlab_http_request_duration_seconds_count", route="/v1/predict") >= n0 + 6
    assert metric(text, "digitlab_http_request_duration_seconds_bucket", route="/v1/predict", le="+Inf") >= n0 + 6
    assert metric(text, "digitlab_inference_batch_size_count") >= 5
    assert metric(text, "digitlab_inference_batch_size_sum") >= 5
    assert 0 < metric(text, "digitlab_model_load_seconds") < 120
    assert metric(text, "digitlab_model_info", name="fast") == 1
    # Unknown paths share one series instead of making one each.
    requests.get(url + "/no/such/path/123", timeout=10)
    assert "/no/such/path" not in requests.get(url + "/metrics", timeout=10).text


def test_access_log_is_json_lines(server, mnist):
    url, _, log = server
    marker = "/v1/nothing-logged-here"
    assert requests.get(url + marker, timeout=10).status_code == 404
    requests.post(url + "/v1/predict", json={"pixels": mnist[0][1].tolist()}, timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and marker not in log.read_text():
        time.sleep(0.05)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    mine = [x for x in lines if x["path"] == marker]
    assert mine and mine[-1]["status"] == 404 and mine[-1]["method"] == "GET" and mine[-1]["route"] == "unmatched"
    assert {"time", "client", "ms", "bytes_in", "bytes_out", "pid"} <= set(mine[-1])
    ok = [x for x in lines if x["route"] == "/v1/predict" and x["status"] == 200]
    assert ok and ok[-1]["bytes_in"] > 1000 and ok[-1]["bytes_out"] > 100


# --- the image worker processes --------------------------------------------------------------------------


def _large_drawings(images: np.ndarray) -> list[bytes]:
    out = [drawing(img, size=420) for img in images]
    assert all(420 * 420 > SMALL_PIXELS for _ in out)
    return out


def test_large_images_through_the_workers_equal_the_inline_path(server, mnist, predictor):
    url = server[0]
    metrics0 = requests.get(url + "/metrics", timeout=10).text
    workers0 = metric(metrics0, "digitlab_images_preprocessed_total", where="worker") \
        if 'where="worker"' in metrics0 else 0.0
    images, labels = mnist
    pictures = _large_drawings(images[:6])
    for data in pictures:
        r = requests.post(url + "/v1/predict", files={"file": ("d.png", data, "image/png")}, timeout=30)
        assert r.status_code == 200, r.text
        here = preprocess(data, predictor.target, "the picture")
        assert r.json()["input"] == here.tolist()
        np.testing.assert_allclose(r.json()["probabilities"], predictor.predict_proba(here[None])[0], atol=1e-5)
    batch = requests.post(url + "/v1/predict/batch", files=[("files", (f"{i}.png", d, "image/png"))
                                                            for i, d in enumerate(pictures)], timeout=30)
    assert batch.status_code == 200 and batch.json()["ok"] == 6
    assert [x["class"] for x in batch.json()["results"]] == [
        predictor.predict(preprocess(d, predictor.target, "p")[None])[0].name for d in pictures]
    text = requests.get(url + "/metrics", timeout=10).text
    assert metric(text, "digitlab_images_preprocessed_total", where="worker") == workers0 + 12


def _grandchildren(pid: int) -> list[int]:
    """Processes whose parent's parent is ``pid`` (the image workers under the forkserver)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    children = {p for p, pp in parents.items() if pp == pid}
    return sorted(p for p, pp in parents.items() if pp in children)


def test_killed_worker_gives_503_then_recovers(server, mnist):
    url, proc, _ = server
    data = _large_drawings(mnist[0][7:8])[0]
    ok = requests.post(url + "/v1/predict", files={"file": ("d.png", data, "image/png")}, timeout=30)
    assert ok.status_code == 200
    workers = _grandchildren(proc.pid)
    assert len(workers) == 1, workers  # --workers 1
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{workers[0]}").exists():
        time.sleep(0.05)
    r = requests.post(url + "/v1/predict", files={"file": ("d.png", data, "image/png")}, timeout=30)
    assert r.status_code == 503 and r.json()["error"] == "worker_failed" and r.headers["retry-after"]
    again = requests.post(url + "/v1/predict", files={"file": ("d.png", data, "image/png")}, timeout=60)
    assert again.status_code == 200 and again.json()["probabilities"] == ok.json()["probabilities"]
    assert requests.get(url + "/readyz", timeout=10).status_code == 200
    assert _grandchildren(proc.pid) and _grandchildren(proc.pid) != workers


def test_read_and_predict_concurrently_equal_sequential(server, mnist):
    url = server[0]
    images, _ = mnist
    fields = [png(field_image(images[[i, i + 1, i + 2]], 3)) for i in range(0, 12, 3)]
    digits = [img.tolist() for img in images[12:28]]

    def read(data: bytes) -> dict:
        r = requests.post(url + "/v1/read", files={"file": ("f.png", data, "image/png")}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    def predict(pixels: list) -> dict:
        r = requests.post(url + "/v1/predict", json={"pixels": pixels}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    seq_reads = [read(d) for d in fields]
    seq_preds = [predict(p) for p in digits]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(read, d) for d in fields * 2] + [pool.submit(predict, p) for p in digits * 2]
        got = [j.result() for j in jobs]
    reads, preds = got[: 2 * len(fields)], got[2 * len(fields):]
    for a, b in zip(reads, seq_reads * 2, strict=True):
        assert a["text"] == b["text"] and [d["box"] for d in a["digits"]] == [d["box"] for d in b["digits"]]
        np.testing.assert_allclose([d["confidence"] for d in a["digits"]], [d["confidence"] for d in b["digits"]],
                                   atol=1e-5)
    for a, b in zip(preds, seq_preds * 2, strict=True):
        assert a["class"] == b["class"] and a["input"] == b["input"]
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-5)


# --- several server processes -------------------------------------------------------------------------------


def test_several_processes_share_the_port_and_the_metrics(quick_run, mnist, tmp_path):
    log = tmp_path / "access.jsonl"
    proc, url = start_server(quick_run, extra=["--processes", "2", "--workers", "1", "--access-log", str(log)])
    try:
        assert requests.get(url + "/readyz", timeout=10).status_code == 200

        def pids() -> set[int]:
            return {json.loads(line)["pid"] for line in log.read_text().splitlines()} if log.exists() else set()

        # The kernel hands each new connection to whichever process accepts first; on a busy machine one
        # process can take a whole burst, so send bursts (bounded) until both have answered.
        n = 0
        for _ in range(25):
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                rs = list(pool.map(lambda img: requests.post(url + "/v1/predict", json={"pixels": img.tolist()},
                                                             timeout=30), [mnist[0][i % 32] for i in range(40)]))
            assert [r.status_code for r in rs] == [200] * 40
            n += 40
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and len(log.read_text().splitlines()) < n + 1:
                time.sleep(0.05)
            if len(pids()) == 2:
                break
        assert len(pids()) == 2, "both processes answered"
        pictures = _large_drawings(mnist[0][:2])
        for data in pictures:
            assert requests.post(url + "/v1/predict", files={"file": ("d.png", data, "image/png")},
                                 timeout=30).status_code == 200
        # The counters are summed over both processes. A request is counted once its answer has been
        # sent, so the last one may land a moment after its client already asks for /metrics.
        deadline = time.monotonic() + 5
        while True:
            text = requests.get(url + "/metrics", timeout=10).text
            done = metric(text, "digitlab_http_requests_total", route="/v1/predict", status="200") >= n + 2
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert metric(text, "digitlab_http_requests_total", route="/v1/predict", status="200") == n + 2
        assert metric(text, "digitlab_inference_batch_size_sum") == n + 2
        assert metric(text, "digitlab_images_preprocessed_total", where="worker") == 2
        assert metric(text, "digitlab_model_info", name="fast") == 1
        assert requests.post(url + "/v1/predict", data=b"\0" * (6 * 2**20), headers={"content-type": "image/png"},
                             timeout=30).status_code == 413
    finally:
        stop_server(proc)


# --- the schema against the server ----------------------------------------------------------------------


def test_schemathesis_finds_no_failure(server):
    """schemathesis (every check, positive and negative cases) against /openapi.json; it reads the
    repository's schemathesis.toml, whose hooks give it pictures of digits as image content."""
    out = subprocess.run([sys.executable, "-m", "schemathesis.cli", "run", server[0] + "/openapi.json",
                          "--checks", "all", "--max-examples", "25", "--seed", "19", "--workers", "1",
                          "--no-color"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"})
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "No issues found" in out.stdout or " passed" in out.stdout, out.stdout[-2000:]
