import json
import os
import time

import numpy as np
import pytest
import torch

from structcore import Detector, DetectorConfig, NotFittedError
from structcore.maps import anomaly_maps, pool
from structcore.router import route_distances
from structcore.model_io import ModelFileError

TINY = dict(backbone="tiny", resize=64, crop=56, blocks=(-1, -2, -4), projection_dim=32, coreset_ratio=0.25)


def _paths(root, cat, split, sub="good"):
    return sorted((root / cat / split / sub).glob("*.png"))


def _detector(**overrides):
    return Detector(DetectorConfig(**{**TINY, **overrides}), precision="fp32", progress=False, batch_size=4)


def test_fit_predict_end_to_end(synthetic_mvtec, tiny_backbone):
    det = _detector()
    det.fit("widget", _paths(synthetic_mvtec, "widget", "train"))
    good = _paths(synthetic_mvtec, "widget", "test")
    bad = _paths(synthetic_mvtec, "widget", "test", "scratch")
    preds = det.predict(good + bad, category="widget")
    assert [p.path for p in preds] == [str(p) for p in good + bad]
    assert all(p.anomaly_map.shape == (56, 56) for p in preds)
    base = np.array([p.scores["base"] for p in preds])
    hybrid = np.array([p.scores["hybrid"] for p in preds])
    lam = det.categories_["widget"].calibration.lam
    assert np.allclose(hybrid, base + lam * np.array([p.scores["struct"] for p in preds]))
    assert np.allclose(base, [p.anomaly_map.max() for p in preds])
    # magenta squares on a grey texture must score above every good test image
    assert base[3:].min() > base[:3].max()


def test_maps_are_knn_to_bank_then_upsample_and_blur(synthetic_mvtec, tiny_backbone):
    det = _detector()
    model = det.fit("widget", _paths(synthetic_mvtec, "widget", "train"))
    paths = _paths(synthetic_mvtec, "widget", "test", "scratch")
    feats = det.extract(paths)
    d = torch.cdist(feats.double(), model.bank.double()[None]) ** 2
    grid = d.topk(5, largest=False).values.mean(-1).reshape(len(paths), 4, 4).float()
    expected = anomaly_maps(grid, (56, 56), 4.0)
    scored = det.score_features("widget", feats)
    assert np.allclose(scored.maps, expected, rtol=1e-4, atol=1e-5)
    assert np.allclose(scored.scores["base"], pool(expected))


def test_same_seed_same_scores_and_reload_is_identical(synthetic_mvtec, tiny_backbone, tmp_path):
    paths = _paths(synthetic_mvtec, "widget", "test", "scratch")
    runs = []
    for _ in range(2):
        det = _detector()
        det.fit("widget", _paths(synthetic_mvtec, "widget", "train"))
        runs.append([p.scores for p in det.predict(paths, "widget")])
    assert runs[0] == runs[1]
    det.save(tmp_path / "model")
    again = Detector.load(tmp_path / "model", progress=False)
    assert [p.scores for p in again.predict(paths, "widget")] == runs[0]
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["weights"]["sha256"] == "0" * 64
    assert manifest["categories"]["widget"]["thresholds"].keys() == {"base", "struct", "hybrid"}
    mask = os.umask(0)
    os.umask(mask)
    for f in (tmp_path / "model").iterdir():  # every file gets the mode the umask gives new files
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f


def test_train_images_go_through_the_fit_precision_and_test_images_through_the_precision(
    synthetic_mvtec, tiny_backbone, tmp_path
):
    train = _paths(synthetic_mvtec, "widget", "train")
    det = Detector(DetectorConfig(**TINY), precision="bf16", fit_precision="fp32", progress=False, batch_size=4)
    model = det.fit("widget", train)
    fp32, bf16 = det.extract(train, precision="fp32"), det.extract(train)
    assert not torch.equal(fp32, bf16)  # the two precisions really differ on this backbone
    def in_bank(features):  # which bank entries are exactly one of these features
        return (model.bank[:, None] == features.reshape(1, -1, features.shape[-1])).all(-1).any(1)

    assert in_bank(fp32).all() and not in_bank(bf16).any()  # the bank holds fp32 train features
    scored = det.score_features("widget", bf16[:2])
    assert [p.scores for p in det.predict(train[:2], "widget")] == [
        {k: float(v[i]) for k, v in scored.scores.items()} for i in range(2)
    ]
    det.save(tmp_path / "m")
    again = Detector.load(tmp_path / "m", progress=False)
    assert (again.precision, again.fit_precision) == ("bf16", "fp32")
    # a model fitted in bf16 keeps refitting (fit --add) in bf16 unless asked otherwise (the CLI passes None)
    bf16_fit = Detector(DetectorConfig(**TINY), precision="fp32", fit_precision="bf16", progress=False, batch_size=4)
    bf16_fit.fit("widget", train)
    bf16_fit.save(tmp_path / "b")
    assert Detector.load(tmp_path / "b", progress=False, fit_precision=None).fit_precision == "bf16"
    assert Detector.load(tmp_path / "b", progress=False, fit_precision="fp32").fit_precision == "fp32"


def test_adding_a_category_leaves_the_others_untouched_and_routing(synthetic_mvtec, tiny_backbone, tmp_path):
    det = _detector()
    det.fit("widget", _paths(synthetic_mvtec, "widget", "train"))
    bank_before = det.categories_["widget"].bank.clone()
    det.save(tmp_path / "m")
    det = Detector.load(tmp_path / "m", progress=False)
    det.fit("gadget", _paths(synthetic_mvtec, "gadget", "train"))
    assert torch.equal(det.categories_["widget"].bank, bank_before)
    det.save(tmp_path / "m")
    det = Detector.load(tmp_path / "m", progress=False)
    assert set(det.categories_) == {"widget", "gadget"}
    paths = _paths(synthetic_mvtec, "widget", "test", "scratch") + _paths(synthetic_mvtec, "gadget", "test", "scratch")
    routed = det.predict(paths)
    distances = route_distances(det.extract(paths), {n: m.prototypes for n, m in det.categories_.items()})
    nearest = [min(distances, key=lambda n: float(distances[n][i])) for i in range(len(paths))]
    assert [p.category for p in routed] == nearest  # routed to the category with the nearest prototypes
    for p in routed:  # and scored exactly as if that category had been given
        assert det.predict([p.path], category=p.category)[0].scores == p.scores


@pytest.mark.parametrize("mode", ["leave-one-out", "held-out"])
def test_calibration_modes(synthetic_mvtec, tiny_backbone, mode):
    det = _detector(calibration=mode)
    started = time.perf_counter()
    model = det.fit("widget", _paths(synthetic_mvtec, "widget", "train"))
    wall = time.perf_counter() - started
    ins = _detector().fit("widget", _paths(synthetic_mvtec, "widget", "train"))
    assert np.isfinite(model.calibration.lam)
    assert set(det.fit_timings_["widget"]) == {"coreset_s", "calibration_knn_s", "threshold_calibration_s"}
    assert 0 < sum(det.fit_timings_["widget"].values()) < wall  # parts of this fit, not a total of several
    # in-sample maps score train images against banks holding their own patches: lower base scores
    assert model.calibration_record.base.mean() > ins.calibration_record.base.mean()


def test_errors(synthetic_mvtec, tiny_backbone, tmp_path):
    det = _detector()
    with pytest.raises(NotFittedError, match="not fitted|no fitted"):
        det.predict(_paths(synthetic_mvtec, "widget", "test"))
    with pytest.raises(ValueError, match="at least 2"):
        det.fit("one", _paths(synthetic_mvtec, "widget", "train")[:1])
    det.fit("widget", _paths(synthetic_mvtec, "widget", "train"))
    with pytest.raises(KeyError, match="unknown category"):
        det.predict(_paths(synthetic_mvtec, "widget", "test"), category="nope")
    det.save(tmp_path / "m")
    manifest = tmp_path / "m" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["format_version"] = 99
    manifest.write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="format 99"):
        Detector.load(tmp_path / "m")
    det.save(tmp_path / "m")  # a failed load lost nothing: saving again works
    f = tmp_path / "m" / "category_000.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ModelFileError, match="category_000"):
        Detector.load(tmp_path / "m")


def test_the_coreset_selector_is_injectable(synthetic_mvtec, tiny_backbone):
    calls = []

    def first_rows(features, n_select, seed, progress=False):
        calls.append((features.shape[0], n_select, seed))
        return torch.arange(n_select)

    det = Detector(DetectorConfig(**TINY), precision="fp32", progress=False, coreset_selector=first_rows)
    paths = _paths(synthetic_mvtec, "widget", "train")
    model = det.fit("widget", paths)
    feats = det.extract(paths, precision="fp32").reshape(-1, 32)
    assert calls == [(len(feats), len(feats) // 4, 42)]  # every train patch offered, 25% kept, the config's seed
    assert torch.equal(model.bank, feats[: len(feats) // 4])


def test_a_degenerate_calibration_warns_and_is_recorded_in_the_model(synthetic_mvtec, tiny_backbone, tmp_path):
    from structcore.errors import CalibrationWarning

    det = _detector()
    two = _paths(synthetic_mvtec, "widget", "train")[:2]
    with pytest.warns(CalibrationWarning, match="category 'two': D_struct has no spread"):
        model = det.fit("two", two)
    assert model.calibration.lam == 0.0  # not std(base) / eps
    det.save(tmp_path / "m")
    entry = json.loads((tmp_path / "m" / "manifest.json").read_text())["categories"]["two"]
    assert any("lambda set to 0" in w for w in entry["warnings"]) and entry["lambda"] == 0.0
    assert Detector.load(tmp_path / "m").categories_["two"].calibration.warnings == entry["warnings"]
