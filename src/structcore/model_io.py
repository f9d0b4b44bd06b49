"""Model folders: ``manifest.json`` plus safetensors files, written atomically, checked on load. No pickle.

A folder is first written in full beside its destination and then swapped in with ``os.replace``,
so an interrupted save leaves the previous model intact. Every file's sha256 is in the manifest.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .version import __version__
from .errors import ModelFileError
from .files import fsync_path, new_file_mode, sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def write_model(folder: Path, manifest: dict, files: dict[str, dict[str, torch.Tensor]]) -> Path:
    """Write ``files`` (name -> tensors) and ``manifest`` into ``folder``, replacing a previous model there."""
    folder = Path(folder)
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
        full = {"format_version": FORMAT_VERSION, "structcore_version": __version__, **manifest, "files": sums}
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=False))
        fsync_path(tmp / MANIFEST)
        old = folder.parent / f".{folder.name}.old-{os.getpid()}"
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def read_model(folder: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """Manifest and tensors of a model folder, after checking its version and every file's sha256."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ModelFileError(f"{folder} is not a structcore model folder: {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{manifest_path} is not valid JSON ({e})") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{folder} has model format {version!r} (written by structcore {manifest.get('structcore_version')}); "
            f"this structcore {__version__} reads format {FORMAT_VERSION}: refit the model or install a matching version"
        )
    files = {}
    for name, digest in manifest.get("files", {}).items():
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


def _check_shapes(folder: Path, manifest: dict, files: dict[str, dict[str, torch.Tensor]]):
    projection = files.get("projection.safetensors", {}).get("projection")
    dim = None if projection is None else projection.shape[1]
    for name, entry in manifest.get("categories", {}).items():
        tensors = files.get(entry.get("file"))
        if tensors is None:
            raise ModelFileError(f"{folder}: category {name!r} names file {entry.get('file')!r}, which is not in the model")
        for key in ("bank", "bank_source", "prototypes", "mu", "sigma"):
            if key not in tensors:
                raise ModelFileError(f"{folder / entry['file']} lacks tensor {key!r}")
        bank = tensors["bank"]
        if dim is not None and bank.shape[1] != dim:
            raise ModelFileError(f"{folder / entry['file']}: bank width {bank.shape[1]} != projection width {dim}")
        if tensors["bank_source"].shape != (bank.shape[0],) or tensors["prototypes"].shape[1] != bank.shape[1]:
            raise ModelFileError(f"{folder / entry['file']}: bank, bank_source and prototypes sizes disagree")
        if bank.shape[0] != entry.get("bank_size"):
            raise ModelFileError(f"{folder / entry['file']}: bank has {bank.shape[0]} rows, manifest says {entry.get('bank_size')}")
