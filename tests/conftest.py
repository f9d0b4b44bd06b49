"""Shared fixtures: a tiny random ViT for fast tests, and the paths of the real data."""

from pathlib import Path

import pytest
import torch

from structcore.backbone import VisionTransformer, ViTConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MVTEC = SHARED_DATA / "mvtec_ad"


@pytest.fixture(scope="session")
def tiny_vit() -> VisionTransformer:
    """The real ViT class with 4 blocks of width 48, random weights (seeded)."""
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(embed_dim=48, depth=4, num_heads=3, pos_grid=4))
    return model.eval()


@pytest.fixture(scope="session")
def mvtec_root() -> Path:
    if not (MVTEC / "bottle").is_dir():
        pytest.skip(f"real data not found at {MVTEC}")
    return MVTEC
