"""The OpenVINO runtime against the torch backbone: features, scores, the graph cache and its key."""

import threading

import numpy as np
import pytest
import torch

from structcore import Detector, DetectorConfig, runtime
from structcore.errors import ConfigError
from structcore.features import FeatureExtractor, fuse_layers, random_projection
from structcore.runtime import GridTokens, cached_graph, convert, graph_folder, graph_key, resolve_runtime

pytest.importorskip("openvino")

TINY = dict(backbone="tiny", resize=64, crop=56, blocks=(-1, -2, -4), projection_dim=32, coreset_ratio=0.25)


@pytest.fixture(autouse=True)
def graph_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STRUCTCORE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "openvino"


def _images(n=3, crop=56, seed=0):
    return torch.randn(n, 3, crop, crop, generator=torch.Generator().manual_seed(seed))


def test_resolve_runtime(monkeypatch):
    monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)
    assert resolve_runtime("auto", "cpu") == "openvino"
    assert resolve_runtime(None, "cpu") == "openvino"
    assert resolve_runtime("auto", "cuda") == "torch"
    assert resolve_runtime("torch", "cpu") == "torch"
    monkeypatch.setenv(runtime.RUNTIME_ENV, "torch")
    assert resolve_runtime(None, "cpu") == "torch"
    assert resolve_runtime("openvino", "cpu") == "openvino"  # an explicit choice wins over the variable
    with pytest.raises(ConfigError, match="CPU"):
        resolve_runtime("openvino", "cuda")
    with pytest.raises(ConfigError, match="runtime must be one of"):
        resolve_runtime("tensorrt", "cpu")
    monkeypatch.setattr(runtime, "openvino_version", lambda: None)
    with pytest.raises(ConfigError, match="pip install"):
        resolve_runtime("openvino", "cpu")
    monkeypatch.delenv(runtime.RUNTIME_ENV)
    assert resolve_runtime("auto", "cpu") == "torch"  # not installed: auto falls back


def test_a_fixed_grid_gives_the_same_tokens_as_the_bicubic_resize(tiny_vit):
    x = _images()
    want = tiny_vit.patch_tokens(x, [0, 3])
    module = GridTokens(tiny_vit, [0, 3], 56)
    assert module.backbone._fixed_pos is not None and tiny_vit._fixed_pos is None  # a copy is fixed, not the original
    for got, ref in zip(module(x), want):
        assert torch.equal(got, ref)
    assert not torch.equal(module(_images(crop=42))[0][:, :9], want[0][:, :9])  # another grid is resized as before


@pytest.mark.parametrize("blocks", [(-1, -2, -4), (-4, -1)])
def test_openvino_fp32_tokens_match_torch_in_the_order_asked(tiny_vit, blocks):
    x = _images(5)
    proj = random_projection(48 * len(blocks), 16, 0)
    ref = FeatureExtractor(tiny_vit, blocks, proj, "fp32")
    ov = FeatureExtractor(tiny_vit, blocks, proj, "fp32", runtime="openvino", weights_id="tiny:0", progress=False)
    for got, want in zip(ov.layer_tokens(x), ref.layer_tokens(x)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ov(x[:2]), ref(x[:2]), rtol=1e-4, atol=1e-5)  # a dynamic batch: 5, then 2
    cos = torch.nn.functional.cosine_similarity(ov(x), ref(x), dim=-1)
    assert float(cos.min()) >= 0.9999


def test_openvino_bf16_is_close_to_fp32_but_not_equal(tiny_vit):
    x = _images()
    f32 = FeatureExtractor(tiny_vit, (-1,), None, "fp32", runtime="openvino", weights_id="tiny:0", progress=False)(x)
    b16 = FeatureExtractor(tiny_vit, (-1,), None, "bf16", runtime="openvino", weights_id="tiny:0", progress=False)(x)
    cos = torch.nn.functional.cosine_similarity(f32, b16, dim=-1)
    assert float(cos.min()) > 0.99 and not torch.equal(f32, b16)


def test_each_graph_is_converted_once_and_keyed(tiny_vit, graph_cache, monkeypatch):
    x = _images()
    proj = random_projection(48, 16, 0)
    f32 = FeatureExtractor(tiny_vit, (-1,), proj, "fp32", runtime="openvino", weights_id="tiny:0", progress=False)
    f32.layer_tokens(x)  # the tokens graph (feature cache, int8)
    f32(x)  # the fused graph: tokens, fusion and projection
    tokens, fused = graph_key("tiny:0", 56, [-1], "fp32"), graph_key("tiny:0", 56, [-1], "fp32-fused", projection=proj)
    assert sorted(graph_cache.iterdir()) == sorted([graph_folder(tokens), graph_folder(fused)])
    for folder in graph_cache.iterdir():
        assert sorted(p.name for p in folder.iterdir()) == ["backbone.bin", "backbone.xml", "key.json"]
    monkeypatch.setattr(runtime, "convert", lambda *a: pytest.fail("converted again"))
    b16 = FeatureExtractor(tiny_vit, (-1,), proj, "bf16", runtime="openvino", weights_id="tiny:0", progress=False)
    b16.layer_tokens(x)
    b16(x)  # bf16 is a hint on the same two graphs
    for other in (graph_key("tiny:1", 56, [-1], "fp32"), graph_key("tiny:0", 42, [-1], "fp32"),
                  graph_key("tiny:0", 56, [-1, -2], "fp32"), graph_key("tiny:0", 56, [-1], "int8"),
                  {**tokens, "openvino": "0.0"}, graph_key("tiny:0", 56, [-1], "fp32-fused"),
                  graph_key("tiny:0", 56, [-1], "fp32-fused", projection=random_projection(48, 16, 1))):
        assert graph_folder(other) not in (graph_folder(tokens), graph_folder(fused))


def test_the_fused_graph_gives_the_fused_tokens(tiny_vit):
    x = _images(3)
    for proj in (random_projection(96, 16, 0), None):
        ov = FeatureExtractor(tiny_vit, (-1, -3), proj, "fp32", runtime="openvino", weights_id="tiny:0", progress=False)
        want = fuse_layers(ov.layer_tokens(x), proj)  # the tokens graph, fused in torch
        got = ov(x)
        assert got.shape == want.shape == (3, 16, 16 if proj is not None else 96)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_two_converters_at_once_both_end_with_one_complete_graph(tiny_vit, graph_cache):
    key = graph_key("tiny:0", 56, [-1], "fp32")
    module = GridTokens(tiny_vit, [-1], 56)
    started = threading.Barrier(2)

    def build():
        started.wait()  # both are converting before either renames its folder into place
        return convert(module, 56)

    paths = [None, None]
    threads = [threading.Thread(target=lambda i=i: paths.__setitem__(i, cached_graph(key, build, False))) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert paths[0] == paths[1] == graph_folder(key) / "backbone.xml"
    assert [p.name for p in graph_cache.iterdir()] == [graph_folder(key).name]  # no temporary folder left


def test_a_detector_on_openvino_scores_like_torch(synthetic_mvtec, tiny_backbone):
    train = sorted((synthetic_mvtec / "widget" / "train" / "good").glob("*.png"))
    test = sorted((synthetic_mvtec / "widget" / "test").rglob("*.png"))
    scores = {}
    for name in ("torch", "openvino"):
        det = Detector(DetectorConfig(**TINY), precision="fp32", progress=False, batch_size=4, runtime=name)
        det.fit("widget", train)
        assert det.runtime == name
        scores[name] = np.array([[p.scores[s] for s in ("base", "hybrid")] for p in det.predict(test, category="widget")])
    np.testing.assert_allclose(scores["openvino"], scores["torch"], rtol=1e-3)


def test_int8_needs_openvino_and_a_fitted_model(synthetic_mvtec, tiny_backbone):
    with pytest.raises(ConfigError, match="openvino"):
        Detector(DetectorConfig(**TINY), precision="int8", runtime="torch")
    with pytest.raises(ConfigError, match="cannot fit"):
        Detector(DetectorConfig(**TINY), fit_precision="int8", runtime="openvino")
    det = Detector(DetectorConfig(**TINY), precision="int8", runtime="openvino", progress=False)
    with pytest.raises(ConfigError, match="fit a category first"):
        det.extract(sorted((synthetic_mvtec / "widget" / "test").rglob("*.png")))
