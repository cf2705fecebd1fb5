"""The HTTP API (FastAPI TestClient): every endpoint, every kind of bad input, concurrency, the CLI."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import struct
import zlib

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from digitlab.cli import app as cli_app
from digitlab.data import load_dataset
from digitlab.predict import Predictor
from digitlab.serve import MAX_BATCH, MAX_BODY_BYTES, Batcher, create_app


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    ds = load_dataset("mnist")
    return ds.test_images[:64], ds.test_labels[:64]


def png(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def drawing(digit: np.ndarray, size: int = 280) -> bytes:
    """An MNIST digit as the page sends it: dark ink on white, enlarged and off-centre."""
    big = Image.fromarray(255 - digit).resize((size // 2, size // 2), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (size, size), 255)
    canvas.paste(big, (size // 8, size // 3))
    return png(np.asarray(canvas))


def assert_prediction(body: dict, classes: int = 10) -> None:
    assert set(body) >= {"class", "index", "confidence", "top3", "probabilities", "unsure", "input"}
    assert len(body["probabilities"]) == classes
    assert abs(sum(body["probabilities"]) - 1) < 1e-4
    assert body["confidence"] == max(body["probabilities"])
    assert [t["class"] for t in body["top3"]][0] == body["class"]
    assert len(body["top3"]) == 3 and body["top3"][0]["probability"] >= body["top3"][1]["probability"]
    assert isinstance(body["unsure"], bool)
    x = np.asarray(body["input"])
    assert x.shape == (28, 28) and x.min() >= 0 and x.max() <= 255


def assert_error(r: httpx.Response, status: int, slug: str | None = None, words: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    if slug:
        assert body["error"] == slug, body
    if words:
        assert words.lower() in body["detail"].lower(), body
    return body


# --- the three ways to send one image -----------------------------------------------------------------


def test_predict_pixels_json(client, mnist, predictor):
    images, labels = mnist
    right = 0
    for img, y in zip(images[:20], labels[:20], strict=True):
        r = client.post("/v1/predict", json={"pixels": img.tolist()})
        assert r.status_code == 200
        body = r.json()
        assert_prediction(body)
        assert body["input"] == img.tolist()  # already the model's input: used as is
        right += body["class"] == str(y)
    assert right >= 18
    expected = predictor.predict_proba(images[:1])[0]
    np.testing.assert_allclose(client.post("/v1/predict", json={"pixels": images[0].tolist()}).json()["probabilities"],
                               expected, atol=1e-5)


def test_predict_multipart_upload_and_raw_body(client, mnist):
    images, labels = mnist
    right = 0
    for img, y in zip(images[:10], labels[:10], strict=True):
        r = client.post("/v1/predict", files={"file": ("digit.png", drawing(img), "image/png")})
        assert r.status_code == 200, r.text
        assert_prediction(r.json())
        right += r.json()["class"] == str(y)
    assert right >= 9
    # JPEG too; the field is named 'file' (another name is refused, as the OpenAPI schema says); a raw image body.
    r = client.post("/v1/predict", files={"file": ("d.jpg", png(255 - images[0], "JPEG"), "image/jpeg")})
    assert r.json()["class"] == str(labels[0])
    assert_error(client.post("/v1/predict", files={"image": ("d.png", drawing(images[0]), "image/png")}), 422,
                 "invalid_request", "'image'")
    r = client.post("/v1/predict", content=drawing(images[1]), headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.json()["class"] == str(labels[1])


def test_predict_base64_json_and_data_url(client, mnist):
    images, labels = mnist
    data = drawing(images[2])
    r = client.post("/v1/predict", json={"image": base64.b64encode(data).decode()})
    assert r.status_code == 200 and r.json()["class"] == str(labels[2])
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    r2 = client.post("/v1/predict", json={"image": url})
    assert r2.json()["probabilities"] == r.json()["probabilities"]
    # The preprocessed input is centred the MNIST way (centre of mass near 14, 14).
    x = np.asarray(r.json()["input"], float)
    cy, cx = (np.indices(x.shape) * x).sum(axis=(1, 2)) / x.sum()
    assert abs(cy - 14) < 1.5 and abs(cx - 14) < 1.5


def test_predict_pixels_with_preprocessing(client, mnist):
    images, labels = mnist
    # A big off-centre light-on-dark drawing as an array: preprocess=true centres and scales it.
    canvas = np.zeros((120, 90), np.uint8)
    canvas[10:66, 30:86] = np.asarray(Image.fromarray(images[3]).resize((56, 56)))
    r = client.post("/v1/predict", json={"pixels": canvas.tolist(), "preprocess": True})
    assert r.status_code == 200 and r.json()["class"] == str(labels[3])


# --- batch, read, model, health, docs, page -------------------------------------------------------------


def test_batch_json_keeps_order_and_reports_bad_items(client, mnist, predictor):
    images, labels = mnist
    items = [{"pixels": img.tolist()} for img in images[:8]]
    items.insert(3, {"image": base64.b64encode(b"not an image").decode()})
    r = client.post("/v1/predict/batch", json={"images": items})
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 9 and body["ok"] == 8
    assert set(body["results"][3]) == {"error", "detail"} and body["results"][3]["error"] == "invalid_image"
    good = [res for i, res in enumerate(body["results"]) if i != 3]
    expected = predictor.predict(images[:8])
    assert [g["class"] for g in good] == [p.name for p in expected]
    for g in good:
        assert_prediction(g)


def test_batch_multipart_files_and_limits(client, mnist):
    images, labels = mnist
    files = [("files", (f"{i}.png", drawing(img), "image/png")) for i, img in enumerate(images[:4])]
    r = client.post("/v1/predict/batch", files=files)
    assert r.status_code == 200
    assert [x["class"] for x in r.json()["results"]] == [str(y) for y in labels[:4]]
    one = {"pixels": images[0].tolist()}
    assert_error(client.post("/v1/predict/batch", json={"images": [one] * (MAX_BATCH + 1)}), 422,
                 "too_many_images", "256")
    assert client.post("/v1/predict/batch", json={"images": [one] * MAX_BATCH}).json()["ok"] == MAX_BATCH
    assert_error(client.post("/v1/predict/batch", json={"images": []}), 422, "invalid_request", "empty")
    assert_error(client.post("/v1/predict/batch", json=[one]), 422, "invalid_request")
    assert_error(client.post("/v1/predict/batch", json={"images": [one, {"pixels": [[1]]}]}), 422,
                 "invalid_pixels", "images[1]")


def field_image(images: np.ndarray, scale: int = 1) -> np.ndarray:
    """Digits side by side, dark ink on white, with gaps: a clean field."""
    gap = np.zeros((28, 10), np.uint8)
    row = np.concatenate([gap] + [p for img in images for p in (img, gap)], axis=1)
    row = np.pad(row, ((12, 12), (0, 0)))
    img = Image.fromarray(255 - row)
    return np.asarray(img.resize((img.width * scale, img.height * scale), Image.Resampling.BICUBIC))


def test_read_a_field(client, mnist):
    images, labels = mnist
    pick = [0, 1, 2, 4]
    r = client.post("/v1/read", files={"file": ("field.png", png(field_image(images[pick], 4)), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == "".join(str(labels[i]) for i in pick)
    assert len(body["marked"]) == 4 and body["size"] == [field_image(images[pick], 4).shape[1], 52 * 4]
    xs = [d["box"][0] for d in body["digits"]]
    assert xs == sorted(xs)
    for d in body["digits"]:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 < x1 <= body["size"][0] and 0 <= y0 < y1 <= body["size"][1]
        assert np.asarray(d["input"]).shape == (28, 28)


def test_read_boxes_are_in_the_sent_images_pixels(client, mnist):
    images, labels = mnist
    small = field_image(images[[5, 6, 7]], 4)
    big = field_image(images[[5, 6, 7]], 16)  # 2,224 px wide: read_field works on a reduced copy
    a = client.post("/v1/read", files={"file": ("a.png", png(small), "image/png")}).json()
    b = client.post("/v1/read", files={"file": ("b.png", png(big), "image/png")}).json()
    assert a["text"] == b["text"] == "".join(str(labels[i]) for i in (5, 6, 7))
    for da, db in zip(a["digits"], b["digits"], strict=True):
        np.testing.assert_allclose(np.asarray(db["box"]) / 4, da["box"], atol=3)


def test_read_bad_input(client):
    assert_error(client.post("/v1/read", content=b"", headers={"content-type": "image/png"}), 400, "empty_body")
    assert_error(client.post("/v1/read", files={"file": ("x.png", b"garbage", "image/png")}), 422, "invalid_image")
    blank = png(np.full((60, 200), 255, np.uint8))
    assert_error(client.post("/v1/read", files={"file": ("b.png", blank, "image/png")}), 422, "invalid_image", "blank")


def test_model_health_docs_and_page(client, quick_run):
    m = client.get("/v1/model").json()
    meta = json.loads((quick_run / "model.json").read_text())
    assert m["name"] == meta["spec"]["name"] and m["dataset"] == "mnist"
    assert m["classes"] == [str(i) for i in range(10)] and m["parameters"] > 1000
    assert m["test_accuracy"] == meta["test_accuracy"] and m["digitlab_version"]
    assert client.get("/healthz").json()["status"] == "ok"
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/predict/batch", "/v1/read", "/v1/model", "/healthz"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        r = client.get(asset)
        assert r.status_code == 200 and len(r.text) > 1000
    # Offline: the page loads nothing from another host.
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert "http://" not in text and "https://" not in text


# --- bad input: always a JSON 4xx, never a 500 ---------------------------------------------------------


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A PNG header claiming width x height pixels with a tiny data chunk (never decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 4096))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"><path d="M14 4v20"/></svg>'


@pytest.mark.parametrize(
    ("name", "kwargs", "status", "slug", "words"),
    [
        ("empty body", {"content": b""}, 400, "empty_body", "empty"),
        ("empty json body", {"content": b"", "headers": {"content-type": "application/json"}}, 400, "empty_body", None),
        ("empty image body", {"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty_body", None),
        ("empty upload", {"files": {"file": ("e.png", b"", "image/png")}}, 422, "invalid_image", "empty"),
        ("form without file", {"data": {"x": "1"}, "files": {}}, 422, "no_file", None),
        ("non-image bytes", {"files": {"file": ("a.png", b"hello, I am text" * 20, "image/png")}}, 422,
         "invalid_image", "not a readable image"),
        ("svg", {"files": {"file": ("a.svg", SVG, "image/svg+xml")}}, 422, "invalid_image", "svg"),
        ("svg raw", {"content": SVG, "headers": {"content-type": "image/svg+xml"}}, 422, "invalid_image", "svg"),
        ("png bomb", {"files": {"file": ("bomb.png", bomb_png(), "image/png")}}, 422, "invalid_image", "megapixel"),
        ("invalid json", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400,
         "invalid_json", None),
        ("json list", {"json": [1, 2, 3]}, 422, "invalid_request", None),
        ("json unknown field", {"json": {"picture": "x"}}, 422, "invalid_request", None),
        ("json both fields", {"json": {"image": "aGk=", "pixels": [[0]]}}, 422, "invalid_request", "exactly one"),
        ("bad base64", {"json": {"image": "***not base64***"}}, 422, "invalid_base64", None),
        ("base64 not a string", {"json": {"image": 12}}, 422, "invalid_request", None),
        ("base64 of text", {"json": {"image": base64.b64encode(b"plain text").decode()}}, 422, "invalid_image", None),
        ("pixels wrong shape", {"json": {"pixels": np.zeros((27, 28), int).tolist()}}, 422, "invalid_pixels",
         "[27, 28]"),
        ("pixels flat", {"json": {"pixels": list(range(784))}}, 422, "invalid_pixels", None),
        ("pixels ragged", {"json": {"pixels": [[0] * 28] * 27 + [[0] * 5]}}, 422, "invalid_pixels", None),
        ("pixels strings", {"json": {"pixels": [["a"] * 28] * 28}}, 422, "invalid_pixels", None),
        ("pixels not a list", {"json": {"pixels": "0" * 784}}, 422, "invalid_pixels", None),
        ("pixels above 255", {"json": {"pixels": [[256] * 28] * 28}}, 422, "invalid_pixels", "0..255"),
        ("pixels negative", {"json": {"pixels": [[-1] * 28] * 28}}, 422, "invalid_pixels", "0..255"),
        ("pixels nan", {"content": b'{"pixels": [' + b",".join([b"[" + b",".join([b"NaN"] * 28) + b"]"] * 28) + b"]}",
                        "headers": {"content-type": "application/json"}}, 422, "invalid_pixels", None),
        ("preprocess not bool", {"json": {"pixels": [[0] * 28] * 28, "preprocess": "yes"}}, 422, "invalid_request",
         None),
        ("blank pixels preprocessed", {"json": {"pixels": [[0] * 28] * 28, "preprocess": True}}, 422, "invalid_image",
         "blank"),
        ("text body", {"content": b"7", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type",
         None),
        ("two files", {"files": [("file", ("a.png", b"1", "image/png")), ("file", ("b.png", b"2", "image/png"))]}, 422,
         "too_many_files", None),
    ],
)
def test_bad_input_is_a_json_4xx(client, name, kwargs, status, slug, words):
    assert_error(client.post("/v1/predict", **kwargs), status, slug, words)


def test_truncated_image(client, mnist):
    data = png(255 - np.kron(mnist[0][0], np.ones((8, 8), np.uint8)))
    for cut in (len(data) // 2, 60, 20):
        body = assert_error(client.post("/v1/predict", files={"file": ("t.png", data[:cut], "image/png")}), 422,
                            "invalid_image")
        assert any(w in body["detail"] for w in ("truncated", "damaged", "not a readable")), body


def test_body_over_5_mb_is_413_declared_or_streamed(client):
    big = b"\0" * (MAX_BODY_BYTES + 1)
    assert_error(client.post("/v1/predict", content=big, headers={"content-type": "image/png"}), 413,
                 "body_too_large", "5 MB")
    assert_error(client.post("/v1/predict", files={"file": ("big.png", big, "image/png")}), 413, "body_too_large")

    def chunks():  # no Content-Length: chunked transfer, counted while it streams in
        for _ in range(6):
            yield b"\0" * 2**20

    assert_error(client.post("/v1/predict", content=chunks(), headers={"content-type": "image/png"}), 413,
                 "body_too_large")
    # Just under the limit is read (and refused as an image, not for its size).
    assert_error(client.post("/v1/predict", content=b"\0" * (MAX_BODY_BYTES - 1000),
                             headers={"content-type": "image/png"}), 422, "invalid_image")


def test_an_over_long_body_whose_last_part_has_come_is_answered_at_once():
    """The guard reads the rest of an over-long body away, but not past its last part: a server's
    receive() then waits for the client to hang up, which it does only once answered (a 6 MB body
    in one part waited out the whole body timeout, 20 s, before its 413)."""
    from digitlab.serving.guard import HttpGuard

    async def app(scope, receive, send):  # reads the whole body, as the routes do
        while (await receive()).get("more_body"):
            pass

    for parts in ([MAX_BODY_BYTES + 1], [MAX_BODY_BYTES // 2, MAX_BODY_BYTES // 2 + 2]):
        messages = [{"type": "http.request", "body": b"\0" * n, "more_body": i < len(parts) - 1}
                    for i, n in enumerate(parts)]
        sent: list[dict] = []

        async def receive(messages=messages):
            if not messages:
                raise AssertionError("receive() after the body's last part")
            return messages.pop(0)

        async def send(message, sent=sent):
            sent.append(message)

        asyncio.run(HttpGuard(app, body_timeout=600)({"type": "http", "headers": []}, receive, send))
        assert sent[0]["status"] == 413 and b"body_too_large" in sent[1]["body"]


def test_wrong_method_and_path_are_json(client):
    assert_error(client.get("/v1/predict"), 405, "method_not_allowed")
    assert_error(client.get("/v1/nothing"), 404, "not_found")


def test_server_still_answers_after_bad_input(client, mnist):
    for data in (bomb_png(), SVG, b"", b"\x89PNG\r\n\x1a\n"):
        client.post("/v1/predict", files={"file": ("x.png", data, "image/png")})
    assert client.get("/healthz").status_code == 200
    r = client.post("/v1/predict", json={"pixels": mnist[0][0].tolist()})
    assert r.status_code == 200 and r.json()["class"] == str(mnist[1][0])


# --- concurrency, batching, runtimes, the CLI -------------------------------------------------------------------


def test_concurrent_requests_are_batched_and_right(predictor, mnist):
    images, labels = mnist
    app = create_app(predictor)
    expected = [p.name for p in predictor.predict(images)]

    async def main() -> list[dict]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            rs = await asyncio.gather(*(c.post("/v1/predict", json={"pixels": img.tolist()}) for img in images))
        return [r.json() for r in rs]

    answers = asyncio.run(main())
    assert [a["class"] for a in answers] == expected
    batcher = app.state.batcher
    assert batcher.images == len(images) and batcher.batches < len(images)
    batcher.close()


def test_batcher_matches_predictor_and_survives_errors(predictor, mnist):
    images, _ = mnist
    batcher = Batcher(predictor, window=0.002)
    futures = [batcher.submit(images[i : i + 3]) for i in range(0, 30, 3)]
    got = np.concatenate([f.result(timeout=10) for f in futures])
    np.testing.assert_allclose(got, predictor.predict_proba(images[:30]), atol=1e-5)
    bad = batcher.submit(np.zeros((1, 5, 5), np.uint8))  # wrong size: that request fails, the thread goes on
    with pytest.raises(Exception, match="28"):
        bad.result(timeout=10)
    assert batcher.submit(images[:2]).result(timeout=10).shape == (2, 10)
    batcher.close()


def test_image_workers_in_processes(predictor, mnist):
    images, labels = mnist
    with TestClient(create_app(predictor, workers=1)) as c:
        r = c.post("/v1/predict", files={"file": ("d.png", drawing(images[4]), "image/png")})
        assert r.status_code == 200 and r.json()["class"] == str(labels[4])
        assert_error(c.post("/v1/predict", files={"file": ("b.png", bomb_png(), "image/png")}), 422, "invalid_image")


def test_onnx_runtime_gives_the_same_answers(quick_run, mnist):
    images, _ = mnist
    with TestClient(create_app(quick_run, runtime="onnx")) as c:
        assert c.get("/v1/model").json()["runtime"] == "onnx"
        r = c.post("/v1/predict/batch", json={"images": [{"pixels": img.tolist()} for img in images[:5]]})
    torch_probs = Predictor.from_run(quick_run).predict_proba(images[:5])
    np.testing.assert_allclose([x["probabilities"] for x in r.json()["results"]], torch_probs, atol=1e-4)


def test_cli_serve_reports_a_busy_port(quick_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["serve", str(quick_run), "--port", str(port), "--workers", "0"])
    assert result.exit_code == 2
    assert f"127.0.0.1:{port}" in result.output and "--port" in result.output
    result = CliRunner().invoke(cli_app, ["serve", str(quick_run), "--runtime", "tensorflow"])
    assert result.exit_code == 2 and "runtime" in result.output.lower()


def test_bench_serve_smoke(quick_run):
    result = CliRunner().invoke(cli_app, ["bench", "serve", str(quick_run), "--clients", "4", "--seconds", "1",
                                          "--warmup", "0.2", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out["results"]) == {"json", "png"}
    for r in out["results"].values():
        assert r["requests"] > 0 and r["errors"] == 0 and r["check_accuracy"] >= 0.9
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    assert "keep-alive" in out["client"]
    bad = CliRunner().invoke(cli_app, ["bench", "serve", str(quick_run), "--payload", "xml"])
    assert bad.exit_code == 2 and "payload" in bad.output


def test_docs_work_offline(client):
    import re

    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    # Every URL the page loads is local: no scheme://host, no protocol-relative //host.
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    assert not re.search(r"https?://", page.text), page.text
    assert '"validatorUrl": null' in page.text
    for asset, size in (("/static/swagger-ui-bundle.js", 1_000_000), ("/static/swagger-ui.css", 100_000),
                        ("/static/swagger-favicon-32x32.png", 100), ("/static/swagger-ui.LICENSE", 10_000)):
        r = client.get(asset)
        assert r.status_code == 200 and len(r.content) > size, asset
    assert client.get("/redoc").status_code == 404


def test_require_binary_skips_locally_and_fails_under_ci(monkeypatch):
    from conftest import require_binary

    assert require_binary("sh").endswith("/sh")  # found on PATH, not at a fixed path
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_binary("digitlab-no-such-program")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must not skip"):
        require_binary("digitlab-no-such-program")


def test_dataset_mirrors_point_nowhere_in_tests():
    # A dataset missing from the shared data would be downloaded: the session points the mirrors at
    # a closed local port instead, so such a test fails at once without touching the network.
    from digitlab.data import _mirrors

    assert _mirrors() == ["http://127.0.0.1:9/"]
