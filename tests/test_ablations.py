"""The ablations as functions of scored train-good and test images, and their summaries."""

import numpy as np
import pytest

from structcore.detector import DetectorConfig
from structcore.evaluation.ablations import (
    Ablations, Collected, Variant, calibration, components, coreset_summary, descriptor_on, distances, lambdas,
    layer_sets, ordered, refit,
)
from structcore.scoring import CalibrationRecord
from structcore.structure import COMPONENTS, DISTANCES, StructCalibration, descriptor

CONFIG = DetectorConfig()


def _record(seed: int, n: int = 12) -> tuple[CalibrationRecord, np.ndarray]:
    rng = np.random.default_rng(seed)
    maps = rng.gamma(2.0, 1.0, (n, 20, 20)).astype(np.float32)
    grids = rng.gamma(2.0, 1.0, (n, 5, 5)).astype(np.float32)
    base = maps.reshape(n, -1).max(1)
    phi = descriptor(maps, COMPONENTS, 0.01)
    rec = CalibrationRecord(ids=np.arange(n), base=base, phi_map=phi, phi_grid=descriptor(grids, COMPONENTS, 0.01),
                            scores={})
    return rec, maps


def test_refit_is_structcalibration_fit_on_the_maps():
    train, maps = _record(0)
    test, test_maps = _record(1, 7)
    for comps, dist, lam in ((("std", "topk", "tv"), "mahalanobis", None), (("tv", "std"), "cosine", 0.1)):
        ref = StructCalibration.from_maps(maps, train.base, comps, 0.01, distance=dist, lam=lam)
        got, scores = refit(train, test, CONFIG, components=comps, distance=dist, lam=lam)
        assert np.allclose(got.mu, ref.mu) and np.allclose(got.sigma, ref.sigma) and got.components == comps
        assert got.lam == pytest.approx(ref.lam)
        expected = ref.scores(test_maps, test.base)
        for s in ("base", "struct", "hybrid"):
            assert np.allclose(scores[s], expected[s])


def test_variants_of_each_ablation():
    train, _ = _record(0)
    test, _ = _record(1, 7)
    _, default = refit(train, test, CONFIG)
    comp = components(train, test, CONFIG)
    assert list(comp) == ["std", "topk", "tv", "std+topk", "std+tv", "topk+tv", "std+topk+tv"]
    assert np.array_equal(comp["std+topk+tv"].scores["hybrid"], default["hybrid"]) and comp["std"].lam is None
    assert not np.array_equal(comp["std"].scores["hybrid"], default["hybrid"])
    dist = distances(train, test, CONFIG)
    assert list(dist) == list(DISTANCES) and np.array_equal(dist["mahalanobis"].scores["struct"], default["struct"])
    lam = lambdas(train, test, CONFIG, (0.05, 0.2))
    assert list(lam) == ["auto", "0.05", "0.2"] and lam["0.05"].lam == 0.05
    assert np.allclose(lam["0.2"].scores["hybrid"], test.base + 0.2 * default["struct"])
    on = descriptor_on(train, test, CONFIG)
    assert np.array_equal(on["map"].scores["hybrid"], default["hybrid"])
    grid_train = CalibrationRecord(train.ids, train.base, train.phi_grid, train.phi_map, {})
    grid_test = CalibrationRecord(test.ids, test.base, test.phi_grid, test.phi_map, {})
    assert np.array_equal(on["grid"].scores["hybrid"], refit(grid_train, grid_test, CONFIG)[1]["hybrid"])
    held = Variant({"hybrid": np.zeros(7)}, 0.5)
    cal = calibration(train, test, test, held, CONFIG)
    assert list(cal) == ["in-sample", "leave-one-out", "held-out"] and cal["held-out"] is held
    assert np.array_equal(cal["in-sample"].scores["hybrid"], default["hybrid"])


def test_collected_summary_and_coreset_summary():
    labels = np.array([0, 0, 1, 1])
    c = Collected()
    good = {"base": np.array([0, 1, 2, 3.0]), "struct": np.array([3, 2, 1, 0.0]), "hybrid": np.array([0, 1, 2, 3.0])}
    bad = {"base": np.array([0, 3, 1, 2.0]), "struct": good["struct"], "hybrid": np.array([0, 3, 1, 2.0])}
    c.add("lambda", "a", {"auto": Variant(good, 0.25)}, labels)
    c.add("lambda", "b", {"auto": Variant(bad, 0.75)}, labels)
    c.add("components", "a", {"std": Variant(good)}, labels)
    summary = c.summary(0.01)
    m = summary["lambda"]["variants"]["auto"]["mean"]
    assert m["hybrid"]["auroc"] == pytest.approx(0.75) and m["hybrid_auroc_std"] == pytest.approx(0.25)
    assert m["lambda"] == 0.5 and summary["lambda"]["coreset_ratio"] == 0.01
    assert summary["lambda"]["variants"]["auto"]["categories"]["b"]["lambda"] == 0.75
    assert "lambda" not in summary["components"]["variants"]["std"]["mean"]
    assert summary["components"]["variants"]["std"]["categories"]["a"]["struct"]["auroc"] == 0.0
    assert list(ordered({"lambda": 1, "coreset": 2, "components": 3})) == ["components", "lambda", "coreset"]

    image = {s: {"auroc": 0.9, "ap": 0.8, "f1_max": 0.7} for s in ("base", "struct", "hybrid")}
    block = {"categories": {"a": {"image": image, "pixel": None, "bank_size": 5}},
             "mean": {"image": image, "pixel": None}}
    cs = coreset_summary({"0.01": block}, {"0.01": 0.01}, {"0.01": 1.5})
    v = cs["variants"]["0.01"]
    assert v["coreset_ratio"] == 0.01 and v["categories"]["a"]["bank_size"] == 5 and v["mean"]["fit_s"] == 1.5
    assert v["mean"]["hybrid_auroc_std"] == 0.0


def test_layer_sets():
    assert layer_sets(Ablations(layers=True), 4) == [(-1,), (-2,), (-3,), (-4,)]
    assert len(layer_sets(Ablations(layers=True), 24)) == 12
    assert layer_sets(Ablations(layer_sets=((-1, -3), (-2,))), 12) == [(-1, -3), (-2,)]
    assert layer_sets(Ablations(layers=True, layer_sets=((-2,), (-1, -2))), 2) == [(-1,), (-2,), (-1, -2)]
    assert not Ablations().any and Ablations(layer_sets=((-1,),)).any and not Ablations(layers=True).on_scores
