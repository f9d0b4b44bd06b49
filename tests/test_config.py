"""DetectorConfig checks every field when it is built; each bad value is a ConfigError naming the field."""

import json
from dataclasses import asdict, fields, replace

import pytest

from structcore import ConfigError, DetectorConfig
from structcore.vit import CONFIGS

TINY = dict(backbone="tiny", resize=64, crop=56, blocks=(-1, -2), projection_dim=16, coreset_ratio=0.25)

# one bad value per field (the tiny backbone: patch 14, 4 blocks), and the word the message must hold
BAD = [
    ("backbone", "dinov3_vits16", "backbone"),
    ("resize", 50, "resize"),  # smaller than the crop
    ("resize", 64.0, "resize"),
    ("crop", 50, "crop"),  # not a multiple of 14
    ("crop", "56", "crop"),
    ("blocks", (), "blocks"),
    ("blocks", 3, "blocks"),
    ("blocks", (1.0,), "blocks"),
    ("projection_dim", 0, "projection_dim"),
    ("projection_dim", True, "projection_dim"),
    ("seed", 1.5, "seed"),
    ("coreset_ratio", 0.0, "coreset_ratio"),
    ("coreset_ratio", "0.1", "coreset_ratio"),
    ("coreset_size", 0, "coreset_size"),
    ("k", 0, "k (nearest"),
    ("k", True, "k (nearest"),
    ("sigma", -1.0, "sigma"),
    ("sigma", "4", "sigma"),
    ("sigma", float("inf"), "sigma"),
    ("pooling", "median", "pooling"),
    ("components", ("std", "std"), "components"),
    ("components", ("std", "area"), "components"),
    ("components", "std", "components"),
    ("top_ratio", 0.0, "top_ratio"),
    ("top_ratio", float("nan"), "top_ratio"),
    ("top_ratio", None, "top_ratio"),
    ("distance", "cosin", "distance"),
    ("lam", -0.5, "lam"),
    ("lam", "1", "lam"),
    ("calibration", "loo", "calibration"),
    ("heldout_fraction", 1.0, "heldout_fraction"),
    ("false_reject_rate", 0.0, "false_reject_rate"),
    ("false_reject_rate", 1.0, "false_reject_rate"),
    ("false_reject_rate", None, "false_reject_rate"),
    ("threshold_calibration", "bootstrap", "threshold_calibration"),
    ("threshold_folds", 1, "threshold_folds"),
    ("threshold_folds", 2.5, "threshold_folds"),
    ("descriptor_on", "maps", "descriptor_on"),
    ("routing_prototypes", 0, "routing_prototypes"),
    ("decision_score", "max", "decision_score"),
]


def test_every_field_has_a_bad_case():
    assert {f.name for f in fields(DetectorConfig)} == {name for name, _, _ in BAD}


@pytest.mark.parametrize("field, value, says", BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_a_bad_value_is_a_config_error_naming_the_field(tiny_backbone, field, value, says):
    DetectorConfig(**TINY)  # the base is valid
    with pytest.raises(ConfigError) as e:
        DetectorConfig(**{**TINY, field: value})
    assert says in str(e.value)
    assert isinstance(e.value, ValueError)


def test_replace_is_checked_too(tiny_backbone):
    with pytest.raises(ConfigError, match="k \\(nearest"):
        replace(DetectorConfig(**TINY), k=-3)


def test_good_values_are_kept(tiny_backbone):
    c = DetectorConfig(**{**TINY, "blocks": [0, -1], "components": ["tv", "std"], "sigma": 0, "lam": 1, "false_reject_rate": 0.5})
    assert c.blocks == (0, -1) and c.components == ("tv", "std")
    assert c.sigma == 0.0 and c.lam == 1.0 and c.false_reject_rate == 0.5
    assert (c.grid, c.patch_size) == ((4, 4), 14)
    assert DetectorConfig(**json.loads(json.dumps(asdict(c)))) == c  # what a manifest stores builds it again


def test_coreset_size_overrides_the_ratio():
    c = DetectorConfig(coreset_size=1000)
    assert c.coreset_size == 1000 and c.coreset_ratio is None
    assert DetectorConfig().coreset_ratio == 0.01 and DetectorConfig().coreset_size is None
    with pytest.raises(ConfigError, match="coreset_ratio or a coreset_size"):
        DetectorConfig(coreset_ratio=None)


def test_an_unknown_backbone_lists_the_known_ones(tiny_backbone):
    with pytest.raises(ConfigError) as e:
        DetectorConfig(backbone="resnet50")
    message = str(e.value)
    assert "resnet50" in message
    for name in [*CONFIGS, "tiny"]:
        assert name in message, name


@pytest.mark.parametrize("blocks, ok", [((-4,), True), ((3,), True), ((-5,), False), ((4,), False), ((0, -4), False),
                                        ((-1, -2, -3, -4), True)])
def test_blocks_must_exist_in_the_backbone(tiny_backbone, blocks, ok):
    if ok:
        assert DetectorConfig(**{**TINY, "blocks": blocks}).blocks == blocks
    else:
        with pytest.raises(ConfigError, match="blocks"):
            DetectorConfig(**{**TINY, "blocks": blocks})


def test_blocks_range_follows_the_backbones_depth():  # the default backbone (ViT-S/14) has 12 blocks: -12..11
    assert DetectorConfig(blocks=(-12, 11)).blocks == (-12, 11)
    with pytest.raises(ConfigError, match="out of range for dinov2_vits14 \\(12 blocks"):
        DetectorConfig(blocks=(12,))


@pytest.mark.parametrize("crop", [14, 28, 392, 448])
def test_crop_must_be_a_multiple_of_the_patch_size(crop):
    assert DetectorConfig(resize=448, crop=crop).grid == (crop // 14, crop // 14)
    with pytest.raises(ConfigError, match=f"crop \\({crop + 7}\\) must be a multiple of the ViT patch size 14"):
        DetectorConfig(resize=460, crop=crop + 7)
