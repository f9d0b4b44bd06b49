"""What a forward pass costs (analytic GFLOP) and what the machine does (matmul rate, memory)."""

import pytest
import torch

from structcore import hardware
from structcore.vit import CONFIGS, ViTConfig


def test_vit_gflops_matches_the_spec():
    # spec.md: about 44 GFLOP per image for ViT-S/14 at 392 px, about 156 for ViT-B/14
    blocks = (-1, -3, -6, -9, -12)
    assert hardware.vit_gflops(CONFIGS["dinov2_vits14"], 392, blocks) == pytest.approx(45.05, abs=0.05)
    assert hardware.vit_gflops(CONFIGS["dinov2_vitb14"], 392, blocks) == pytest.approx(156.8, abs=0.1)
    # only the blocks up to the deepest one asked for run
    cfg = ViTConfig(embed_dim=48, depth=4, num_heads=3)
    assert hardware.vit_gflops(cfg, 56, (0,)) < hardware.vit_gflops(cfg, 56, (-1,))
    assert hardware.projection_gflops(CONFIGS["dinov2_vits14"], 392, 5, 512) == pytest.approx(1.541, abs=1e-3)
    assert hardware.projection_gflops(CONFIGS["dinov2_vits14"], 392, 5, None) == 0.0


def test_matmul_rate_is_positive():
    assert hardware.matmul_tflops(torch.float32, "cpu", size=128, repeats=2) > 0
