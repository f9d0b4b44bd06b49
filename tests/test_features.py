"""Feature fusion, precision and the compiled backbone path, against direct computations."""

import numpy as np
import pytest
import torch
from PIL import Image

from structcore import features
from structcore.features import FeatureExtractor, Preprocess, fuse_layers, random_projection, resolve_precision


def test_fuse_layers_is_l2_normalise_concat_project():
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(2, 5, 6, generator=g) * s for s in (1.0, 30.0)]
    proj = random_projection(12, 4, seed=1)
    want = np.concatenate([(t / np.linalg.norm(t, axis=-1, keepdims=True)) for t in (x.numpy() for x in layers)], -1)
    np.testing.assert_allclose(fuse_layers(layers, None).numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(fuse_layers(layers, proj).numpy(), want @ proj.numpy(), rtol=1e-4, atol=1e-6)


def test_random_projection_is_seeded_gaussian():
    a, b = random_projection(300, 200, 7), random_projection(300, 200, 7)
    assert torch.equal(a, b) and not torch.equal(a, random_projection(300, 200, 8))
    # entries N(0, 1/out_dim): squared norms of projected unit vectors stay near 1
    x = torch.nn.functional.normalize(torch.randn(500, 300, generator=torch.Generator().manual_seed(0)), dim=1)
    assert abs(float(((x @ a) ** 2).sum(1).mean()) - 1) < 0.05


def test_preprocess_resizes_and_center_crops():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 200, 3), dtype=np.uint8))
    x = Preprocess(resize=64, crop=56)(image)
    assert x.shape == (3, 56, 56)
    grey = Preprocess(resize=64, crop=56)(Image.new("RGB", (80, 70), (124, 116, 104)))  # ImageNet mean colour
    assert float(grey.abs().max()) < 0.01
    with pytest.raises(ValueError):
        Preprocess(resize=64, crop=50)  # not a multiple of the patch size


def test_bf16_features_are_close_to_fp32(tiny_vit):
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    f32 = FeatureExtractor(tiny_vit, (-1, -2), random_projection(96, 32, 0), "fp32")(x)
    b16 = FeatureExtractor(tiny_vit, (-1, -2), random_projection(96, 32, 0), "bf16")(x)
    assert b16.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(f32, b16, dim=-1)
    assert float(cos.min()) > 0.99 and not torch.equal(f32, b16)


def test_compiled_backbone_matches_eager_including_a_short_last_batch(tiny_vit):
    x = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    eager = FeatureExtractor(tiny_vit, (-1, -3), None, "fp32")
    compiled = FeatureExtractor(tiny_vit, (-1, -3), None, "fp32", compile=True)
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled(x[:2]), eager(x[:2]), rtol=1e-4, atol=1e-5)  # padded to 3, then cut


def test_resolve_precision(monkeypatch):
    assert resolve_precision("fp32", "cpu") == "fp32"
    monkeypatch.setattr(features, "cpu_has_bf16_matmul", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(features, "cpu_has_bf16_matmul", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(ValueError):
        FeatureExtractor(torch.nn.Module(), precision="fp16")
