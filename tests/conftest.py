"""Shared fixtures: a tiny random ViT for fast tests, and the paths of the real data."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from structcore.backbones import register_backbone
from structcore.vit import VisionTransformer, ViTConfig
from structcore.weights import WeightsInfo

# the unit tests run the backbone on torch unless a test asks for OpenVINO (test_runtime.py), so that each
# tiny random ViT is not converted first; subprocesses started by the tests inherit this
os.environ.setdefault("STRUCTCORE_RUNTIME", "torch")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MVTEC = SHARED_DATA / "mvtec_ad"


def _tiny_vit() -> VisionTransformer:
    """The real ViT class with 4 blocks of width 48, random weights (seeded)."""
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig(embed_dim=48, depth=4, num_heads=3, pos_grid=4)).eval()


TINY_VIT = _tiny_vit()
TINY_INFO = WeightsInfo(name="tiny", path=None, sha256="0" * 64, source="test")
# registered at import, so test modules can build DetectorConfig(backbone="tiny") at their top level
register_backbone("tiny", lambda weights=None: (TINY_VIT, TINY_INFO), embed_dim=48, patch_size=14, depth=4,
                  default_blocks=(-1, -2))


@pytest.fixture(scope="session")
def tiny_vit() -> VisionTransformer:
    return TINY_VIT


@pytest.fixture(scope="session")
def mvtec_root() -> Path:
    if not (MVTEC / "bottle").is_dir():
        pytest.skip(f"real data not found at {MVTEC}")
    return MVTEC


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random texture: good 'parts' all look alike."""
    base = np.linspace(60, 180, size)[None, :, None] + np.zeros((size, size, 3))
    return np.clip(base + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def synthetic_mvtec(tmp_path_factory) -> Path:
    """A tiny MVTec-layout dataset: category 'widget' with masks, 'gadget' without ground_truth."""
    root = tmp_path_factory.mktemp("mvtec")
    rng = np.random.default_rng(0)
    for cat, with_masks in (("widget", True), ("gadget", False)):
        good = root / cat / "train" / "good"
        good.mkdir(parents=True)
        for i in range(8):
            Image.fromarray(_texture(rng, 64)).save(good / f"{i:03d}.png")
        (root / cat / "test" / "good").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(_texture(rng, 64)).save(root / cat / "test" / "good" / f"{i:03d}.png")
        (root / cat / "test" / "scratch").mkdir(parents=True)
        if with_masks:
            (root / cat / "ground_truth" / "scratch").mkdir(parents=True)
        for i in range(3):
            img = _texture(rng, 64)
            mask = np.zeros((64, 64), np.uint8)
            mask[20 + 4 * i : 36 + 4 * i, 16:40] = 255
            img[mask > 0] = (255, 0, 255) if cat == "widget" else (0, 0, 0)
            Image.fromarray(img).save(root / cat / "test" / "scratch" / f"{i:03d}.png")
            if with_masks:
                Image.fromarray(mask).save(root / cat / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="session")
def tiny_backbone() -> str:
    """The registry name of the tiny random ViT (use it as DetectorConfig.backbone)."""
    return "tiny"
