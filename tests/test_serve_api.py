"""The HTTP API on a model fitted on the tiny random ViT: every endpoint, every bad upload, the token,
the body and pixel limits and the full queue (a real uvicorn server on a loopback port)."""

import base64
import io
import struct
import threading
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from structcore import Detector, DetectorConfig
from structcore.service import background_server, create_app

TINY = dict(backbone="tiny", resize=64, crop=56, blocks=(-1, -2, -4), projection_dim=32, coreset_ratio=0.25)


@pytest.fixture(scope="module")
def detector(synthetic_mvtec, tiny_backbone):
    det = Detector(DetectorConfig(**TINY), precision="fp32", progress=False, batch_size=4)
    for category in ("widget", "gadget"):
        det.fit(category, sorted((synthetic_mvtec / category / "train" / "good").glob("*.png")))
    return det


@pytest.fixture(scope="module")
def server(detector):
    with background_server(create_app(detector, queue_size=2, max_body_bytes=200_000, max_pixels=500_000)) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            _wait_ready(client)
            yield client


def _wait_ready(client):
    event = threading.Event()
    while client.get("/readyz").status_code != 200:
        event.wait(0.05)


def _png(path: Path) -> bytes:
    return path.read_bytes()


def _test_image(synthetic_mvtec, sub="scratch", i=0) -> Path:
    return synthetic_mvtec / "widget" / "test" / sub / f"{i:03d}.png"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (the pixels themselves never arrive)."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def _post(client, data: bytes, name="x.png", **fields):
    return client.post("/v1/predict", files={"file": (name, data, "image/png")}, data=fields)


def test_health_ready_and_model(server, detector):
    assert server.get("/healthz").json() == {"status": "alive"}
    assert server.get("/readyz").json() == {"status": "ready"}
    model = server.get("/v1/model").json()
    assert [c["name"] for c in model["categories"]] == ["gadget", "widget"]
    widget = model["categories"][1]
    thresholds = detector.categories_["widget"].thresholds.values
    assert widget["thresholds"] == {k: thresholds[k] for k in ("base", "struct", "hybrid")}
    assert widget["pixel_threshold"] == thresholds["pixel"]
    assert widget["train_images"] == 8
    assert model["weights"] == {"name": "tiny", "sha256": "0" * 64, "source": "test"}
    assert model["config"]["crop"] == 56
    assert model["version"] == __import__("structcore").__version__


def test_predict_equals_offline_predict(server, detector, synthetic_mvtec):
    path = _test_image(synthetic_mvtec)
    offline = detector.predict([path], category="widget")[0]
    answer = _post(server, _png(path), name=path.name, category="widget").json()
    assert answer["scores"] == pytest.approx(offline.scores, rel=1e-6)
    assert answer["thresholds"] == offline.thresholds
    assert answer["decision"] == offline.decision
    assert answer["category"] == "widget" and answer["routed"] is False
    assert answer["score"] == pytest.approx(offline.scores[offline.decision_score], rel=1e-6)
    assert answer["threshold"] == offline.thresholds[offline.decision_score]
    assert set(answer["timings_ms"]) == {"queue", "decode", "predict", "render", "total"}
    assert "overlay_png" not in answer and "regions" not in answer


def test_predict_routes_and_returns_overlay_and_regions(server, detector, synthetic_mvtec):
    path = synthetic_mvtec / "gadget" / "test" / "scratch" / "001.png"
    offline = detector.predict([path])[0]
    answer = _post(server, _png(path), overlay="true", regions="true").json()
    assert answer["routed"] is True and answer["category"] == offline.category
    assert answer["scores"] == pytest.approx(offline.scores, rel=1e-6)
    picture = Image.open(io.BytesIO(base64.b64decode(answer["overlay_png"])))
    assert picture.format == "PNG" and picture.size[0] > 0
    assert answer["image_size"] == [64, 64]
    for region in answer["regions"]:
        assert 0 <= region["x0"] < region["x1"] <= 64 and 0 <= region["y0"] < region["y1"] <= 64
        assert region["peak"] > answer["pixel_threshold"]
    normalised = answer["normalised_scores"][answer["decision_score"]]
    assert answer["normalised_score"] == normalised
    assert (normalised > 1) == (answer["decision"] == "reject")


def test_batch_keeps_order_and_reports_bad_images_alone(server, detector, synthetic_mvtec):
    good, bad = _test_image(synthetic_mvtec, "good", 1), _test_image(synthetic_mvtec, "scratch", 2)
    files = [("files", ("a.png", _png(good))), ("files", ("text.png", b"hello, not an image")),
             ("files", ("b.png", _png(bad))), ("files", ("cut.png", _png(good)[:300]))]
    response = server.post("/v1/predict/batch", files=files, data={"category": "widget"})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["file"] for r in results] == ["a.png", "text.png", "b.png", "cut.png"]
    offline = detector.predict([good, bad], category="widget")
    assert results[0]["scores"] == pytest.approx(offline[0].scores, rel=1e-6)
    assert results[2]["scores"] == pytest.approx(offline[1].scores, rel=1e-6)
    assert results[1]["status"] == 415 and "not an image" in results[1]["error"]
    assert results[3]["status"] == 422 and "cut.png" in results[3]["error"]


@pytest.mark.parametrize("name, make, status, words", [
    ("zero-byte", lambda good: b"", 400, "empty"),
    ("text", lambda good: b"just some text\n" * 10, 415, "not an image"),
    ("corrupt", lambda good: good[:200] + bytes(range(256)) * 8 + good[200 + 2048:], 422, "corrupt"),
    ("truncated", lambda good: good[: len(good) // 2], 422, "truncated"),
    ("huge dimensions", lambda good: _png_claiming(100_000, 100_000), 413, "pixels"),
    ("over the pixel limit", lambda good: _png_claiming(1000, 1000), 413, "500,000"),
])
def test_bad_uploads_get_a_json_error_and_the_server_keeps_serving(server, synthetic_mvtec, name, make, status, words):
    good = _png(_test_image(synthetic_mvtec))
    response = _post(server, make(good), name=f"{name}.png")
    assert response.status_code == status, response.text
    assert words in response.json()["error"] and f"{name}.png" in response.json()["error"]
    assert _post(server, good).status_code == 200


def test_body_over_the_limit_is_refused_with_413(server, synthetic_mvtec):
    big = _png(_test_image(synthetic_mvtec)) + b"\0" * 300_000
    response = _post(server, big)
    assert response.status_code == 413 and "200,000 bytes" in response.json()["error"]
    assert _post(server, _png(_test_image(synthetic_mvtec))).status_code == 200


def test_body_over_the_limit_without_content_length_is_refused(server, synthetic_mvtec):
    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\n"
        for _ in range(40):
            yield b"\0" * 10_000
        yield b"\r\n--b--\r\n"

    response = server.post("/v1/predict", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413 and "limit" in response.json()["error"]


def test_missing_file_field_and_unknown_category(server, synthetic_mvtec):
    response = server.post("/v1/predict", data={"category": "widget"})
    assert response.status_code == 422 and "'file'" in response.json()["error"]
    response = _post(server, _png(_test_image(synthetic_mvtec)), category="nut")
    assert response.status_code == 404
    assert response.json()["error"] == "unknown category 'nut'; this model has: gadget, widget"


def test_page_and_docs_are_served_offline(server):
    page = server.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert server.get(asset).status_code == 200
    docs = server.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert server.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert set(server.get("/openapi.json").json()["paths"]) == {
        "/healthz", "/readyz", "/v1/model", "/v1/predict", "/v1/predict/batch"}


def test_token_is_required_everywhere_but_healthz_and_the_page(detector, synthetic_mvtec):
    image = _png(_test_image(synthetic_mvtec))
    with background_server(create_app(detector, token="s3cret")) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/").status_code == 200
        for path in ("/readyz", "/v1/model"):
            missing = client.get(path)
            assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]
            assert missing.headers["WWW-Authenticate"].startswith("Bearer")
            wrong = client.get(path, headers={"Authorization": "Bearer s3creT"})
            assert wrong.status_code == 401 and "wrong token" in wrong.json()["error"]
        assert _post(client, image).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        while client.get("/readyz", headers=auth).status_code != 200:
            threading.Event().wait(0.05)
        response = client.post("/v1/predict", files={"file": ("x.png", image)}, headers=auth)
        assert response.status_code == 200 and response.json()["category"] == "widget"


def test_a_full_queue_answers_503_and_the_queued_requests_all_answer(detector, synthetic_mvtec, monkeypatch):
    release, busy = threading.Event(), threading.Event()
    real_predict = detector.predict

    def blocked_predict(*args, **kwargs):
        busy.set()
        release.wait()
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(detector, "predict", blocked_predict)
    image = _png(_test_image(synthetic_mvtec))
    app = create_app(detector, queue_size=2)
    with background_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        busy.wait()  # the worker is inside the warm-up
        assert client.get("/readyz").status_code == 503
        answers = [None, None]

        def send(i):
            answers[i] = _post(client, image, category="widget")

        threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        while app.state.service.queue.waiting < 2:
            threading.Event().wait(0.02)
        refused = _post(client, image, category="widget")
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert "queue is full" in refused.json()["error"]
        release.set()
        for t in threads:
            t.join()
        assert [a.status_code for a in answers] == [200, 200]
        assert client.get("/readyz").status_code == 200
