"""What a backbone must provide, and the registry of backbones by name.

A backbone is a ``torch.nn.Module`` with ``embed_dim``, ``patch_size``, ``depth`` and
``patch_tokens(images, blocks)`` (patch tokens after each block, prefix tokens dropped). The registry
maps a name (``DetectorConfig.backbone``) to a loader returning the module and a
:class:`~structcore.weights.WeightsInfo` whose sha256 identifies the weights, and to the blocks a model
uses when its config names none (which may depend on the weights). Every DINOv2 model is registered;
tests and other backbones add their own with :func:`register_backbone`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from .errors import ConfigError
from .vit import CONFIGS, SKIP5
from .weights import WeightsInfo, default_blocks
from .weights import load_backbone as load_dinov2


@runtime_checkable
class Backbone(Protocol):
    embed_dim: int
    patch_size: int
    depth: int

    def patch_tokens(self, images: torch.Tensor, blocks: Sequence[int]) -> list[torch.Tensor]: ...


Loader = Callable[[str | Path | None], tuple[Backbone, WeightsInfo]]
DefaultBlocks = tuple[int, ...] | Callable[[WeightsInfo], tuple[int, ...]]


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone: its shape, how to load it (``load(weights_path_or_None)``), and its default
    blocks (a tuple, or a function of the loaded weights' :class:`~structcore.weights.WeightsInfo`)."""

    name: str
    embed_dim: int
    patch_size: int
    depth: int
    load: Loader
    default_blocks: DefaultBlocks | None = None

    def blocks_for(self, info: WeightsInfo) -> tuple[int, ...]:
        """The blocks a model of these weights uses when its config names none (skip5 if the entry has none)."""
        blocks = SKIP5 if self.default_blocks is None else self.default_blocks
        return tuple(blocks(info) if callable(blocks) else blocks)


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(name: str, load: Loader, *, embed_dim: int, patch_size: int, depth: int,
                      default_blocks: DefaultBlocks | None = None) -> BackboneEntry:
    """Make ``name`` usable as ``DetectorConfig(backbone=name)``; replaces an entry of that name.
    ``default_blocks``: the blocks of a config that names none, or a function of the loaded weights'
    record giving them (default: the paper's skip5)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a backbone name must be a non-empty string, got {name!r}")
    if not callable(load):
        raise ConfigError(f"backbone {name!r}: load must be a callable load(weights) -> (module, WeightsInfo)")
    for field, value in (("embed_dim", embed_dim), ("patch_size", patch_size), ("depth", depth)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"backbone {name!r}: {field} must be a positive integer, got {value!r}")
    if default_blocks is not None and not callable(default_blocks) and not (
            isinstance(default_blocks, (tuple, list)) and default_blocks
            and all(isinstance(b, int) and -depth <= b < depth for b in default_blocks)):
        raise ConfigError(f"backbone {name!r}: default_blocks must be a non-empty list of blocks in "
                          f"-{depth}..{depth - 1} (or a function of the weights), got {default_blocks!r}")
    entry = BackboneEntry(name, embed_dim, patch_size, depth, load, default_blocks)
    _REGISTRY[name] = entry
    return entry


def backbone_entry(name: str) -> BackboneEntry:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def backbone_names() -> list[str]:
    return sorted(_REGISTRY)


def load_backbone(name: str, weights: str | Path | None = None) -> tuple[Backbone, WeightsInfo]:
    """The backbone ``name`` with its weights, in eval mode."""
    entry = backbone_entry(name)
    module, info = entry.load(weights)
    got = tuple(getattr(module, a, None) for a in ("embed_dim", "patch_size", "depth"))
    if got != (entry.embed_dim, entry.patch_size, entry.depth):
        raise ConfigError(
            f"backbone {name!r} loaded a module whose shape differs from its registry entry: (embed_dim, patch_size, "
            f"depth) = {got}, registered as {(entry.embed_dim, entry.patch_size, entry.depth)}"
        )
    return module, info


for _name, _cfg in CONFIGS.items():
    register_backbone(
        _name,
        lambda weights, _name=_name: load_dinov2(_name, weights),
        embed_dim=_cfg.embed_dim,
        patch_size=_cfg.patch_size,
        depth=_cfg.depth,
        default_blocks=default_blocks,
    )
