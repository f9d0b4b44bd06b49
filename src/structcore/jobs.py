"""Whole jobs over files, for the command line and services: fit a model folder, predict a set of files.

Each takes plain values (paths, a config, runtime settings), prints a line per step through ``log`` and
returns what it wrote; none knows about argument parsing.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .config import DetectorConfig
from .data import list_images, load_mvtec
from .detector import Detector, Prediction
from .errors import DataError
from .files import atomic_write, atomic_write_json, atomic_write_text
from .images import load_image
from .visualize import color_range, overlay


def training_sets(data: str | Path | None = None, categories: list[str] | None = None,
                  good: str | Path | None = None, category: str | None = None) -> dict[str, list[Path]]:
    """Train images per category: ``good`` (a plain folder, named ``category`` or the folder's name) or the
    MVTec-layout root ``data`` (all its categories, or ``categories``)."""
    if good:
        return {category or Path(good).name: list_images(Path(good))}
    if not data:
        raise DataError("give --data ROOT (MVTec layout) or --good FOLDER (a folder of good images)")
    return {c.name: c.train for c in load_mvtec(Path(data), categories)}


def fit_model(sets: dict[str, list[Path]], out: str | Path, config: DetectorConfig | None = None, *,
              add: bool = False, overwrite: bool = False, log: Callable[[str], None] = print, **runtime) -> Detector:
    """Fit each category of ``sets`` and write the model folder ``out`` (``add``: into the model there)."""
    out = Path(out)
    if add:
        detector = Detector.load(out, **runtime)
    else:
        if (out / "manifest.json").exists() and not overwrite:
            raise DataError(f"{out} already holds a model; use --add to add categories or --overwrite to replace it")
        detector = Detector(config, **runtime)
    for name, paths in sets.items():
        model = detector.fit(name, paths)
        t = model.calibration.thresholds
        log(f"{name}: {len(paths)} train images, bank {len(model.bank)} entries, lambda {model.calibration.lam:.4g}, "
            f"thresholds base {t['base']:.4g} hybrid {t['hybrid']:.4g}")
    detector.save(out)
    log(f"model written to {out}")
    return detector


def collect_images(inputs: list[str | Path]) -> list[Path]:
    """Image files named directly, and the images in named folders (searched recursively)."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths.extend(list_images(p, recursive=True))
        elif p.is_file():
            paths.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return paths


def output_names(paths: list[Path]) -> list[str]:
    """Output names: the file stem, prefixed by its folder when two inputs share a stem."""
    stems = [p.stem for p in paths]
    names = [f"{p.parent.name}_{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n}_{seen[n]}"
    return names


def _save_npy(path: Path, array: np.ndarray):
    with open(path, "wb") as f:
        np.save(f, array)


def prediction_row(pred: Prediction, name: str) -> dict:
    return {
        "image": pred.path,
        "category": pred.category,
        **{f"{k}_score": v for k, v in pred.scores.items()},
        **{f"{k}_threshold": v for k, v in pred.thresholds.items()},
        "decision": pred.decision,
        "map": f"maps/{name}.npy",
        "overlay": f"overlays/{name}.png",
    }


def predict_files(detector: Detector, inputs: list[str | Path], out: str | Path, category: str | None = None,
                  log: Callable[[str], None] = print) -> list[dict]:
    """Score image files/folders; write ``predictions.csv|json``, ``maps/*.npy`` and ``overlays/*.png``."""
    paths = collect_images(inputs)
    out = Path(out)
    preprocess = detector.config.preprocess
    rows = []
    for name, pred in zip(output_names(paths), detector.predict_stream(paths, category=category)):
        atomic_write(out / "maps" / f"{name}.npy", lambda tmp, m=pred.anomaly_map: _save_npy(tmp, m))
        vmin, vmax = color_range(pred.thresholds["base"])
        picture = overlay(preprocess.view(load_image(pred.path)), pred.anomaly_map, vmin, vmax)
        atomic_write(out / "overlays" / f"{name}.png", lambda tmp, im=picture: im.save(tmp, format="PNG"))
        rows.append(prediction_row(pred, name))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "predictions.csv", text.getvalue())
    atomic_write_json(out / "predictions.json", rows)
    for r in rows:
        log(f"{r['decision']:<7} {r['category']:<12} hybrid {r['hybrid_score']:.4g}  {r['image']}")
    log(f"{sum(r['decision'] == 'reject' for r in rows)} of {len(rows)} rejected; results in {out}")
    return rows
