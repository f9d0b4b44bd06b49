"""DINOv2 Vision Transformer in plain torch, with Meta's parameter names.

The state dict of :class:`VisionTransformer` has exactly the keys of Meta's
``dinov2_vit*14*_pretrain.pth`` checkpoints (``mask_token`` included), so those
files load with ``strict=True``. :meth:`VisionTransformer.patch_tokens` returns
the patch tokens of any set of blocks in one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a DINOv2 ViT. ``pos_grid`` is the side of the trained position grid (518 px / 14).

    ``interpolate_offset``/``interpolate_antialias`` reproduce how Meta resizes each model's position
    embedding: +0.1 offset without antialiasing for the original models, target size with
    antialiasing for the register models (as Meta's hub builds them).
    """

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    swiglu: bool = False
    num_registers: int = 0
    patch_size: int = 14
    pos_grid: int = 37
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False


_BASE = {
    "vits14": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "vitb14": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    "vitl14": ViTConfig(embed_dim=1024, depth=24, num_heads=16),
    "vitg14": ViTConfig(embed_dim=1536, depth=40, num_heads=24, swiglu=True),
}

#: Every DINOv2 model by its torch.hub name, e.g. ``dinov2_vitb14`` or ``dinov2_vits14_reg``.
CONFIGS: dict[str, ViTConfig] = {}
for _size, _cfg in _BASE.items():
    CONFIGS[f"dinov2_{_size}"] = _cfg
    CONFIGS[f"dinov2_{_size}_reg"] = ViTConfig(
        **{**_cfg.__dict__, "num_registers": 4, "interpolate_offset": 0.0, "interpolate_antialias": True}
    )


SKIP5 = (-1, -3, -6, -9, -12)  # the paper's skip5 blocks


def resolve_blocks(blocks, depth: int) -> list[int]:
    """Block indices (negative ones count from the end) as positive indices, in the order given."""
    resolved = []
    for b in blocks:
        if not -depth <= b < depth:
            raise ConfigError(f"block index {b} is out of range for a ViT with {depth} blocks")
        resolved.append(b % depth)
    return resolved


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """ViT-g's feed-forward layer; Meta rounds the hidden width to 2/3 of 4*dim, a multiple of 8."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        dim, hidden = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, cfg.num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim, hidden) if cfg.swiglu else Mlp(dim, hidden)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """DINOv2 ViT. Build with ``VisionTransformer(CONFIGS["dinov2_vits14"])``."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.pos_grid**2, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_registers, dim)) if cfg.num_registers else None
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        self._fixed_pos: tuple[tuple[int, int], torch.Tensor] | None = None

    def fix_grid(self, rows: int, cols: int):
        """Use the position embedding of a ``rows`` x ``cols`` grid as a constant from now on, so a traced or
        exported graph holds no bicubic resize (which OpenVINO and ONNX do not reproduce exactly)."""
        with torch.no_grad():
            self._fixed_pos = ((rows, cols), self.interpolate_pos_encoding(rows, cols).detach().clone())

    def interpolate_pos_encoding(self, rows: int, cols: int) -> torch.Tensor:
        """Position embedding for a ``rows`` x ``cols`` patch grid, resized the way Meta's DINOv2 does.

        Bicubic; for the original models no antialiasing and a scale factor of ``(n + 0.1) / grid``
        rather than a target size: that offset changes the sampled positions, so features match
        Meta's only with it.
        """
        cfg = self.cfg
        grid = cfg.pos_grid
        if self._fixed_pos is not None and self._fixed_pos[0] == (rows, cols):
            return self._fixed_pos[1]
        if rows == grid and cols == grid:
            return self.pos_embed
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        patch_pos = patch_pos.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        if cfg.interpolate_offset:
            offset = cfg.interpolate_offset
            resize = {"scale_factor": ((rows + offset) / grid, (cols + offset) / grid)}
        else:
            resize = {"size": (rows, cols)}
        patch_pos = F.interpolate(patch_pos, mode="bicubic", antialias=cfg.interpolate_antialias, **resize)
        if patch_pos.shape[-2:] != (rows, cols):
            raise RuntimeError(f"position grid resized to {tuple(patch_pos.shape[-2:])}, expected {(rows, cols)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([cls_pos, patch_pos], dim=1).to(self.pos_embed.dtype)

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        _, _, h, w = images.shape
        p = self.cfg.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.interpolate_pos_encoding(h // p, w // p).to(x.dtype)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        return x

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    @property
    def depth(self) -> int:
        return self.cfg.depth

    def patch_tokens(self, images: torch.Tensor, blocks: list[int]) -> list[torch.Tensor]:
        """Patch tokens (CLS and registers dropped) after each block in ``blocks``, in the order given.

        Runs the blocks only up to the deepest one asked for. Each tensor is ``[B, rows*cols, dim]``.
        """
        wanted = resolve_blocks(blocks, self.cfg.depth)
        x = self._tokens(images)
        skip = 1 + self.cfg.num_registers
        outputs: dict[int, torch.Tensor] = {}
        for i in range(max(wanted) + 1):
            x = self.blocks[i](x)
            if i in wanted:
                outputs[i] = x[:, skip:]
        return [outputs[i] for i in wanted]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """All tokens after the final LayerNorm, as Meta's ``forward_features`` computes them."""
        x = self._tokens(images)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def build_vit(name: str) -> VisionTransformer:
    """An uninitialised DINOv2 ViT by its hub name (``dinov2_vits14``, ``dinov2_vitb14_reg``, ...)."""
    if name not in CONFIGS:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(CONFIGS))}")
    return VisionTransformer(CONFIGS[name])

