"""Image preprocessing and StructCore's patch features.

Multi-block DINOv2 patch tokens -> per-block L2 normalisation -> concatenation -> a fixed
seeded random projection (paper eq. 1-2). The projection matrix is drawn once from the seed
and then stored with every fitted model, so a model never depends on the RNG implementation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import ConfigError
from .vit import SKIP5, resolve_blocks

if TYPE_CHECKING:
    from .backbones import Backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """The image geometry: resize to ``resize`` x ``resize`` (bilinear, antialiased), center-crop
    ``crop`` x ``crop``; then normalise. Images, masks and overlays all go through it."""

    resize: int = 448
    crop: int = 392
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    patch_size: int = 14

    def __post_init__(self):
        if not 0 < self.crop <= self.resize:
            raise ConfigError(f"need 0 < crop <= resize, got crop={self.crop}, resize={self.resize}")
        if self.crop % self.patch_size:
            raise ConfigError(f"crop ({self.crop}) must be a multiple of the ViT patch size {self.patch_size}")

    @property
    def offset(self) -> int:
        """Top/left offset of the center crop (rounded as torchvision's CenterCrop does)."""
        return int(round((self.resize - self.crop) / 2.0))

    def view(self, image: Image.Image) -> Image.Image:
        """The image as the model sees it (resized and center-cropped, not normalised), RGB."""
        image = image.convert("RGB").resize((self.resize, self.resize), Image.BILINEAR)
        o = self.offset
        return image.crop((o, o, o + self.crop, o + self.crop))

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """A ``[H, W]`` mask in the crop frame, boolean ``[crop, crop]``: nearest-neighbour resize
        (pixel-centre aligned like Pillow's ``NEAREST``), then the same center crop as the images."""
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
        h, w = mask.shape
        dst = np.arange(self.offset, self.offset + self.crop, dtype=np.float64) + 0.5
        rows = np.minimum(np.floor(dst * (h / self.resize)).astype(np.int64), h - 1)
        cols = np.minimum(np.floor(dst * (w / self.resize)).astype(np.int64), w - 1)
        return mask[np.ix_(rows, cols)] > 0

    def __call__(self, image: Image.Image) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(self.view(image), dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std


def random_projection(in_dim: int, out_dim: int, seed: int) -> torch.Tensor:
    """Gaussian Johnson-Lindenstrauss matrix ``[in_dim, out_dim]`` with entries N(0, 1/out_dim)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(in_dim, out_dim, generator=generator) / out_dim**0.5


def fuse_layers(layers: list[torch.Tensor], projection: torch.Tensor | None) -> torch.Tensor:
    """L2-normalise each block's tokens, concatenate along channels, project. Computed in fp32."""
    fused = torch.cat([F.normalize(t.float(), dim=-1) for t in layers], dim=-1)
    return fused if projection is None else fused @ projection


class FeatureExtractor:
    """Turns a batch of preprocessed images into projected patch features ``[B, rows*cols, D]``.

    ``runtime``: ``torch``, or ``openvino`` (the backbone on OpenVINO's CPU plugin, :mod:`structcore.runtime`;
    there a call runs fusion and projection inside the graph too; ``weights_id`` names the weights in its
    graph cache; int8 there needs ``int8_graph(crop) -> graph file``). ``compile=True`` runs the torch backbone through
    ``torch.compile`` (inductor, weights frozen into the graph; a one-off compilation, README "Speed").
    Smaller batches are zero-padded to the first batch's size, so the last batch of a folder does not compile
    again (images never interact inside the ViT).
    """

    def __init__(
        self,
        backbone: Backbone,
        blocks: tuple[int, ...] = SKIP5,
        projection: torch.Tensor | None = None,
        precision: str = "fp32",
        device: str | torch.device = "cpu",
        compile: bool = False,
        runtime: str = "torch",
        weights_id: str = "",
        progress: bool = True,
        int8_graph=None,
    ):
        if precision not in ("fp32", "bf16", "int8"):
            raise ConfigError(f"precision must be 'fp32', 'bf16' or 'int8', got {precision!r}")
        if runtime not in ("torch", "openvino"):
            raise ConfigError(f"runtime must be 'torch' or 'openvino', got {runtime!r}")
        if precision == "int8" and runtime != "openvino":
            raise ConfigError("int8 runs on the openvino runtime (--runtime openvino)")
        if runtime == "openvino" and compile:
            raise ConfigError("--compile is torch's; the openvino runtime compiles its own graph")
        resolve_blocks(list(blocks), backbone.depth)
        self.backbone = backbone.to(device).eval()
        self.blocks = tuple(blocks)
        self.device = torch.device(device)
        self.projection = None if projection is None else projection.to(self.device, torch.float32)
        self.precision = precision
        self.runtime, self.weights_id, self.progress = runtime, weights_id, progress
        if runtime == "openvino":
            from .runtime import OpenVINOTokens

            self._tokens = OpenVINOTokens(self.backbone, self.blocks, precision, weights_id, self.projection,
                                          fuse_layers, progress, int8_graph=int8_graph)
        else:
            self._tokens = _BlockTokens(self.backbone, self.blocks, precision == "bf16")
        self._compiled = torch.compile(self._tokens, dynamic=False) if compile else None
        self._compiled_batch = 0

    @property
    def in_dim(self) -> int:
        return self.backbone.embed_dim * len(self.blocks)

    def layer_tokens(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Raw patch tokens of each selected block (in the backbone's compute dtype)."""
        images = images.to(self.device)
        with torch.inference_mode():
            if self._compiled is None:
                return self._tokens(images)
            n = images.shape[0]
            self._compiled_batch = self._compiled_batch or n
            if n < self._compiled_batch:
                images = torch.cat([images, images.new_zeros(self._compiled_batch - n, *images.shape[1:])])
            from torch._inductor import config as inductor_config

            with inductor_config.patch(freezing=True):
                return [t[:n] for t in self._compiled(images)]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.runtime == "openvino":
                return self._tokens.features(images)
            return fuse_layers(self.layer_tokens(images), self.projection)


class _BlockTokens(torch.nn.Module):
    """The backbone's patch tokens of the chosen blocks, under bf16 autocast when asked (what gets compiled)."""

    def __init__(self, backbone: Backbone, blocks: tuple[int, ...], bf16: bool):
        super().__init__()
        self.backbone, self.blocks, self.bf16 = backbone, list(blocks), bf16

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.backbone.patch_tokens(images, self.blocks)


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> bf16 on a GPU that supports it or a CPU with bf16 matrix instructions, else fp32."""
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16_matmul() else "fp32"


@functools.cache
def cpu_bf16_flags() -> tuple[str, ...]:
    """The CPU's bf16 matrix-instruction flags (Intel AMX, AVX-512 BF16) from /proc/cpuinfo; () if none."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return ()
    return tuple(flag for flag in ("amx_bf16", "avx512_bf16") if flag in text)


def cpu_has_bf16_matmul() -> bool:
    """Whether the CPU multiplies bf16 matrices natively: then bf16 is 4-8x fp32."""
    return bool(cpu_bf16_flags())
