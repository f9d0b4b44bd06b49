"""Run an exported structcore model with numpy, Pillow, faiss and OpenVINO or ONNX Runtime: no torch, no structcore.

``structcore export`` copies this file into the deployment folder as ``structcore_infer.py``; it imports
nothing from structcore, so it runs there on its own (``pip install -r requirements.txt``)::

    python structcore_infer.py DEPLOYMENT IMAGE... [--out predictions.json] [--category NAME]

    import structcore_infer
    model = structcore_infer.load("DEPLOYMENT")
    for r in model.predict(["part.png"]):
        print(r.category, r.decision, r.scores["hybrid"], r.normalised_score, r.anomaly_map.shape)

Every stage reproduces the library's (the module of each is named): image decoding (``images``),
preprocessing (``features.Preprocess``), the backbone graph (``runtime.GridTokens`` + ``features.fuse_layers``,
exported), routing (``router``), kNN patch scores (``knn``: exact ``IndexFlatL2``, mean squared L2 of the k
nearest), the map (``maps``: bilinear upsampling with torch's ``align_corners=False`` arithmetic, then
scipy's 'reflect' Gaussian blur), pooling, StructCore (``structure``, ``scoring``) and the decision and
normalised score (``thresholds``, ``detector.Prediction``).

The folder: ``manifest.json`` (format, config, the sha256 of every file, checked on load: a changed file
is refused, naming it), the graph, one bank and prototypes ``.npy`` per category, and ``calibration.json``
(StructCore's statistics and the thresholds per category), which is meant to be edited: it is validated,
and reported in ``edited`` when it differs from the exported one, but not refused.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from PIL import Image, ImageOps

FORMAT = "structcore-deployment"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CALIBRATION = "calibration.json"
SCORES = ("base", "struct", "hybrid")
COMPONENTS = ("std", "topk", "tv")
EPS = 1e-6
#: Images per chunk (decoded, embedded and scored together) and kNN queries per faiss call: the library's.
CHUNK_IMAGES = 64
KNN_CHUNK = 8192


class DeploymentError(ValueError):
    """A deployment folder or an input image that cannot be used; the message names the file."""


# -- files ------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise DeploymentError(f"{path}: missing; give the --out folder of a structcore export") from None
    except (OSError, ValueError) as e:
        raise DeploymentError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(value, dict):
        raise DeploymentError(f"{path}: holds a JSON {type(value).__name__}, not an object")
    return value


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DeploymentError(f"{path}: not a readable .npy array ({e})") from None


# -- images (structcore.images) ----------------------------------------------------------------------
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


def load_image(path) -> Image.Image:
    """An image file as 8-bit RGB, by structcore's rules: EXIF orientation applied, alpha dropped, 16-bit
    scaled by 255/65535, float images refused. Raises :class:`DeploymentError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DeploymentError(f"{path}: no such image file" if not path.exists() else f"{path}: is a folder, not an image file")
    try:
        with Image.open(path) as im:
            im.load()
            try:
                out = ImageOps.exif_transpose(im)
            except Exception:  # a broken EXIF block does not make the image unusable
                out = im.copy()
            if out is im:
                out = im.copy()
    except Exception as e:
        raise DeploymentError(f"{path}: cannot read this image file ({type(e).__name__}: {e}); it is corrupt, "
                              "truncated or not an image") from None
    return _to_rgb(out, path)


def _to_rgb(im: Image.Image, name) -> Image.Image:
    if im.mode == "F":
        raise DeploymentError(f"{name}: 32-bit floating point image; convert it to an 8- or 16-bit image")
    if im.mode in _SIXTEEN_BIT or im.mode == "I":
        a = np.asarray(im)
        if im.mode == "I" and a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise DeploymentError(f"{name}: 32-bit integer image outside the 16-bit range; convert it to 8 or 16 bits")
        im = Image.fromarray(np.rint(a.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8))
    elif im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    if im.mode == "RGB":
        return im
    try:
        return im.convert("RGB")
    except Exception as e:
        raise DeploymentError(f"{name}: unsupported image mode {im.mode!r} ({e}); convert it to RGB") from None


def _array_image(a: np.ndarray, name: str) -> Image.Image:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or 0 in a.shape:
        raise DeploymentError(f"{name}: an image array must be [H, W] or [H, W, 3|4], got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = np.rint(a.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise DeploymentError(f"{name}: a float image array must hold values in [0, 1]; scale it or pass uint8")
        a = np.rint(a.astype(np.float64) * 255.0).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise DeploymentError(f"{name}: image arrays must be uint8, uint16, bool or float in [0, 1], got {a.dtype}")
    return Image.fromarray(np.ascontiguousarray(a))


def as_image(source, name: str) -> Image.Image:
    """A path, PIL image or ``[H, W(, 3|4)]`` array as 8-bit RGB."""
    if isinstance(source, (str, Path)):
        return load_image(source)
    if isinstance(source, Image.Image):
        return _to_rgb(source, name)
    if isinstance(source, np.ndarray):
        return _to_rgb(_array_image(source, name), name)
    raise DeploymentError(f"{name}: expected an image path, a PIL image or a numpy array, got {type(source).__name__}")


def preprocess(image: Image.Image, resize: int, crop: int, mean, std) -> np.ndarray:
    """``[3, crop, crop]`` float32: bilinear resize to ``resize`` x ``resize``, center crop (offset rounded as
    torchvision's CenterCrop), /255, normalised by ``mean``/``std`` (structcore.features.Preprocess)."""
    image = image.convert("RGB").resize((resize, resize), Image.BILINEAR)
    o = int(round((resize - crop) / 2.0))
    x = np.asarray(image.crop((o, o, o + crop, o + crop)), dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


# -- the backbone graph -------------------------------------------------------------------------------
def _runtime(module: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise DeploymentError(f"this deployment runs on {module}, which is not installed here ({e}); "
                              "pip install -r requirements.txt (in the deployment folder)") from None


class _OpenVINOGraph:
    def __init__(self, path: Path, threads: int | None):
        ov = _runtime("openvino")

        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}  # fp32, as exported
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self._compiled = ov.Core().compile_model(str(path), "CPU", config)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._compiled(images)[0], dtype=np.float32)


class _ONNXGraph:
    def __init__(self, path: Path, threads: int | None):
        ort = _runtime("onnxruntime")

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(None, {self._input: images})[0], dtype=np.float32)


GRAPHS = {"openvino": _OpenVINOGraph, "onnx": _ONNXGraph}


# -- scoring (structcore.knn, maps, structure, scoring) --------------------------------------------------
def patch_scores(index, queries: np.ndarray, k: int) -> np.ndarray:
    """Mean squared L2 distance of each query ``[Q, D]`` to its ``k`` nearest bank entries (exact search)."""
    if not 1 <= k <= index.ntotal:
        raise DeploymentError(f"k={k} nearest neighbours, but the memory bank has {index.ntotal} entries")
    out = []
    for start in range(0, len(queries), KNN_CHUNK):
        d, _ = index.search(np.ascontiguousarray(queries[start : start + KNN_CHUNK], dtype=np.float32), k)
        out.append(d.mean(1, dtype=np.float32))
    return np.concatenate(out)


def _linear_taps(n_in: int, n_out: int):
    """torch's bilinear taps for ``align_corners=False`` (float32 arithmetic): low/high index and weights."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    lo = src.astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    w1 = (src - lo.astype(np.float32)).astype(np.float32)
    return lo, hi, (np.float32(1) - w1).astype(np.float32), w1


def upsample_bilinear(grids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[B, h, w]`` -> ``[B, H, W]`` float32, as ``F.interpolate(mode="bilinear", align_corners=False)``:
    the width pair is interpolated first, then the height pair, each product and sum in float32."""
    grids = np.asarray(grids, dtype=np.float32)
    r0, r1, wr0, wr1 = _linear_taps(grids.shape[1], size[0])
    c0, c1, wc0, wc1 = _linear_taps(grids.shape[2], size[1])
    rows = grids[:, :, c0] * wc0 + grids[:, :, c1] * wc1
    # C order, as torch's: numpy's float32 sums (mean pooling) are pairwise only along a contiguous axis
    return np.ascontiguousarray(rows[:, r0, :] * wr0[:, None] + rows[:, r1, :] * wr1[:, None])


def _gaussian_axis(x: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d(x, sigma, axis, mode="reflect", truncate=4.0) for a float32 ``x``:
    the same kernel, sums in float64 (centre first, then the symmetric pairs from the outermost), float32 out."""
    radius = int(4.0 * float(sigma) + 0.5)
    taps = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / (sigma * sigma) * taps**2)
    weights = weights / weights.sum()
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(x.astype(np.float64), pad, mode="symmetric")  # scipy's 'reflect': d c b a | a b c d

    def shifted(offset: int) -> np.ndarray:
        return np.take(padded, np.arange(radius + offset, radius + offset + n), axis=axis)

    out = shifted(0) * weights[radius]
    for j in range(radius, 0, -1):
        out += (shifted(-j) + shifted(j)) * weights[radius - j]
    return np.ascontiguousarray(out, dtype=np.float32)


def anomaly_maps(grids: np.ndarray, size: tuple[int, int], sigma: float) -> np.ndarray:
    """Patch-score grids ``[B, h, w]`` -> maps ``[B, H, W]`` float32: upsample, then blur (sigma 0: none)."""
    maps = upsample_bilinear(grids, size)
    if sigma > 0:
        maps = _gaussian_axis(_gaussian_axis(maps, sigma, 1), sigma, 2)
    return maps


def pool(maps: np.ndarray, how: str = "max", top_ratio: float = 0.01) -> np.ndarray:
    flat = maps.reshape(maps.shape[0], -1)
    if how == "max":
        return flat.max(1)
    if how == "mean":
        return flat.mean(1)
    if how == "topk":
        k = max(1, int(flat.shape[1] * top_ratio))
        return np.partition(flat, -k, axis=1)[:, -k:].mean(1)
    raise DeploymentError(f"unknown pooling {how!r}")


def descriptor(maps: np.ndarray, components, top_ratio: float) -> np.ndarray:
    """StructCore's phi ``[B, len(components)]`` (float64): std, mean of the top ``top_ratio``, TV / (H*W)."""
    maps = maps.astype(np.float64, copy=False)
    h, w = maps.shape[1:]

    def tv():
        dy = np.abs(np.diff(maps, axis=1)).sum((1, 2))
        dx = np.abs(np.diff(maps, axis=2)).sum((1, 2))
        return (dy + dx) / (h * w)

    columns = {"std": lambda: maps.reshape(len(maps), -1).std(1), "topk": lambda: pool(maps, "topk", top_ratio), "tv": tv}
    return np.stack([columns[c]() for c in components], axis=1)


def structural_distance(phi: np.ndarray, mu: np.ndarray, sigma: np.ndarray, kind: str) -> np.ndarray:
    if kind in ("mahalanobis", "l1_std", "chebyshev_std"):
        z = (phi - mu) / (sigma + EPS)
    elif kind in ("euclidean", "manhattan", "chebyshev"):
        z = phi - mu
    elif kind == "cosine":
        return 1.0 - phi @ mu / (np.linalg.norm(phi, axis=1) * np.linalg.norm(mu) + EPS)
    else:
        raise DeploymentError(f"unknown structural distance {kind!r}")
    if kind in ("mahalanobis", "euclidean"):
        return np.sqrt((z * z).sum(1))
    if kind in ("l1_std", "manhattan"):
        return np.abs(z).sum(1)
    return np.abs(z).max(1)


def route_distances(features: np.ndarray, prototypes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per category, the mean over patches of the min squared L2 from the unit-norm patch to its prototypes."""
    z = features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), np.float32(1e-12))
    return {name: np.maximum(2 - 2 * (z @ p.T), 0).min(-1).mean(-1) for name, p in prototypes.items()}


def normalise(value: float, threshold: float, median: float) -> float:
    """0 = the median calibration score, 1.0 = the threshold (``value / threshold`` when they coincide)."""
    t, m = float(threshold), float(median)
    if t - m <= 1e-12 * max(abs(t), 1.0):
        m = t - (abs(t) or 1.0)
    return float((value - m) / (t - m))


# -- the deployment -----------------------------------------------------------------------------------
@dataclass
class Result:
    """One scored image (like structcore's Prediction): category, the three scores with their thresholds and
    normalised values (1.0 = the threshold), the decision and the anomaly map (crop frame, or None)."""

    path: str
    category: str
    scores: dict[str, float]
    thresholds: dict[str, float]
    normalised_scores: dict[str, float]
    decision_score: str
    pixel_threshold: float
    image_size: tuple[int, int]
    anomaly_map: np.ndarray | None = field(default=None, repr=False)

    @property
    def score(self) -> float:
        return self.scores[self.decision_score]

    @property
    def normalised_score(self) -> float:
        return self.normalised_scores[self.decision_score]

    @property
    def decision(self) -> str:
        return "reject" if self.scores[self.decision_score] > self.thresholds[self.decision_score] else "accept"

    def as_dict(self) -> dict:
        return {"path": self.path, "category": self.category, "decision": self.decision,
                "decision_score": self.decision_score, "score": self.score, "normalised_score": self.normalised_score,
                "scores": self.scores, "thresholds": self.thresholds, "normalised_scores": self.normalised_scores,
                "pixel_threshold": self.pixel_threshold, "map_peak": None if self.anomaly_map is None else float(self.anomaly_map.max()),
                "image_size": list(self.image_size)}


@dataclass
class _Category:
    name: str
    index: object  # faiss.IndexFlatL2 over the bank
    prototypes: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    lam: float
    components: tuple[str, ...]
    top_ratio: float
    distance: str
    thresholds: dict[str, float]
    pixel_threshold: float
    medians: dict[str, float]


class Deployment:
    """An exported model, loaded: :meth:`predict` scores images; :meth:`features` runs the graph alone."""

    def __init__(self, folder: Path, manifest: dict, categories: dict[str, _Category], graph, edited: list[str]):
        self.folder, self.manifest, self.categories, self.edited = folder, manifest, categories, edited
        self.config = manifest["config"]
        self._graph = graph

    @property
    def format(self) -> str:
        return self.manifest["format"]

    def preprocess(self, image) -> np.ndarray:
        c = self.config
        return preprocess(image, c["resize"], c["crop"], c["mean"], c["std"])

    def features(self, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Projected patch features ``[B, P, D]`` of normalised images ``[B, 3, crop, crop]``."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        return np.concatenate([self._graph(images[s : s + batch_size]) for s in range(0, len(images), batch_size)])

    def route(self, features: np.ndarray) -> list[str]:
        names = list(self.categories)
        per = route_distances(features, {n: self.categories[n].prototypes for n in names})
        return [names[i] for i in np.stack([per[n] for n in names], axis=1).argmin(1)]

    def predict(self, images, category: str | None = None, maps: bool = True, batch_size: int = 8) -> list[Result]:
        """Score images (paths, PIL images or arrays, or one of them); ``category=None`` routes each image."""
        if isinstance(images, (str, Path, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)):
            images = [images]
        images = list(images)
        if category is not None and category not in self.categories:
            raise DeploymentError(f"unknown category {category!r}; this deployment has: {', '.join(sorted(self.categories))}")
        results = []
        for start in range(0, len(images), CHUNK_IMAGES):
            results += self._predict_chunk(images[start : start + CHUNK_IMAGES], start, category, maps, batch_size)
        return results

    def _predict_chunk(self, images, offset: int, category, maps: bool, batch_size: int) -> list[Result]:
        names = [str(s) if isinstance(s, (str, Path)) else f"<image {offset + i}>" for i, s in enumerate(images)]
        decoded = [as_image(s, n) for s, n in zip(images, names)]
        feats = self.features(np.stack([self.preprocess(im) for im in decoded]), batch_size)
        routed = [category] * len(images) if category else self.route(feats)
        out: list[Result | None] = [None] * len(images)
        for name in dict.fromkeys(routed):
            rows = [i for i, c in enumerate(routed) if c == name]
            for j, (scores, amap) in enumerate(self._score(self.categories[name], feats[rows], maps)):
                i = rows[j]
                out[i] = self._result(self.categories[name], names[i], decoded[i].size, scores, amap)
        return out

    def _score(self, cat: _Category, feats: np.ndarray, keep_maps: bool):
        c = self.config
        rows, cols = c["grid"]
        grids = patch_scores(cat.index, feats.reshape(-1, feats.shape[-1]), c["k"]).reshape(len(feats), rows, cols)
        maps = anomaly_maps(grids, (c["crop"], c["crop"]), c["sigma"])
        base = pool(maps, c["pooling"])  # the library pools with the default top_ratio (0.01) for "topk"
        on = maps if c["descriptor_on"] == "map" else grids
        d = structural_distance(descriptor(on, cat.components, cat.top_ratio), cat.mu, cat.sigma, cat.distance)
        hybrid = base + cat.lam * d
        for j in range(len(feats)):
            scores = {"base": float(base[j]), "struct": float(d[j]), "hybrid": float(hybrid[j])}
            yield scores, maps[j] if keep_maps else None

    def _result(self, cat: _Category, name: str, size, scores: dict, amap) -> Result:
        return Result(
            path=name, category=cat.name, scores=scores, thresholds=dict(cat.thresholds),
            normalised_scores={s: normalise(scores[s], cat.thresholds[s], cat.medians[s]) for s in SCORES},
            decision_score=self.config["decision_score"], pixel_threshold=cat.pixel_threshold,
            image_size=(int(size[0]), int(size[1])), anomaly_map=amap,
        )


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DeploymentError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _calibration(path: Path, name: str, entry) -> dict:
    """One category's entry of calibration.json, checked (it may have been edited by hand)."""
    where = f"{path}: category {name!r}"
    try:
        cal, thr = entry["calibration"], entry["thresholds"]
        components = tuple(cal["components"])
        if not components or set(components) - set(COMPONENTS):
            raise DeploymentError(f"{where}: components must be a subset of {COMPONENTS}, got {list(components)}")
        mu = np.array([_number(v, f"{where}: mu") for v in cal["mu"]], dtype=np.float64)
        sigma = np.array([_number(v, f"{where}: sigma") for v in cal["sigma"]], dtype=np.float64)
        if len(mu) != len(components) or len(sigma) != len(components):
            raise DeploymentError(f"{where}: mu and sigma need one value per component {list(components)}")
        return dict(
            mu=mu, sigma=sigma, lam=_number(cal["lambda"], f"{where}: lambda"), components=components,
            top_ratio=_number(cal["top_ratio"], f"{where}: top_ratio"), distance=str(cal["distance"]),
            thresholds={s: _number(thr[s], f"{where}: thresholds.{s}") for s in SCORES},
            pixel_threshold=_number(entry["pixel_threshold"], f"{where}: pixel_threshold"),
            medians={s: _number(entry["median_calibration_scores"][s], f"{where}: median_calibration_scores.{s}")
                     for s in SCORES},
        )
    except (KeyError, TypeError) as e:
        raise DeploymentError(f"{where}: missing or malformed field ({type(e).__name__}: {e})") from None


def load(folder, threads: int | None = None) -> Deployment:
    """Read a deployment folder, checking its format and every file's sha256, and compile its graph."""
    folder = Path(folder)
    manifest = _read_json(folder / MANIFEST)
    if manifest.get("format") not in GRAPHS or manifest.get("kind") != FORMAT:
        raise DeploymentError(f"{folder / MANIFEST}: not a structcore deployment manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DeploymentError(f"{folder / MANIFEST}: deployment format {manifest.get('format_version')!r}; this "
                              f"structcore_infer.py reads format {FORMAT_VERSION}: export the model again")
    files, listed = manifest.get("files"), manifest.get("categories")
    if not isinstance(files, dict) or not isinstance(listed, dict) or not isinstance(manifest.get("config"), dict) \
            or manifest.get("graph") not in files or not all(isinstance(v, str) for v in files.values()):
        raise DeploymentError(f"{folder / MANIFEST}: damaged (files, categories, config or graph missing or malformed); "
                              "export the model again")
    editable = set(manifest.get("editable", []))
    edited = []
    for name, digest in files.items():
        path = folder / name
        if Path(name).name != name or name in ("", ".", ".."):
            raise DeploymentError(f"{folder / MANIFEST}: file names must be plain names in the folder, not {name!r}")
        if not path.is_file():
            raise DeploymentError(f"{path}: listed in {MANIFEST} but missing")
        if sha256_file(path) != digest:
            if name not in editable:
                raise DeploymentError(f"{path}: does not match its sha256 in {MANIFEST}: the file is corrupt or was "
                                      "changed; export the model again")
            edited.append(name)
    calibration = _read_json(folder / CALIBRATION)
    categories = {}
    for name, entry in listed.items():
        if not isinstance(entry, dict) or entry.get("bank") not in files or entry.get("prototypes") not in files:
            raise DeploymentError(f"{folder / MANIFEST}: category {name!r} must name its bank and prototypes files")
        if name not in calibration:
            raise DeploymentError(f"{folder / CALIBRATION}: category {name!r} is missing")
        bank = _load_array(folder / entry["bank"]).astype(np.float32, copy=False)
        index = faiss.IndexFlatL2(bank.shape[1])
        index.add(np.ascontiguousarray(bank))
        protos = _load_array(folder / entry["prototypes"]).astype(np.float32, copy=False)
        categories[name] = _Category(name=name, index=index, prototypes=protos, **_calibration(folder / CALIBRATION, name, calibration[name]))
    graph = GRAPHS[manifest["format"]](folder / manifest["graph"], threads)
    return Deployment(folder, manifest, categories, graph, edited)


# -- inputs --------------------------------------------------------------------------------------------
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def image_files(inputs) -> list[Path]:
    """Files as given; folders as their image files (searched recursively, sorted, hidden ones skipped)."""
    out = []
    for item in map(Path, inputs):
        if item.is_dir():
            out += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                          and not any(part.startswith(".") for part in p.relative_to(item).parts))
        else:
            out.append(item)
    return out
