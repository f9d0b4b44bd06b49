"""Model folders: ``manifest.json`` plus safetensors files, written atomically, checked on load. No pickle.

A folder is first written in full beside its destination (``.NAME.writing-PID``) and then swapped in:
the old folder is renamed to ``.NAME.old-PID``, the new one into place, the old one removed. One writer
at a time holds the folder's lock (:func:`structcore.files.exclusive`). A writer killed at any step
leaves either the old or the new model at NAME, or - killed between the two renames - the old model
only in ``.NAME.old-PID``: the next read or write of NAME (:func:`recover`) moves it back and removes
the leftovers. The write is reported done only once the new folder is in place. Every file's sha256
is in the manifest.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .version import __version__
from .errors import ModelFileError
from .files import exclusive, fault_point, fsync_path, new_file_mode, sha256_file
from .scoring import SCORES
from .thresholds import PIXEL, THRESHOLD_CALIBRATIONS

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
#: The scores a category's threshold calibration keeps (tensors ``threshold_scores_<name>``).
THRESHOLD_SCORES = (*SCORES, PIXEL)


def _leftovers(folder: Path) -> tuple[list[Path], list[Path]]:
    """``.NAME.writing-PID`` and ``.NAME.old-PID`` folders beside ``folder`` (newest first)."""
    parent = folder.parent
    if not parent.is_dir():
        return [], []
    def find(kind):
        found = [p for p in parent.glob(f".{glob.escape(folder.name)}.{kind}-*") if p.name[len(folder.name) + len(kind) + 3:].isdigit()]
        return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)
    return find("writing"), find("old")


def recover(folder: Path, log=None) -> bool:
    """Heal what a killed writer left beside ``folder``: put back a model left only in ``.NAME.old-PID``,
    remove ``.writing-PID`` folders and ``.old-PID`` ones no longer needed. Cheap when there is nothing to
    do; otherwise takes the folder's lock (so no live writer is disturbed). True if anything changed."""
    folder = Path(folder)
    writing, old = _leftovers(folder)
    if not writing and not old:
        return False
    with exclusive(folder, what="recovering"):
        writing, old = _leftovers(folder)  # again, under the lock: every leftover is now a dead writer's
        for tmp in writing:
            shutil.rmtree(tmp, ignore_errors=True)
        if old and not (folder / MANIFEST).is_file() and (not folder.exists() or not any(folder.iterdir())):
            if folder.exists():
                folder.rmdir()
            os.replace(old.pop(0), folder)
            if log is not None:
                log(f"{folder}: recovered the model an interrupted write had moved aside")
        for o in old:
            shutil.rmtree(o, ignore_errors=True)
    return True


def write_model(folder: Path, manifest: dict, files: dict[str, dict[str, torch.Tensor]]) -> Path:
    """Write ``files`` (name -> tensors) and ``manifest`` into ``folder``, replacing a previous model there.
    Holds the folder's lock while it writes (waiting for another writer to finish)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(folder):
        recover(folder)
        return _write_model(folder, manifest, files)


def _write_model(folder: Path, manifest: dict, files: dict[str, dict[str, torch.Tensor]]) -> Path:
    if folder.exists() and not (folder / MANIFEST).is_file() and any(folder.iterdir()):
        raise ModelFileError(f"{folder} exists and is not a structcore model folder; refusing to overwrite it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.writing-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    mode = new_file_mode()
    try:
        sums = {}
        for name, tensors in files.items():
            path = tmp / name
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
            os.chmod(path, mode)
            fsync_path(path)
            sums[name] = sha256_file(path)
        fault_point("model-files-written")
        full = {"format_version": FORMAT_VERSION, "structcore_version": __version__, **manifest, "files": sums}
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=False))
        fsync_path(tmp / MANIFEST)
        fault_point("model-manifest-written")
        old = folder.parent / f".{folder.name}.old-{os.getpid()}"
        if folder.exists():
            os.replace(folder, old)
            fault_point("model-old-moved-aside")
        os.replace(tmp, folder)
        fsync_path(folder.parent)
        fault_point("model-new-moved-in")
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def read_model(folder: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """Manifest and tensors of a model folder, after checking its version and every file's sha256."""
    folder = Path(folder)
    try:
        recover(folder)
    except OSError:  # a read-only place: read what is there
        pass
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ModelFileError(f"{folder} is not a structcore model folder: {MANIFEST} is missing; "
                             "give the --out folder of a structcore fit")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{manifest_path} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise ModelFileError(f"{manifest_path} holds a JSON {type(manifest).__name__}, not an object: {_DAMAGED}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{folder} has model format {version!r} (written by structcore {manifest.get('structcore_version')}); "
            f"this structcore {__version__} reads format {FORMAT_VERSION}: refit the model or install a matching version"
        )
    listed = manifest.get("files", {})
    _expect(isinstance(listed, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in listed.items()),
            manifest_path, "files", "an object of file name -> sha256")
    files = {}
    for name, digest in listed.items():
        _expect(_plain_name(name), manifest_path, "files", f"plain file names in the folder, not {name!r}")
        path = folder / name
        if not path.is_file():
            raise ModelFileError(f"{path} is listed in {MANIFEST} but missing")
        if sha256_file(path) != digest:
            raise ModelFileError(f"{path} does not match the sha256 in {MANIFEST}: the file is corrupt or was changed")
        try:
            files[name] = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ModelFileError(f"{path} is not a readable safetensors file ({e})") from None
    _check_shapes(folder, manifest, files)
    return manifest, files


_DAMAGED = "the model folder is damaged or was edited by hand; refit the model"


def _expect(ok: bool, manifest_path: Path, field: str, what: str):
    if not ok:
        raise ModelFileError(f"{manifest_path}: field {field!r} must be {what}; {_DAMAGED}")


def _plain_name(name) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_detector_manifest(folder: Path, manifest: dict, scores: tuple[str, ...]) -> None:
    """Check the fields :meth:`Detector.load` reads, so that a manifest of any shape gives a ModelFileError
    naming the field (not a TypeError or KeyError deep in the loader)."""
    path = Path(folder) / MANIFEST
    _expect(isinstance(manifest.get("config"), dict), path, "config", "an object of model settings")
    for key in ("precision", "fit_precision"):
        if key in manifest or key == "precision":
            _expect(manifest.get(key) in ("auto", "fp32", "bf16"), path, key, "'auto', 'fp32' or 'bf16'")
    w = manifest.get("weights")
    _expect(isinstance(w, dict) and set(w) <= {"name", "sha256", "source", "origin"}
            and all(isinstance(w.get(k), str) for k in ("name", "sha256", "source"))
            and isinstance(w.get("origin", ""), str), path, "weights", "an object with name, sha256, source (strings)")
    cats = manifest.get("categories")
    _expect(isinstance(cats, dict) and len(cats) > 0, path, "categories", "a non-empty object of category -> entry")
    for name, e in cats.items():
        where = f"categories.{name}"
        _expect(isinstance(e, dict), path, where, "an object")
        _expect(_plain_name(e.get("file")), path, f"{where}.file", "a file name")
        _expect(isinstance(e.get("bank_size"), int) and not isinstance(e.get("bank_size"), bool) and e["bank_size"] > 0,
                path, f"{where}.bank_size", "a positive integer")
        _expect(_number(e.get("lambda")) and e["lambda"] >= 0, path, f"{where}.lambda", "a number >= 0")
        t = e.get("thresholds")
        _expect(isinstance(t, dict) and set(t) == set(scores) and all(_number(v) for v in t.values()),
                path, f"{where}.thresholds", f"an object of {', '.join(scores)} -> number")
        _expect(_number(e.get("pixel_threshold")), path, f"{where}.pixel_threshold",
                "a number (models from before threshold calibration: refit them)")
        how = e.get("threshold_calibration")
        _expect(isinstance(how, dict) and how.get("method") in THRESHOLD_CALIBRATIONS
                and _number(how.get("false_reject_rate")) and 0 < how["false_reject_rate"] < 1
                and isinstance(how.get("set_by"), dict) and set(how["set_by"]) == {*scores, PIXEL}
                and all(v in ("rate", "value") for v in how["set_by"].values())
                and isinstance(how.get("notes", []), list) and all(isinstance(x, str) for x in how.get("notes", [])),
                path, f"{where}.threshold_calibration",
                f"an object with method ({', '.join(THRESHOLD_CALIBRATIONS)}), false_reject_rate in (0, 1), set_by "
                "and notes (a list of strings)")
        _expect(isinstance(e.get("train_images"), list) and all(isinstance(x, str) for x in e["train_images"]),
                path, f"{where}.train_images", "a list of strings")
        _expect(isinstance(e.get("warnings", []), list) and all(isinstance(x, str) for x in e.get("warnings", [])),
                path, f"{where}.warnings", "a list of strings")


def _check_shapes(folder: Path, manifest: dict, files: dict[str, dict[str, torch.Tensor]]):
    projection = files.get("projection.safetensors", {}).get("projection")
    dim = None if projection is None or projection.ndim != 2 else projection.shape[1]
    categories = manifest.get("categories", {})
    _expect(isinstance(categories, dict) and all(isinstance(e, dict) for e in categories.values()),
            folder / MANIFEST, "categories", "an object of category -> entry (an object)")
    for name, entry in categories.items():
        tensors = files.get(entry.get("file")) if isinstance(entry.get("file"), str) else None
        if tensors is None:
            raise ModelFileError(f"{folder}: category {name!r} names file {entry.get('file')!r}, which is not in the model")
        for key in ("bank", "bank_source", "prototypes", "mu", "sigma", *(f"threshold_scores_{k}" for k in THRESHOLD_SCORES)):
            if key not in tensors:
                raise ModelFileError(f"{folder / entry['file']} lacks tensor {key!r}")
        bank = tensors["bank"]
        if bank.ndim != 2 or tensors["bank_source"].ndim != 1 or tensors["prototypes"].ndim != 2:
            raise ModelFileError(f"{folder / entry['file']}: bank, bank_source or prototypes has the wrong number of dimensions")
        if len({tuple(tensors[f"threshold_scores_{k}"].shape) for k in THRESHOLD_SCORES}) != 1 \
                or tensors["threshold_scores_base"].ndim != 1:
            raise ModelFileError(f"{folder / entry['file']}: the threshold calibration scores must be vectors of one size")
        if tensors["mu"].ndim != 1 or tensors["mu"].shape != tensors["sigma"].shape:
            raise ModelFileError(f"{folder / entry['file']}: mu and sigma must be vectors of one size")
        if dim is not None and bank.shape[1] != dim:
            raise ModelFileError(f"{folder / entry['file']}: bank width {bank.shape[1]} != projection width {dim}")
        if tensors["bank_source"].shape != (bank.shape[0],) or tensors["prototypes"].shape[1] != bank.shape[1]:
            raise ModelFileError(f"{folder / entry['file']}: bank, bank_source and prototypes sizes disagree")
        if bank.shape[0] != entry.get("bank_size"):
            raise ModelFileError(f"{folder / entry['file']}: bank has {bank.shape[0]} rows, manifest says {entry.get('bank_size')}")
