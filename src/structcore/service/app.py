"""The HTTP API and the inspection page: ``create_app(model)`` gives a FastAPI app that loads the model
once, warms it up on the inference thread, and serves

* ``GET /healthz`` (alive), ``GET /readyz`` (model loaded and warm), ``GET /v1/model`` (categories,
  thresholds, train counts, weights, config, version),
* ``POST /v1/predict`` (multipart field ``file``, optional ``category``, ``overlay``, ``regions``) and
  ``POST /v1/predict/batch`` (fields ``files``; results in order, per-image errors),
* the page at ``/`` and the OpenAPI docs at ``/docs``, all from package files (no CDN).

Inference runs on one worker thread behind a bounded queue (:mod:`.queue`); a full queue is a 503 with
Retry-After. Every error is JSON ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException

from ..detector import Detector, load_model
from ..errors import ConfigError
from ..scoring import SCORES
from ..thresholds import PIXEL
from ..version import __version__
from .guards import BearerToken, BodyLimit
from .queue import InferenceQueue, QueueFull
from .results import prediction_json
from .uploads import MAX_BODY_BYTES, MAX_PIXELS, UploadError, check_header, decode_upload

STATIC = resources.files("structcore.service") / "static"


def host_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Upload:
    """One uploaded file that passed the header checks: its name and its bytes."""

    def __init__(self, name: str, data: bytes):
        self.name, self.data = name, data


class Service:
    """The model, the queue in front of it and the request limits; the routes call into it."""

    def __init__(self, detector: Detector, queue_size: int, max_pixels: int, max_batch: int):
        self.detector = detector
        self.queue = InferenceQueue(queue_size)
        self.max_pixels = max_pixels
        self.max_batch = max_batch
        self.warm = False
        self.warmup_error: str | None = None

    def warm_up(self):
        """One prediction per category on a gray image: weights, banks and kernels are ready after it."""
        crop = self.detector.config.crop
        gray = Image.new("RGB", (crop, crop), (128, 128, 128))
        for name in self.detector.categories_:
            self.detector.predict(gray, category=name)
        self.warm = True

    def category(self, given: str | None) -> str | None:
        """The requested category (None: route), or a 404 naming the known ones."""
        if not given:
            return None
        if given not in self.detector.categories_:
            known = ", ".join(sorted(self.detector.categories_))
            raise HTTPException(404, f"unknown category {given!r}; this model has: {known}")
        return given

    async def upload(self, file: UploadFile) -> Upload:
        name = file.filename or "upload"
        data = await file.read()
        check_header(data, name, self.max_pixels)
        return Upload(name, data)

    def predict(self, uploads: list[Upload], category: str | None, with_overlay: bool, with_regions: bool,
                submitted: float) -> list[dict | UploadError]:
        """Decode, predict (one call for the batch) and render; runs on the inference thread."""
        started = time.perf_counter()
        decoded, results = [], [None] * len(uploads)
        for i, upload in enumerate(uploads):
            t = time.perf_counter()
            try:
                decoded.append((i, decode_upload(upload.data, upload.name), 1000 * (time.perf_counter() - t)))
            except UploadError as e:
                results[i] = e
        t = time.perf_counter()
        predictions = self.detector.predict([image for _, image, _ in decoded], category) if decoded else []
        predict_ms = 1000 * (time.perf_counter() - t)
        for (i, image, decode_ms), pred in zip(decoded, predictions):
            out = prediction_json(pred, image, uploads[i].name, routed=category is None,
                                  with_overlay=with_overlay, with_regions=with_regions)
            out["timings_ms"] = {"queue": 1000 * (started - submitted), "decode": decode_ms, "predict": predict_ms,
                                 **out["timings_ms"]}
            results[i] = out
        return results

    async def run(self, uploads: list[Upload], category: str | None, with_overlay: bool, with_regions: bool):
        submitted = time.perf_counter()
        try:
            future = self.queue.submit(lambda: self.predict(uploads, category, with_overlay, with_regions, submitted))
        except QueueFull as e:
            raise HTTPException(503, str(e), headers={"Retry-After": str(e.retry_after)}) from None
        results = await asyncio.wrap_future(future)
        for out in results:
            if isinstance(out, dict):
                out["timings_ms"]["total"] = 1000 * (time.perf_counter() - submitted)
        return results

    def model_info(self) -> dict:
        d = self.detector
        info = d.weights_info_
        return {
            "version": __version__,
            "decision_score": d.config.decision_score,
            "precision": d.precision,
            "runtime": d.runtime,
            "weights": {"name": d.config.backbone, "sha256": getattr(info, "sha256", None),
                        "source": getattr(info, "source", None)},
            "categories": [
                {"name": name, "thresholds": {s: m.thresholds.values[s] for s in SCORES},
                 "pixel_threshold": m.thresholds.values[PIXEL], "false_reject_rate": m.thresholds.false_reject_rate,
                 "train_images": len(m.train_images), "bank_size": len(m.bank), "lambda": m.calibration.lam}
                for name, m in sorted(d.categories_.items())
            ],
            "config": asdict(d.config),
            "limits": {"queue_size": self.queue.size, "max_batch": self.max_batch, "max_pixels": self.max_pixels},
        }


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ())[1:]) or "request"
        parts.append(f"form field {field!r}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) + " (send a multipart/form-data body: the image in 'file', or images in 'files')"


def create_app(model: Detector | str | Path, *, queue_size: int = 4, token: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, max_pixels: int = MAX_PIXELS, max_batch: int = 16,
               threads: int | None = None, on_ready: Callable[[], None] | None = None) -> FastAPI:
    """The app over a fitted detector (or a model folder, loaded now). ``threads``: torch's CPU threads
    (default: this process's cores); ``token``: required as a bearer token on every path but ``/healthz``
    and the page's files; ``on_ready`` is called once the model is warm."""
    for name, value, low in (("queue_size", queue_size, 1), ("max_body_bytes", max_body_bytes, 1),
                             ("max_pixels", max_pixels, 1), ("max_batch", max_batch, 1), ("threads", threads or 1, 1)):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    if Image.MAX_IMAGE_PIXELS and max_pixels > Image.MAX_IMAGE_PIXELS:
        raise ConfigError(f"max_pixels {max_pixels:,} is above Pillow's decompression-bomb limit "
                          f"{Image.MAX_IMAGE_PIXELS:,}; choose at most that")
    if token is not None and not token.strip():
        raise ConfigError("the API token is empty; set STRUCTCORE_API_TOKEN to a secret, or unset it")
    detector = model if isinstance(model, Detector) else load_model(model, progress=False)
    detector.progress = False
    torch.set_num_threads(threads or host_cores())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = Service(detector, queue_size, max_pixels, max_batch)
        app.state.service = service
        warm = asyncio.wrap_future(service.queue.submit(service.warm_up))
        warm.add_done_callback(lambda f: _warmed(service, f, on_ready))
        try:
            yield
        finally:
            await asyncio.to_thread(service.queue.close)

    app = FastAPI(title="structcore", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Training-free visual anomaly detection: score images against a fitted model.")
    _add_routes(app)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.mount("/docs-assets", StaticFiles(directory=str(resources.files("fastapi_offline") / "static")), name="docs-assets")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return _error(422, _validation_message(exc))

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError):
        return _error(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception):
        return _error(500, f"unexpected {type(exc).__name__}: {exc} (a bug in structcore: please report it)")

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if token is not None:
        app.add_middleware(BearerToken, token=token)  # outermost: nobody without the token gets a body read
    return app


def _warmed(service: Service, future: asyncio.Future, on_ready: Callable[[], None] | None):
    if future.cancelled():
        return
    if (error := future.exception()) is not None:
        service.warmup_error = f"warm-up failed: {type(error).__name__}: {error}"
    elif on_ready is not None:
        on_ready()


def _add_routes(app: FastAPI):
    def service(request: Request) -> Service:
        return request.app.state.service

    @app.get("/healthz", summary="the process is alive")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz", summary="the model is loaded and warm", responses={503: {"description": "warming up"}})
    async def readyz(request: Request):
        s = service(request)
        if s.warmup_error:
            return _error(503, s.warmup_error)
        if not s.warm:
            return _error(503, "the model is warming up; retry in a few seconds", {"Retry-After": "2"})
        return {"status": "ready"}

    @app.get("/v1/model", summary="categories (thresholds, train counts), weights, config, version")
    async def model(request: Request):
        return service(request).model_info()

    @app.post("/v1/predict", summary="score one image",
              responses={404: {"description": "unknown category"}, 413: {"description": "too large"},
                         415: {"description": "not an image"}, 422: {"description": "corrupt or truncated"},
                         503: {"description": "queue full (see Retry-After)"}})
    async def predict(request: Request, file: UploadFile = File(..., description="the image"),
                      category: str | None = Form(None, description="the image's category (default: routed)"),
                      overlay: bool = Form(False, description="include the heatmap overlay (PNG, base64)"),
                      regions: bool = Form(False, description="include the defect regions")):
        s = service(request)
        name = s.category(category)
        (result,) = await s.run([await s.upload(file)], name, overlay, regions)
        if isinstance(result, UploadError):
            raise result
        return result

    @app.post("/v1/predict/batch", summary="score several images; results in order, per-image errors")
    async def predict_batch(request: Request, files: list[UploadFile] = File(..., description="the images"),
                            category: str | None = Form(None, description="category of all of them (default: routed)"),
                            overlay: bool = Form(False), regions: bool = Form(False)):
        s = service(request)
        if len(files) > s.max_batch:
            raise HTTPException(413, f"{len(files)} images in one batch; this server takes at most {s.max_batch}")
        name = s.category(category)
        uploads, results = [], [None] * len(files)
        for i, file in enumerate(files):
            try:
                uploads.append((i, await s.upload(file)))
            except UploadError as e:
                results[i] = e
        if uploads:
            for (i, _), out in zip(uploads, await s.run([u for _, u in uploads], name, overlay, regions)):
                results[i] = out
        return {"results": [
            {"file": files[i].filename, "status": r.status, "error": str(r)} if isinstance(r, UploadError) else r
            for i, r in enumerate(results)
        ]}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(str(STATIC / "index.html"))

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="structcore API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon.png")
