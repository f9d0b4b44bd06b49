import os

import pytest
import torch
from safetensors import safe_open

from structcore.data import iter_batches
from structcore.feature_cache import CacheContext, FeatureCache, image_key
from structcore.features import FeatureExtractor, Preprocess, fuse_layers

PRE = Preprocess(resize=64, crop=56)


def _ctx(**kw):
    base = dict(backbone="tiny", weights_sha256="0" * 64, preprocess=PRE, precision="fp32", device_type="cpu")
    return CacheContext(**{**base, **kw})


def _paths(root):
    return sorted((root / "widget" / "train" / "good").glob("*.png"))[:5]


def _direct(vit, paths, blocks):
    ex = FeatureExtractor(vit, blocks, None, "fp32", "cpu")
    parts = [ex.layer_tokens(images) for _, images in iter_batches(paths, PRE, 2, 0)]
    return [torch.cat([p[i] for p in parts]).float() for i in range(len(blocks))]


@pytest.fixture
def counted(tiny_vit, monkeypatch):
    calls = []
    original = type(tiny_vit).patch_tokens

    def patch_tokens(self, images, blocks):
        calls.append((len(images), tuple(blocks)))
        return original(self, images, blocks)

    monkeypatch.setattr(type(tiny_vit), "patch_tokens", patch_tokens)
    return calls


def test_tokens_match_direct_extraction_and_second_call_hits(synthetic_mvtec, tiny_vit, tmp_path, counted):
    paths = _paths(synthetic_mvtec)
    ex = FeatureExtractor(tiny_vit, (-1,), None, "fp32", "cpu")
    cache = FeatureCache(tmp_path / "cache")
    first = cache.layer_tokens(ex, _ctx(), paths, [-1, -3], batch_size=2, num_workers=0, progress=False)
    expected = _direct(tiny_vit, paths, (-1, -3))
    assert [t.shape for t in first] == [(5, 16, 48)] * 2 and all(t.dtype == torch.float32 for t in first)
    assert all(torch.equal(a, b) for a, b in zip(first, expected))
    assert cache.stats.misses == 5 and cache.stats.hits == 0
    n_calls = len(counted)
    again = cache.layer_tokens(ex, _ctx(), paths, [-1, -3], batch_size=2, num_workers=0, progress=False)
    assert len(counted) == n_calls and cache.stats.hits == 5
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    # one file per image, named by its key, holding block_<positive index>
    file = cache.file_for(image_key(paths[0], _ctx()))
    with safe_open(file, framework="pt") as f:
        assert sorted(f.keys()) == ["block_1", "block_3"]
    # reduce: fused per chunk, same as fusing everything at once
    fused = cache.layer_tokens(ex, _ctx(), paths, [-1, -3], progress=False, reduce=lambda ls: fuse_layers(ls, None))
    assert torch.allclose(fused, fuse_layers(expected, None))


def test_missing_blocks_reextract_and_merge(synthetic_mvtec, tiny_vit, tmp_path, counted):
    paths = _paths(synthetic_mvtec)
    ex = FeatureExtractor(tiny_vit, (-1,), None, "fp32", "cpu")
    cache = FeatureCache(tmp_path)
    cache.layer_tokens(ex, _ctx(), paths, [-1], num_workers=0, progress=False)
    counted.clear()
    out = cache.layer_tokens(ex, _ctx(), paths, [-2, -1], num_workers=0, progress=False)
    assert counted and all(blocks == (2, 3) for _, blocks in counted)  # all requested blocks, one pass
    assert all(torch.equal(a, b) for a, b in zip(out, _direct(tiny_vit, paths, (-2, -1))))
    counted.clear()
    cache.layer_tokens(ex, _ctx(), paths, [-4], num_workers=0, progress=False)
    with safe_open(cache.file_for(image_key(paths[0], _ctx())), framework="pt") as f:
        assert sorted(f.keys()) == ["block_0", "block_2", "block_3"]  # earlier blocks kept
    counted.clear()
    cache.layer_tokens(ex, _ctx(), paths, [-1, -2, -4], num_workers=0, progress=False)
    assert counted == []
    assert not list(tmp_path.rglob("*.tmp"))


def test_key_changes_with_file_and_settings(synthetic_mvtec, tmp_path):
    src = _paths(synthetic_mvtec)[0]
    p = tmp_path / "img.png"
    p.write_bytes(src.read_bytes())
    k = image_key(p, _ctx())
    assert k == image_key(p, _ctx())
    for other in (_ctx(precision="bf16"), _ctx(weights_sha256="1" * 64), _ctx(backbone="other"),
                  _ctx(preprocess=Preprocess(resize=70, crop=56)), _ctx(device_type="cuda")):
        assert image_key(p, other) != k
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert image_key(p, _ctx()) != k


def test_corrupt_file_is_rewritten_and_disabled_cache_extracts(synthetic_mvtec, tiny_vit, tmp_path, counted):
    paths = _paths(synthetic_mvtec)[:2]
    ex = FeatureExtractor(tiny_vit, (-1,), None, "fp32", "cpu")
    cache = FeatureCache(tmp_path)
    good = cache.layer_tokens(ex, _ctx(), paths, [-1], num_workers=0, progress=False)
    cache.file_for(image_key(paths[0], _ctx())).write_bytes(b"garbage")
    counted.clear()
    again = cache.layer_tokens(ex, _ctx(), paths, [-1], num_workers=0, progress=False)
    assert sum(n for n, _ in counted) == 1 and torch.equal(good[0], again[0])
    off = FeatureCache(None)
    counted.clear()
    out = off.layer_tokens(ex, _ctx(), paths, [-1], num_workers=0, progress=False)
    assert counted and torch.equal(out[0], good[0]) and not off.enabled


def test_a_path_through_dot_dot_is_the_same_key(tmp_path):
    (tmp_path / "sub").mkdir()
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    assert image_key(tmp_path / "sub" / ".." / "a.png", _ctx()) == image_key(image, _ctx())
    assert image_key(image, _ctx()) != image_key(image, _ctx(precision="bf16"))
