"""An on-disk cache of raw backbone block tokens, so that benchmarks and ablations re-run in seconds.

What is stored: the patch tokens of each requested ViT block exactly as the backbone produced them
(CLS and registers dropped), **before** the per-block L2 normalisation and the random projection, as
fp32 ``[P, C]`` tensors. Projection width, coreset, k, blur, StructCore settings... can all change
without touching the cache; only what changes the tokens is part of the key.

Layout: ``<folder>/<key[:2]>/<key>.safetensors``, one file per image, holding ``block_<i>`` for every
block extracted so far (``i`` the positive block index) and, as metadata, what the key was made of.

The key of an image is the sha256 of

* the image file: its absolute path (normalised, symlinks kept), size in bytes and ``mtime_ns`` (editing or replacing a file
  changes the key; the pixels are not hashed, which keeps a cache lookup to one ``stat``),
* the backbone name and the sha256 of its weights file,
* the preprocessing (resize, crop, mean, std),
* the precision the backbone ran in (``fp32``/``bf16``) and the device type (``cpu``/``cuda``): bf16
  tokens are not fp32 tokens, and kernels differ between devices.

When some requested blocks are missing from an image's file, all requested blocks are extracted again
for that image (one forward pass gives them all) and the file is rewritten atomically (a temporary
file beside it, then ``os.replace``), keeping the blocks it already had. Unreadable or mis-shaped
files count as misses and are rewritten. Several processes may share a cache folder: the worst case
is that two of them extract the same image.

The default folder is ``<structcore cache dir>/features`` (``$STRUCTCORE_CACHE/features`` or
``~/.cache/structcore/features``). ``FeatureCache(None)`` is a cache that stores nothing: every call
extracts (the benchmark's ``--no-feature-cache``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .vit import resolve_blocks
from .data import iter_batches
from .files import atomic_write
from .features import FeatureExtractor, Preprocess

KEY_VERSION = 1


def default_folder() -> Path:
    """``<structcore cache dir>/features``."""
    from .weights import cache_dir

    return cache_dir() / "features"


@dataclass(frozen=True)
class CacheContext:
    """Everything besides the image file that determines the tokens."""

    backbone: str
    weights_sha256: str
    preprocess: Preprocess
    precision: str
    device_type: str
    runtime: str = "torch"

    def as_dict(self) -> dict:
        p = self.preprocess
        return {
            "version": KEY_VERSION,
            "backbone": self.backbone,
            "weights_sha256": self.weights_sha256,
            "resize": p.resize,
            "crop": p.crop,
            "mean": [float(v) for v in p.mean],
            "std": [float(v) for v in p.std],
            "precision": self.precision,
            "device_type": self.device_type,
            # torch-runtime keys are those written before runtimes existed, so their caches stay valid
            **({"runtime": self.runtime} if self.runtime != "torch" else {}),
        }


@dataclass
class CacheStats:
    """Counters since the cache object was made: images served from disk, images extracted, seconds."""

    hits: int = 0
    misses: int = 0
    extract_s: float = 0.0
    load_s: float = 0.0
    extractor_calls: int = 0

    def as_dict(self) -> dict:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "extract_s": round(self.extract_s, 3),
            "load_s": round(self.load_s, 3),
            "extractor_calls": self.extractor_calls,
        }


def image_key(path: str | Path, context: CacheContext) -> str:
    """The cache key of one image file under ``context`` (see the module docstring)."""
    path = Path(os.path.abspath(path))  # "a/../b" and "b" are one file: one key
    st = path.stat()
    payload = {"file": [str(path), st.st_size, st.st_mtime_ns], **context.as_dict()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class FeatureCache:
    """Raw block tokens per image on disk; ``folder=None`` stores nothing (always extracts)."""

    def __init__(self, folder: str | Path | None, read_chunk: int = 32):
        self.folder = None if folder is None else Path(folder).expanduser()
        self.read_chunk = read_chunk
        self.stats = CacheStats()

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def file_for(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.safetensors"

    # -- the main entry point ---------------------------------------------------------------------
    def layer_tokens(
        self,
        extractor: FeatureExtractor,
        context: CacheContext,
        paths: Sequence[str | Path],
        blocks: Sequence[int],
        batch_size: int = 8,
        num_workers: int = 2,
        progress: bool = True,
        desc: str = "features",
        reduce: Callable[[list[torch.Tensor]], torch.Tensor] | None = None,
    ) -> list[torch.Tensor] | torch.Tensor:
        """Raw tokens of ``blocks`` for every image: one fp32 ``[N, P, C]`` tensor per block, in the
        order of ``blocks`` (negative indices count from the end, as everywhere in structcore).

        With ``reduce``, each chunk of images' token list is passed through ``reduce`` (e.g. fusion and
        projection) and the concatenated results are returned instead; the raw tokens of all images are
        then never in memory at once.
        """
        paths = [Path(p) for p in paths]
        if not paths:
            raise ValueError("no images to extract features from")
        wanted = resolve_blocks(list(blocks), extractor.backbone.depth)
        finish = reduce if reduce is not None else (lambda layers: layers)
        if not self.enabled:
            parts = []
            for _, layers in self._extract(extractor, context, paths, wanted, batch_size, num_workers, progress, desc):
                parts.append(finish(layers))
            self.stats.misses += len(paths)
            return _concat(parts, reduce is not None)

        keys = [image_key(p, context) for p in paths]
        missing = [i for i, k in enumerate(keys) if not self._has(k, wanted, extractor)]
        self.stats.hits += len(paths) - len(missing)
        self.stats.misses += len(missing)
        if missing:
            meta = {k: json.dumps(v) for k, v in context.as_dict().items()}
            todo = [paths[i] for i in missing]
            for idx, layers in self._extract(extractor, context, todo, wanted, batch_size, num_workers, progress, desc):
                for j, i in enumerate(idx):
                    tensors = {f"block_{b}": t[j].clone() for b, t in zip(wanted, layers)}
                    self._write(keys[missing[i]], tensors, {**meta, "image": str(todo[i].absolute())})
        parts = []
        start_t = time.perf_counter()
        with tqdm(total=len(paths), desc=f"{desc} (cache)", unit="img", disable=not progress, leave=False) as bar:
            for start in range(0, len(paths), self.read_chunk):
                chunk = keys[start : start + self.read_chunk]
                layers = [torch.stack(ts) for ts in zip(*(self._read(k, wanted) for k in chunk))]
                parts.append(finish(layers))
                bar.update(len(chunk))
        self.stats.load_s += time.perf_counter() - start_t
        return _concat(parts, reduce is not None)

    # -- internals --------------------------------------------------------------------------------
    def _extract(self, extractor, context, paths, wanted, batch_size, num_workers, progress, desc):
        """Yield ``(indices, [fp32 cpu [n, P, C] per block])`` for batches of ``paths``."""
        ex = extractor if tuple(extractor.blocks) == tuple(wanted) else _sub_extractor(extractor, wanted)
        batches = iter_batches(paths, context.preprocess, batch_size, num_workers)
        with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
            for indices, images in batches:
                t0 = time.perf_counter()
                layers = [t.float().cpu() for t in ex.layer_tokens(images)]
                self.stats.extract_s += time.perf_counter() - t0
                self.stats.extractor_calls += 1
                yield indices, layers
                bar.update(len(indices))

    def _has(self, key: str, wanted: list[int], extractor: FeatureExtractor) -> bool:
        file = self.file_for(key)
        if not file.is_file():
            return False
        try:
            with safe_open(file, framework="pt") as f:
                names = set(f.keys())
                if not all(f"block_{b}" in names for b in wanted):
                    return False
                shape = f.get_slice(f"block_{wanted[0]}").get_shape()
        except Exception:  # corrupt or truncated: extract again
            return False
        return len(shape) == 2 and shape[1] == extractor.backbone.embed_dim

    def _read(self, key: str, wanted: list[int]) -> list[torch.Tensor]:
        with safe_open(self.file_for(key), framework="pt") as f:
            return [f.get_tensor(f"block_{b}").float() for b in wanted]

    def _write(self, key: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        file = self.file_for(key)
        file.parent.mkdir(parents=True, exist_ok=True)
        merged: dict[str, torch.Tensor] = {}
        if file.is_file():
            try:
                with safe_open(file, framework="pt") as f:
                    merged = {name: f.get_tensor(name) for name in f.keys()}
            except Exception:
                merged = {}
        merged.update(tensors)
        atomic_write(file, lambda tmp: save_file({k: v.contiguous() for k, v in merged.items()}, str(tmp), metadata=metadata))


def _sub_extractor(extractor: FeatureExtractor, blocks: list[int]) -> FeatureExtractor:
    """An extractor on the same backbone, precision, device and runtime that returns ``blocks``."""
    return FeatureExtractor(extractor.backbone, tuple(blocks), None, extractor.precision, extractor.device,
                            runtime=extractor.runtime, weights_id=extractor.weights_id, progress=extractor.progress)


def _concat(parts: list, reduced: bool):
    if reduced:
        return torch.cat(parts)
    return [torch.cat(ts) for ts in zip(*parts)]
