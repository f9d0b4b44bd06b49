"""Whole jobs over files, for the command line and services: fit a model folder, predict a set of files.

Each takes plain values (paths, a config, runtime settings), prints a line per step through ``log`` and
returns what it wrote; none knows about argument parsing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from .config import DetectorConfig
from .data import list_images, load_mvtec
from .detector import CategoryModel, Detector, Prediction
from .errors import ConfigError, DataError
from .files import atomic_write, atomic_write_json, atomic_write_text, check_writable_folder, exclusive, fault_point
from .model_io import MANIFEST, recover
from .scoring import SCORES
from .images import load_image
from .regions import region_mask
from .visualize import overlay_original


def training_sets(data: str | Path | None = None, categories: list[str] | None = None,
                  good: str | Path | None = None, category: str | None = None) -> dict[str, list[Path]]:
    """Train images per category: ``good`` (a plain folder, named ``category`` or the folder's name) or the
    MVTec-layout root ``data`` (all its categories, or ``categories``)."""
    if good:
        return {category or Path(good).name: list_images(Path(good))}
    if not data:
        raise DataError("give --data ROOT (MVTec layout) or --good FOLDER (a folder of good images)")
    return {c.name: c.train for c in load_mvtec(Path(data), categories)}


def _check_add_options(out: Path, model: DetectorConfig, options: dict):
    """``fit --add`` takes its model options from the model: refuse given options that differ."""
    for name, value in options.items():
        have = getattr(model, name)
        if value != have:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} {value} differs from the model in {out}, which has {name} {have}: --add fits new "
                f"categories with the model's own options; drop {flag}, or fit a separate model into another --out"
            )


def fit_model(sets: dict[str, list[Path]], out: str | Path, config: DetectorConfig | None = None, *,
              add: bool = False, overwrite: bool = False, options: dict | None = None,
              lock_timeout: float | None = None, log: Callable[[str], None] = print,
              fit_categories: Callable[[Detector, dict[str, list[Path]], Callable[[str], None]], None] | None = None,
              **runtime) -> Detector:
    """Fit each category of ``sets`` and write the model folder ``out``.

    ``add``: into the model there; a category it already has is refitted only with ``overwrite``, and
    ``options`` (config fields the caller set explicitly) must agree with the model's. Holds ``out``'s lock
    from loading to writing, so concurrent ``add`` runs wait for each other and none loses the other's work
    (``lock_timeout``: seconds to wait, None = as long as it takes). ``fit_categories(detector, sets, log)``
    fits the categories into ``detector`` (default: one after the other in this process; see
    :func:`structcore.distributed.fit_ray`).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: is a file, not a model folder")
    check_writable_folder(out.absolute().parent, "--out")
    with exclusive(out, timeout=lock_timeout, log=log):
        recover(out, log=log)
        if add:
            if not (out / MANIFEST).is_file():
                raise DataError(f"--add: {out} holds no model yet; drop --add to fit a new model there")
            detector = _load_for_refit(out, runtime)
            _check_add_options(out, detector.config, options or {})
            again = sorted(set(sets) & set(detector.categories_))
            if again and not overwrite:
                raise DataError(
                    f"the model in {out} already has categor{'ies' if len(again) > 1 else 'y'} {', '.join(again)}; "
                    "pass --overwrite to refit it, or give the new category another name (--category)"
                )
        else:
            if (out / MANIFEST).exists() and not overwrite:
                raise DataError(f"{out} already holds a model; use --add to add categories or --overwrite to replace it")
            detector = Detector(config, **runtime)
        fault_point("fit-loaded")
        absolute = {name: [Path(p).absolute() for p in paths] for name, paths in sets.items()}
        (fit_categories or _fit_each)(detector, absolute, log)
        detector.save(out)
    log(f"model written to {out}")
    return detector


def _fit_each(detector: Detector, sets: dict[str, list[Path]], log: Callable[[str], None]):
    for name, paths in sets.items():
        _fit_category(detector, name, paths, log)


def _fit_category(detector: Detector, name: str, paths: list[Path], log: Callable[[str], None]):
    model = detector.fit(name, paths)
    log_fitted(model, len(paths), log)
    return model


def log_fitted(model: CategoryModel, n_images: int, log: Callable[[str], None]):
    """One line on a fitted category: its bank, lambda and thresholds."""
    name = model.name
    t = model.thresholds
    log(f"{name}: {n_images} train images, bank {len(model.bank)} entries, lambda {model.calibration.lam:.4g}, "
        f"thresholds ({t.method}, false-reject rate {t.false_reject_rate:g}) base {t.values['base']:.4g} "
        f"hybrid {t.values['hybrid']:.4g} pixel {t.values['pixel']:.4g}")


def _threshold_changes(before: dict[str, float], after: dict[str, float]) -> list[str]:
    lines = [f"  {'threshold':<10} {'before':>12} {'after':>12} {'change':>9}"]
    for k, v in after.items():
        change = (v - before[k]) / abs(before[k]) if before[k] else float("nan")
        lines.append(f"  {k:<10} {before[k]:>12.6g} {v:>12.6g} {change:>+9.1%}")
    return lines


def _load_for_refit(out: Path, runtime: dict) -> Detector:
    """The model in ``out``, to refit: it keeps its recorded test-time precision unless another is asked for."""
    if runtime.get("precision") in (None, "auto"):
        runtime = {k: v for k, v in runtime.items() if k != "precision"}
    return Detector.load(out, **runtime)


def update_category(out: str | Path, category: str, more: list[Path], *, options: dict | None = None,
                    lock_timeout: float | None = None, log: Callable[[str], None] = print, **runtime) -> Detector:
    """Refit ``category`` of the model in ``out`` on its recorded train images plus the good images
    ``more`` (confirmed false rejects, say), and log how its thresholds moved."""
    out = Path(out)
    with exclusive(out, timeout=lock_timeout, log=log):
        recover(out, log=log)
        if not (out / MANIFEST).is_file():
            raise DataError(f"--update: {out} holds no model; fit one there first")
        detector = _load_for_refit(out, runtime)
        _check_add_options(out, detector.config, options or {})
        detector._require_fitted(category)
        recorded = [Path(p) for p in detector.categories_[category].train_images]
        missing = [str(p) for p in recorded if not p.is_file()]
        if missing:
            raise DataError(
                f"--update {category}: {len(missing)} of the {len(recorded)} train images the model records are "
                f"not there any more (first: {missing[0]}); refit the category with --add --overwrite from a "
                "complete set of good images instead")
        known = {p.absolute() for p in recorded}
        new = [p.absolute() for p in more if p.absolute() not in known]
        if not new:
            raise DataError(f"--update {category}: all {len(more)} given images are already among its train images")
        log(f"{category}: refitting on {len(recorded)} recorded + {len(new)} new good images")
        before = dict(detector.categories_[category].thresholds.values)
        model = _fit_category(detector, category, [*recorded, *new], log)
        for line in _threshold_changes(before, model.thresholds.values):
            log(line)
        detector.save(out)
    log(f"model written to {out}")
    return detector


def set_thresholds(out: str | Path, categories: list[str] | None = None, *, false_reject_rate: float | None = None,
                   value: float | None = None, score: str | None = None, lock_timeout: float | None = None,
                   log: Callable[[str], None] = print) -> Detector:
    """Re-derive the thresholds of ``categories`` (default all) of the model in ``out`` for another
    false-reject rate, or set one score's threshold to ``value``; no refit, no backbone needed."""
    out = Path(out)
    with exclusive(out, timeout=lock_timeout, log=log):
        recover(out, log=log)
        detector = Detector.load(out, progress=False)
        for name in categories or sorted(detector.categories_):
            detector._require_fitted(name)
            before = dict(detector.categories_[name].thresholds.values)
            t = detector.set_thresholds(name, false_reject_rate=false_reject_rate, value=value, score=score)
            how = f"false-reject rate {false_reject_rate:g} over {t.n_images} {t.method} train-good scores" \
                if value is None else f"{score or detector.config.decision_score} set to {value:g}"
            log(f"{name}: {how}")
            for line in _threshold_changes(before, t.values):
                log(line)
            for note in t.warnings():
                log(f"{name}: warning: {note}")
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


COLUMNS = ("image", "category", *(f"{k}_score" for k in SCORES), *(f"{k}_threshold" for k in SCORES),
           *(f"{k}_normalised" for k in SCORES), "decision", "pixel_threshold", "regions", "map", "overlay", "mask",
           "error")
_NUMBERS = {c for c in COLUMNS if c.endswith(("_score", "_threshold", "_normalised"))}
RESULTS = "predictions.csv"
RUN_RECORD = "predictions.run.json"


def prediction_row(pred: Prediction, name: str) -> dict:
    return {
        "image": pred.path,
        "category": pred.category,
        **{f"{k}_score": v for k, v in pred.scores.items()},
        **{f"{k}_threshold": v for k, v in pred.thresholds.items()},
        **{f"{k}_normalised": v for k, v in pred.normalised_scores.items()},
        "decision": pred.decision,
        "pixel_threshold": pred.pixel_threshold,
        "regions": json.dumps([r.as_dict() for r in pred.regions]),
        "map": f"maps/{name}.npy",
        "overlay": f"overlays/{name}.png",
        "mask": f"masks/{name}.png" if pred.is_anomalous else "",
        "error": "",
    }


def failure_row(path: Path, error: Exception) -> dict:
    return {**dict.fromkeys(COLUMNS), "image": str(path), "decision": "error", "error": str(error)}


def run_key(detector: Detector, category: str | None) -> str:
    """What makes two predict runs' results interchangeable: the model (config, weights, calibration,
    banks), the backbone's runtime and test-time precision, and the category option."""
    record = {
        "config": asdict(detector.config),
        "precision": detector.precision,
        "runtime": detector.runtime,
        "weights": getattr(detector.weights_info_, "sha256", None),
        "category": category,
        "categories": {n: [m.calibration.lam, m.thresholds.values, list(m.bank.shape), float(m.bank.double().sum())]
                       for n, m in sorted(detector.categories_.items())},
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _read_results(out: Path) -> list[dict]:
    """The complete rows of an earlier run's ``predictions.csv`` (a row cut short by a kill is dropped)."""
    try:
        with open(out / RESULTS, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                return []
            rows = [r for r in reader if None not in r.values() and None not in r]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    for r in rows:
        for c in _NUMBERS:
            try:
                r[c] = float(r[c]) if r[c] != "" else None
            except ValueError:
                r[c] = None
    return rows


def _earlier_rows(out: Path, key: str) -> list[dict]:
    """The rows an earlier run wrote into ``out`` with the same model and settings (none for others)."""
    try:
        same = json.loads((out / RUN_RECORD).read_text()).get("key") == key
    except (OSError, ValueError, AttributeError):
        same = False
    return _read_results(out) if same else []


def _names_beside(paths: list[Path], taken: set[str]) -> dict[str, str]:
    """Output names of ``paths`` (see :func:`output_names`) that avoid the names ``taken`` by other images'
    results already in the output folder."""
    names = {}
    for path, name in zip(paths, output_names(paths)):
        unique, i = name, 1
        while unique in taken:
            i += 1
            unique = f"{name}_{i}"
        taken.add(unique)
        names[str(path)] = unique
    return names


def _reusable(out: Path, row: dict, name: str) -> bool:
    """An earlier row this run need not score again: scored (not failed), named as this run names the
    image, with its map and overlay on disk."""
    return (not row["error"] and None not in (row["base_score"], row["hybrid_score"])
            and row["map"] == f"maps/{name}.npy" and row["overlay"] == f"overlays/{name}.png"
            and (out / row["map"]).is_file() and (out / row["overlay"]).is_file()
            and (not row["mask"] or (out / row["mask"]).is_file()))


def plan_resume(out: Path, key: str, paths: list[Path], reusable: Callable[[dict, str], bool],
                log: Callable[[str], None]) -> tuple[list[dict], dict[str, str], dict[str, dict]]:
    """What a predict run into ``out`` (with run ``key``) keeps from an earlier one: the rows of other images,
    each input's output name, and the earlier rows of inputs it need not score again (``reusable(row, name)``);
    then the journal ``predictions.csv`` holds just those rows."""
    earlier = _earlier_rows(out, key)
    if not earlier and (out / RESULTS).exists():
        log(f"{out / RESULTS} holds results of another model or other settings; they are replaced")
    mine = {str(p) for p in paths}
    kept = [r for r in earlier if r["image"] not in mine]  # other images' rows stay
    names = _names_beside(paths, {Path(r["map"]).stem for r in kept if r["map"]})
    done = {r["image"]: r for r in earlier if r["image"] in names and reusable(r, names[r["image"]])}
    if done:
        log(f"resuming: {len(done)} of {len(paths)} images already scored in {out}")
    atomic_write_text(out / RESULTS, "".join([",".join(COLUMNS) + "\n", *map(_csv_line, [*kept, *done.values()])]))
    atomic_write_json(out / RUN_RECORD, {"key": key})
    return kept, names, done


def _score_chunk(detector: Detector, paths: list[Path], category: str | None) -> list[Prediction | DataError]:
    """Predictions of ``paths``; an image that cannot be read gives its DataError instead (the others are
    scored one by one when a chunk holds such an image)."""
    try:
        return list(detector.predict_stream(paths, category=category))
    except DataError as e:
        if len(paths) == 1:
            return [e]
    return [r for p in paths for r in _score_chunk(detector, [p], category)]


def _csv_line(row: dict) -> str:
    text = io.StringIO()
    csv.DictWriter(text, fieldnames=COLUMNS).writerow(row)
    return text.getvalue()


def predict_files(detector: Detector, inputs: list[str | Path], out: str | Path, category: str | None = None, *,
                  lock_timeout: float | None = None, log: Callable[[str], None] = print,
                  warn: Callable[[str], None] | None = None) -> list[dict]:
    """Score image files/folders; write ``predictions.csv|json``, ``maps/*.npy`` and ``overlays/*.png``
    (both in the original image's frame; the map is NaN outside the model's crop) and, for rejected
    images, ``masks/*.png`` (the defect regions, 255 on 0).

    Every readable image is scored; one that cannot be read gets a row with decision ``error`` and the
    reason (also passed to ``warn``, default stderr). Rows are appended to ``predictions.csv`` as images are
    scored, so a run that is killed keeps what it scored, and a rerun into the same ``out`` with the same
    model and settings skips those images (``predictions.run.json`` records what they were scored with).
    At the end ``predictions.csv`` and ``predictions.json`` hold the rows an earlier run with the same
    model left for other images, then this run's inputs in input order. Returns this run's rows.
    Holds ``out``'s lock throughout (``lock_timeout`` as for :func:`fit_model`). Raises :class:`DataError`
    (after writing the results) if no image could be scored.
    """
    warn = warn or (lambda m: print(f"structcore: warning: {m}", file=sys.stderr))
    paths = collect_images(inputs)
    if category is not None:
        detector._require_fitted(category)
    out = check_writable_folder(out, "--out")
    with exclusive(out, timeout=lock_timeout, log=log):
        kept, names, done = plan_resume(out, run_key(detector, category), paths,
                                        lambda row, name: _reusable(out, row, name), log)
        todo = [p for p in paths if str(p) not in done]
        new: dict[str, dict] = {}
        with open(out / RESULTS, "a", newline="", encoding="utf-8") as journal:
            step = detector.batch_size * 8
            for start in range(0, len(todo), step):
                chunk = todo[start : start + step]
                for path, result in zip(chunk, _score_chunk(detector, chunk, category)):
                    row = _write_outputs(out, path, result, names[str(path)])
                    if row["error"]:
                        warn(row["error"])
                    new[row["image"]] = row
                    journal.write(_csv_line(row))
                    journal.flush()
                    fault_point("predict-row")
            os.fsync(journal.fileno())
        rows = [done.get(str(p)) or new[str(p)] for p in paths]
        everything = [*kept, *rows]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(everything)
        atomic_write_text(out / RESULTS, text.getvalue())
        atomic_write_json(out / "predictions.json", [_json_row(r) for r in everything])
    for r in rows:
        if r["error"]:
            log(f"{'error':<7} {'-':<12} {'':<12}  {r['image']}")
        else:
            log(f"{r['decision']:<7} {r['category']:<12} hybrid {r['hybrid_score']:.4g}  {r['image']}")
    failed = [r for r in rows if r["error"]]
    scored = len(rows) - len(failed)
    if not scored:
        raise DataError(f"none of the {len(rows)} images could be scored; the reason for each is in {out / RESULTS}")
    log(f"{sum(r['decision'] == 'reject' for r in rows)} of {scored} rejected"
        + (f"; {len(failed)} could not be scored (decision 'error' in {RESULTS})" if failed else "")
        + f"; results in {out}")
    return rows


def _json_row(row: dict) -> dict:
    """A results row for predictions.json: the regions as a list of objects, not JSON text."""
    return {**row, "regions": json.loads(row["regions"]) if row.get("regions") else None}


def _write_outputs(out: Path, path: Path, result: Prediction | DataError, name: str) -> dict:
    """Write one image's map and overlay (original frame) and, if rejected, its defect mask; its row (a
    failure row if it could not be read)."""
    if isinstance(result, DataError):
        return failure_row(path, result)
    try:
        image = load_image(result.path)
    except DataError as e:  # changed or removed since it was scored
        return failure_row(path, e)
    original = result.original_map()
    atomic_write(out / "maps" / f"{name}.npy", lambda tmp: _save_npy(tmp, original))
    picture = overlay_original(image, result)
    atomic_write(out / "overlays" / f"{name}.png", lambda tmp: picture.save(tmp, format="PNG"))
    row = prediction_row(result, name)
    if row["mask"]:
        mask = Image.fromarray(region_mask(original, result.pixel_threshold).astype(np.uint8) * 255)
        atomic_write(out / row["mask"], lambda tmp: mask.save(tmp, format="PNG"))
    return row
