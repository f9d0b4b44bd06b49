"""Where the backbone runs: torch (eager or ``torch.compile``) or OpenVINO on the CPU.

OpenVINO gets the backbone as a graph traced at the model's crop: the position embedding of that grid is
a constant (:meth:`~structcore.vit.VisionTransformer.fix_grid`) and the batch dimension is dynamic. Two
graphs: one outputs the patch tokens of the chosen blocks (for the feature cache and int8), the other
also fuses and projects them (:class:`FeatureGraph`, what extraction for scoring runs); kNN and scoring
stay in structcore. A converted graph is cached (``<cache>/openvino/<key>/backbone.xml``), keyed by the
backbone, its weights' sha256, the crop, the blocks, the projection's sha256, the graph's precision (fp32,
or int8 after quantisation) and the OpenVINO version, so it is converted once per machine. bf16 is a
compile-time hint on the fp32 graph.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError
from .files import atomic_write_json
from .weights import cache_dir

RUNTIMES = ("auto", "torch", "openvino")
RUNTIME_ENV = "STRUCTCORE_RUNTIME"
#: OpenVINO's CPU inference precision for each of structcore's precisions.
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def openvino_version() -> str | None:
    """The installed OpenVINO's version, or None when it is not installed."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino.get_version()


def resolve_runtime(runtime: str | None, device: torch.device | str) -> str:
    """``auto`` (or None: ``$STRUCTCORE_RUNTIME``, else auto) -> openvino on a CPU where it is installed,
    torch on a GPU; an explicit runtime is checked against the device."""
    runtime = runtime or os.environ.get(RUNTIME_ENV) or "auto"
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    device = torch.device(device)
    if runtime == "auto":
        return "openvino" if device.type == "cpu" and openvino_version() is not None else "torch"
    if runtime == "openvino":
        if device.type != "cpu":
            raise ConfigError(f"the openvino runtime runs on the CPU, not on {device}; use --runtime torch there")
        if openvino_version() is None:
            raise ConfigError("the openvino runtime needs OpenVINO: pip install 'openvino>=2025.0,<2027'")
    return runtime


class GridTokens(torch.nn.Module):
    """The patch tokens of ``blocks`` at a fixed input grid, as one traceable module (a copy of ``backbone``)."""

    def __init__(self, backbone: torch.nn.Module, blocks: Sequence[int], crop: int):
        super().__init__()
        self.backbone = copy.deepcopy(backbone).float().eval().requires_grad_(False)
        self.blocks = list(blocks)
        if hasattr(self.backbone, "fix_grid"):
            side = crop // self.backbone.patch_size
            self.backbone.fix_grid(side, side)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone.patch_tokens(images, self.blocks))


class FeatureGraph(torch.nn.Module):
    """Normalised images ``[B, 3, crop, crop]`` -> projected patch features ``[B, P, D]``: :class:`GridTokens`,
    then ``fuse(tokens, projection)`` (:func:`~structcore.features.fuse_layers`), as one traceable module."""

    def __init__(self, backbone: torch.nn.Module, blocks: Sequence[int], crop: int, projection: torch.Tensor | None,
                 fuse: Callable):
        super().__init__()
        self.tokens = GridTokens(backbone, blocks, crop)
        self.projection = None if projection is None else projection.detach().float().clone()
        self.fuse = fuse

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fuse(list(self.tokens(images)), self.projection)


def graph_key(weights_id: str, crop: int, blocks: Sequence[int], graph: str, paths: Sequence[str] = (),
              projection: torch.Tensor | None = None) -> dict:
    """What identifies a converted graph (the cache key's fields); ``paths``: an int8 graph's calibration
    images, identified by name, size and modification time; ``projection``: a fused graph's, by sha256."""
    key = {"weights": weights_id, "crop": int(crop), "blocks": [int(b) for b in blocks], "graph": graph,
           "openvino": openvino_version()}
    if projection is not None:
        data = projection.detach().float().contiguous().numpy()
        key["projection"] = hashlib.sha256(repr(data.shape).encode() + data.tobytes()).hexdigest()
    if paths:
        stats = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths]
        key["calibration_images"] = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    return key


def graph_folder(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "openvino" / digest


def convert(module: torch.nn.Module, crop: int):
    """``module`` (images ``[B, 3, crop, crop]`` -> tensors) as an OpenVINO model with a dynamic batch."""
    import openvino as ov

    example = torch.zeros(1, 3, crop, crop)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the shape checks are constants at a fixed crop
        warnings.simplefilter("ignore", DeprecationWarning)  # OpenVINO traces with torch.jit
        return ov.convert_model(module, example_input=example, input=[(-1, 3, crop, crop)])


def cached_graph(key: dict, build: Callable[[], object], progress: bool = True) -> Path:
    """The path of the graph for ``key``, built with ``build()`` (an ``ov.Model``) and saved first if needed.

    Written to a temporary folder and renamed into place, so a crash leaves no half-written graph and two
    processes converting at once both end with a complete one.
    """
    import openvino as ov

    folder = graph_folder(key)
    xml = folder / "backbone.xml"
    if xml.is_file() and (folder / "key.json").is_file():
        return xml
    if progress:
        print(f"structcore: converting {key['weights'].split(':')[0]} at {key['crop']} px to OpenVINO "
              f"({key['graph']}; once per machine, cached in {folder.parent})...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        ov.save_model(build(), tmp / "backbone.xml", compress_to_fp16=False)
        atomic_write_json(tmp / "key.json", {**key, "convert_s": round(time.perf_counter() - started, 1)})
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first: its graph is the same
            if not xml.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        print(f"structcore: converted in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return xml


def quantise(fp32_xml: str | Path, calibration: Sequence[np.ndarray], key: dict, progress: bool = True) -> Path:
    """The int8 graph of ``fp32_xml``: NNCF post-training quantisation (transformer preset) calibrated on
    ``calibration`` (preprocessed images ``[1, 3, crop, crop]``), cached under ``key``."""
    try:
        import nncf
    except ImportError:
        raise ConfigError("int8 needs NNCF: pip install 'structcore[int8]'") from None
    import openvino as ov

    def build():
        model = ov.Core().read_model(str(fp32_xml))
        return nncf.quantize(model, nncf.Dataset(list(calibration)), model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(calibration))

    return cached_graph(key, build, progress)


class OpenVINOTokens:
    """Callable ``images [B, 3, H, W] -> [tokens of each block]`` running the backbone on OpenVINO's CPU plugin;
    :meth:`features` gives ``fuse(tokens, projection)``, from one graph in fp32 and bf16.

    A graph for a crop is converted (or read from the cache) and compiled on the first batch of that size.
    ``precision``: fp32, bf16 (the fp32 graph with OpenVINO's bf16 inference hint) or int8 (a tokens graph
    quantised by :func:`quantise`, passed as ``int8_graph``; its tokens are fused in torch).
    """

    def __init__(self, backbone: torch.nn.Module, blocks: Sequence[int], precision: str, weights_id: str,
                 projection: torch.Tensor | None, fuse: Callable, progress: bool = True,
                 int8_graph: Callable[[int], Path] | None = None):
        if precision not in OPENVINO_HINTS:
            raise ConfigError(f"the openvino runtime runs fp32, bf16 or int8, not {precision!r}")
        if precision == "int8" and int8_graph is None:
            raise ConfigError("int8 needs a quantised graph (calibrated on good images); see structcore.runtime.quantise")
        self.backbone, self.blocks, self.precision = backbone, tuple(blocks), precision
        self.weights_id, self.progress = weights_id, progress
        self.int8_graph = int8_graph
        self.projection, self.fuse = projection, fuse
        self._compiled: dict[tuple[int, bool], object] = {}

    def graph(self, crop: int) -> Path:
        """The fp32 (or int8) graph file for ``crop``, converted on first use."""
        if self.precision == "int8":
            return self.int8_graph(crop)
        key = graph_key(self.weights_id, crop, self.blocks, "fp32")
        return cached_graph(key, lambda: convert(GridTokens(self.backbone, self.blocks, crop), crop),
                            self.progress)

    def fused_graph(self, crop: int) -> Path:
        """The fp32 graph file of :class:`FeatureGraph` (tokens, fusion, projection) for ``crop``."""
        key = graph_key(self.weights_id, crop, self.blocks, "fp32-fused", projection=self.projection)
        def build():
            return convert(FeatureGraph(self.backbone, self.blocks, crop, self.projection, self.fuse), crop)

        return cached_graph(key, build, self.progress)

    def compiled(self, crop: int, fused: bool = False):
        if (crop, fused) not in self._compiled:
            xml = self.fused_graph(crop) if fused else self.graph(crop)
            self._compiled[crop, fused] = compile_graph(xml, self.precision)
        return self._compiled[crop, fused]

    def _run(self, images: torch.Tensor, fused: bool):
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"the openvino runtime takes square crops, got {tuple(images.shape[-2:])}")
        compiled = self.compiled(int(images.shape[-1]), fused)
        return compiled(np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32))

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        outputs = self._run(images, fused=False)
        return [torch.from_numpy(np.asarray(outputs[i])) for i in range(len(self.blocks))]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Projected patch features ``[B, P, D]``."""
        if self.precision == "int8":
            return self.fuse(self(images), self.projection)
        return torch.from_numpy(np.asarray(self._run(images, fused=True)[0]))


def compile_graph(xml: str | Path, precision: str):
    """An OpenVINO CPU compiled model of the graph ``xml`` with the inference precision of ``precision``."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
    return ov.Core().compile_model(str(xml), "CPU", config)
