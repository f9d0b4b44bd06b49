"""The one scoring pipeline: its stages against direct computation, chunking, and its calibration."""

import numpy as np
import pytest
import torch

from structcore import DetectorConfig
from structcore.knn import MemoryBank
from structcore.maps import anomaly_maps, pool
from structcore.scoring import ScoringPipeline
from structcore.structure import COMPONENTS, StructCalibration, descriptor

CFG = DetectorConfig(backbone="tiny", resize=64, crop=56, blocks=(-1, -2), projection_dim=16, k=3)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    bank = MemoryBank(torch.from_numpy(rng.normal(size=(60, 16)).astype(np.float32)), torch.arange(60) % 6)
    feats = torch.from_numpy(rng.normal(size=(40, 16, 16)).astype(np.float32))  # 40 images, 4x4 patches
    return bank, feats


def test_stages_match_a_direct_computation(data):
    bank, feats = data
    scored = ScoringPipeline(CFG).run(bank, feats, chunk=3)
    d = torch.cdist(feats.double(), bank.entries.double()[None]) ** 2
    grids = d.topk(3, largest=False).values.mean(-1).reshape(40, 4, 4).float()
    maps = anomaly_maps(grids, (56, 56), 4.0)
    np.testing.assert_allclose(scored.grids.numpy(), grids.numpy(), rtol=1e-5)
    np.testing.assert_allclose(scored.maps, maps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scored.base, pool(maps), rtol=1e-5)
    np.testing.assert_allclose(scored.phi_map, descriptor(maps, COMPONENTS), rtol=1e-5)
    np.testing.assert_allclose(scored.phi_grid, descriptor(grids.numpy(), COMPONENTS), rtol=1e-5)
    assert scored.scores is None  # no calibration given


def test_chunking_changes_nothing_and_the_hook_sees_both_stages(data):
    bank, feats = data
    seen = []
    whole = ScoringPipeline(CFG, on_stage=lambda name, s: seen.append(name)).run(bank, feats, chunk=64)
    parts = ScoringPipeline(CFG).run(bank, feats, chunk=2, keep_maps=False)
    assert seen == ["knn", "post"] and parts.maps is None
    for field in ("base", "phi_map", "phi_grid"):
        assert np.array_equal(getattr(whole, field), getattr(parts, field)), field


def test_one_search_gives_the_in_sample_and_the_leave_one_out_scores(data):
    bank, _ = data
    own = np.arange(6)
    # each image's 16 patches sit next to its own bank entries (10 of them, six used twice)
    feats = torch.stack([bank.entries[bank.source_image == i][torch.arange(16) % 10] + 0.01 for i in own])
    pipeline = ScoringPipeline(CFG)
    in_sample, left_out = pipeline.run_in_sample_and_left_out(bank, feats, own)
    alone_in = pipeline.run(bank, feats, keep_maps=False)
    alone_out = pipeline.run(bank, feats, exclude_images=own, keep_maps=False)
    for both, alone in ((in_sample, alone_in), (left_out, alone_out)):
        np.testing.assert_allclose(both.grids.numpy(), alone.grids.numpy(), rtol=1e-6)
        np.testing.assert_allclose(both.phi_map, alone.phi_map, rtol=1e-5)
    assert (left_out.grids > in_sample.grids + 0.1).all()  # without its own entries every patch loses its nearest


@pytest.mark.parametrize("components, on", [(COMPONENTS, "map"), (("tv", "std"), "map"), (COMPONENTS, "grid")])
def test_calibration_is_exactly_structcalibration_on_the_maps(data, components, on):
    bank, feats = data
    cfg = DetectorConfig(**{**CFG.__dict__, "components": components, "descriptor_on": on})
    pipeline = ScoringPipeline(cfg)
    scored = pipeline.run(bank, feats, chunk=3)
    calibration, record = pipeline.calibrate(scored, np.arange(40))
    source = scored.maps if on == "map" else scored.grids.numpy()
    reference = StructCalibration.from_maps(source, pool(scored.maps), components, cfg.top_ratio)
    # bit for bit: the fit must not depend on how the descriptors were gathered
    assert calibration.lam == reference.lam
    assert np.array_equal(calibration.mu, reference.mu) and np.array_equal(calibration.sigma, reference.sigma)
    again = pipeline.run(bank, feats, calibration).scores
    for s in ("base", "struct", "hybrid"):
        assert np.array_equal(record.scores[s], again[s]), s
