"""A fitted model as a self-contained deployment folder that runs without torch or structcore.

The folder holds the backbone as one graph at the model's crop, with the per-block L2 normalisation, the
concatenation and the model's random projection folded in (images ``[B, 3, crop, crop]``, dynamic batch ->
projected patch features ``[B, P, D]``): OpenVINO IR (``backbone.xml`` + ``.bin``, fp32) or ONNX
(``backbone.onnx``, TorchScript exporter). Everything after the features stays outside the graph: per
category the memory bank and routing prototypes (``.npy``), StructCore's calibration and the thresholds
(``calibration.json``, editable), and ``manifest.json`` (config, source weights, every file's sha256).
``structcore_infer.py`` (a copy of :mod:`structcore.deployed`), ``infer.py`` (its command line, a copy of
``structcore/cli/infer.py``) and ``requirements.txt`` run it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import deployed
from .backbones import load_backbone
from .detector import Detector
from .errors import ConfigError, ModelFileError, WeightsError
from .features import fuse_layers
from .files import exclusive, sha256_file
from .runtime import FeatureGraph
from .scoring import SCORES
from .thresholds import PIXEL
from .version import __version__

#: The deployment's command line (imports the copy of deployed.py; not part of the structcore CLI).
INFER_CLI = Path(deployed.__file__).parent / "cli" / "infer.py"

FORMATS = ("openvino", "onnx")
GRAPH_FILES = {"openvino": "backbone.xml", "onnx": "backbone.onnx"}
ONNX_OPSET = 17
#: What the deployment folder needs to run (bounded like structcore's own dependencies).
REQUIREMENTS = {
    "common": ["numpy>=1.24,<3", "pillow>=10,<14", "faiss-cpu>=1.7.4,<2"],
    "onnx": ["onnxruntime>=1.16,<2"],
}
#: The exported graph must give the library's features to this cosine similarity (every patch).
MIN_COSINE = 0.9999


def requirements(format: str) -> list[str]:
    """The deployment's requirements. An OpenVINO IR needs at least the OpenVINO that wrote it (its
    operation sets), so its lower bound is this OpenVINO's release (``2026.4`` for 2026.4.1)."""
    if format != "openvino":
        return [*REQUIREMENTS["common"], *REQUIREMENTS[format]]
    import openvino

    year, release = openvino.get_version().split("-")[0].split(".")[:2]
    return [*REQUIREMENTS["common"], f"openvino>={year}.{release},<{int(year) + 1}"]


@dataclass
class ExportResult:
    folder: Path
    format: str
    seconds: float
    bytes: int
    min_cosine: float


def export_model(model: str | Path | Detector, out: str | Path, format: str = "openvino", *,
                 weights: str | Path | None = None, check: bool = True, progress: bool = True) -> ExportResult:
    """Write the deployment folder ``out`` of a fitted model (a model folder or a :class:`Detector`).

    ``weights``: the backbone weights file (default: the model's backbone by name, checked against the
    sha256 the model was fitted with). ``check``: run the exported graph on two random images and refuse
    the export if any patch's features differ from torch's by a cosine below :data:`MIN_COSINE`.
    A previous deployment at ``out`` is replaced; any other non-empty folder is refused.
    """
    if format not in FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(FORMATS)}, got {format!r}")
    started = time.perf_counter()
    detector = model if isinstance(model, Detector) else Detector.load(model, weights=weights, progress=progress)
    detector._require_fitted()
    cfg = detector.config
    backbone, info = load_backbone(cfg.backbone, weights or detector.weights)
    fitted = detector.weights_info_
    if fitted is not None and fitted.sha256 != info.sha256:
        raise WeightsError(f"this model was fitted with {cfg.backbone} weights sha256 {fitted.sha256}, but the "
                           f"weights found now ({info.path}) have sha256 {info.sha256}; pass the original file with --weights")
    graph = FeatureGraph(backbone, cfg.blocks, cfg.crop, detector.projection_, fuse_layers).eval()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_deployment(out):
        raise ModelFileError(f"{out} exists and is not a structcore deployment folder; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(out):
        tmp = out.parent / f".{out.name}.writing-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _write_graph(graph, cfg.crop, format, tmp / GRAPH_FILES[format])
            min_cos = _check_graph(graph, tmp, format, cfg.crop) if check else float("nan")
            if check and not min_cos >= MIN_COSINE:
                raise ModelFileError(f"the exported {format} graph gives features with cosine {min_cos:.6f} to torch's "
                                     f"(need >= {MIN_COSINE}); not written")
            width = backbone.embed_dim * len(cfg.blocks)
            feature_dim = width if detector.projection_ is None else int(detector.projection_.shape[1])
            _write_folder(detector, tmp, format, fitted or info, feature_dim)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return ExportResult(out, format, time.perf_counter() - started, size, min_cos)


def _is_deployment(folder: Path) -> bool:
    try:
        return json.loads((folder / deployed.MANIFEST).read_text()).get("kind") == deployed.FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _write_graph(graph: FeatureGraph, crop: int, format: str, path: Path):
    example = torch.zeros(1, 3, crop, crop)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks are constants at a fixed crop
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter; dynamo=True would need onnxscript
        warnings.simplefilter("ignore", FutureWarning)
        if format == "openvino":
            import openvino as ov

            ov.save_model(ov.convert_model(graph, example_input=example, input=[(-1, 3, crop, crop)]), str(path),
                          compress_to_fp16=False)
        else:
            torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["images"], output_names=["features"],
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})


def _check_graph(graph: FeatureGraph, folder: Path, format: str, crop: int) -> float:
    """The smallest per-patch cosine between the exported graph's and torch's features on 2 random images."""
    images = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = graph(images).numpy()
    got = deployed.GRAPHS[format](folder / GRAPH_FILES[format], None)(images.numpy())
    return min_cosine(got, want)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest cosine similarity between matching rows (last axis) of two feature arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)
    return float(cos.min())


def _write_folder(detector: Detector, tmp: Path, format: str, info, feature_dim: int):
    cfg = detector.config
    pre = cfg.preprocess
    categories, calibration = {}, {}
    for i, (name, m) in enumerate(sorted(detector.categories_.items())):
        files = {"bank": f"category_{i:03d}_bank.npy", "prototypes": f"category_{i:03d}_prototypes.npy"}
        np.save(tmp / files["bank"], m.bank.float().numpy(), allow_pickle=False)
        np.save(tmp / files["prototypes"], m.prototypes.float().numpy(), allow_pickle=False)
        categories[name] = {**files, "bank_size": len(m.bank), "train_images": len(m.train_images)}
        c, t = m.calibration, m.thresholds
        calibration[name] = {
            "calibration": {"components": list(c.components), "top_ratio": c.top_ratio, "distance": c.distance,
                            "mu": [float(v) for v in c.mu], "sigma": [float(v) for v in c.sigma], "lambda": c.lam},
            "thresholds": {s: t.values[s] for s in SCORES},
            "pixel_threshold": t.values[PIXEL],
            "median_calibration_scores": {s: float(np.median(t.scores[s])) for s in SCORES},
            "false_reject_rate": t.false_reject_rate,
            "threshold_calibration": t.method,
            "set_by": dict(t.set_by),
        }
    (tmp / deployed.CALIBRATION).write_text(json.dumps(calibration, indent=2) + "\n")
    shutil.copyfile(deployed.__file__, tmp / "structcore_infer.py")
    shutil.copyfile(INFER_CLI, tmp / "infer.py")
    (tmp / "requirements.txt").write_text("\n".join(requirements(format)) + "\n")
    sums = {f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.is_file()}
    manifest = {
        "kind": deployed.FORMAT,
        "format_version": deployed.FORMAT_VERSION,
        "format": format,
        "graph": GRAPH_FILES[format],
        "graph_io": {"input": "images [batch, 3, crop, crop] float32, normalised", "output": "features [batch, P, D] float32"},
        "structcore_version": __version__,
        "exported_with": _versions(format),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {
            "resize": pre.resize, "crop": pre.crop, "mean": list(pre.mean), "std": list(pre.std),
            "patch_size": pre.patch_size, "grid": list(cfg.grid), "k": cfg.k, "sigma": cfg.sigma,
            "pooling": cfg.pooling, "descriptor_on": cfg.descriptor_on, "decision_score": cfg.decision_score,
            "blocks": list(cfg.blocks), "feature_dim": feature_dim,
            "backbone": cfg.backbone, "seed": cfg.seed,
        },
        "weights": {"name": cfg.backbone, "sha256": info.sha256},
        "categories": categories,
        "files": sums,
        "editable": [deployed.CALIBRATION],
    }
    (tmp / deployed.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _versions(format: str) -> dict:
    versions = {"torch": torch.__version__}
    if format == "openvino":
        import openvino

        versions["openvino"] = openvino.get_version()
    else:
        import onnx

        versions["onnx"] = onnx.__version__
        versions["opset"] = ONNX_OPSET
    return versions
