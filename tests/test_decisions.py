"""Thresholds a line can change without refitting, per-run overrides, and folding good images back in."""

import csv
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from structcore import load_model
from structcore.cli import main

TINY = ["--backbone", "tiny", "--resize", "64", "--crop", "56", "--blocks", "-1", "-2", "--projection-dim", "16",
        "--coreset-ratio", "0.25", "--precision", "fp32", "--quiet"]


def _order_statistic(values, rate):
    """Smallest sorted value whose exceedance chance for one more exchangeable value, (n + 1 - k) / (n + 1),
    is at most ``rate``; the largest value when none is."""
    v = np.sort(values)
    n = len(v)
    return float(next((v[k - 1] for k in range(1, n + 1) if (n + 1 - k) / (n + 1) <= rate + 1e-12), v[-1]))


def _entry(model):
    return json.loads((model / "manifest.json").read_text())["categories"]["widget"]


@pytest.fixture
def fitted(synthetic_mvtec, tiny_backbone, tmp_path):
    model = tmp_path / "model"
    assert main(["fit", "--data", str(synthetic_mvtec), "--categories", "widget", "--out", str(model),
                 "--no-feature-cache", *TINY]) == 0
    return model


def test_threshold_command_rederives_from_the_stored_scores_and_sets_values(fitted, capsys):
    entry = _entry(fitted)
    assert entry["threshold_calibration"]["method"] == "leave-one-out" and entry["threshold_calibration"]["images"] == 8
    stored = load_file(fitted / entry["file"])
    for rate in (0.2, 0.5):
        assert main(["threshold", "--model", str(fitted), "--false-reject-rate", str(rate)]) == 0
        entry = _entry(fitted)
        for s in ("base", "struct", "hybrid"):
            assert entry["thresholds"][s] == _order_statistic(stored[f"threshold_scores_{s}"], rate)
        assert entry["pixel_threshold"] == _order_statistic(stored["threshold_scores_pixel"], rate)
    assert "before" in capsys.readouterr().out
    assert main(["threshold", "--model", str(fitted), "--value", "0.123", "--score", "pixel"]) == 0
    entry = _entry(fitted)
    assert entry["pixel_threshold"] == 0.123 and entry["threshold_calibration"]["set_by"]["pixel"] == "value"
    assert entry["threshold_calibration"]["set_by"]["hybrid"] == "rate"
    assert load_model(fitted).categories_["widget"].thresholds.values["pixel"] == 0.123
    assert main(["threshold", "--model", str(fitted), "--category", "nope", "--value", "1"]) == 2
    assert "unknown category 'nope'" in capsys.readouterr().err


def test_predict_overrides_thresholds_for_one_run_only(fitted, synthetic_mvtec, tmp_path):
    before = (fitted / "manifest.json").read_bytes()
    test = synthetic_mvtec / "widget" / "test"
    rows = {}
    for name, extra in (("plain", []), ("value", ["--threshold", "0"]), ("rate", ["--false-reject-rate", "0.5"])):
        out = tmp_path / name
        assert main(["predict", "--model", str(fitted), str(test), "--out", str(out), "--category", "widget",
                     "--quiet", *extra]) == 0
        rows[name] = list(csv.DictReader(open(out / "predictions.csv")))
    assert (fitted / "manifest.json").read_bytes() == before
    assert all(r["decision"] == "reject" and float(r["hybrid_threshold"]) == 0 for r in rows["value"])
    scores = load_file(fitted / _entry(fitted)["file"])["threshold_scores_hybrid"]
    assert float(rows["rate"][0]["hybrid_threshold"]) == pytest.approx(_order_statistic(scores, 0.5), rel=1e-12)
    for r in rows["plain"]:  # normalised: 1.0 at the threshold, 0 at the median train-good score
        t, m = float(r["hybrid_threshold"]), float(np.median(scores))
        assert float(r["hybrid_normalised"]) == pytest.approx((float(r["hybrid_score"]) - m) / (t - m), rel=1e-9)
    assert main(["predict", "--model", str(fitted), str(test), "--out", str(tmp_path / "x"), "--threshold", "1",
                 "--false-reject-rate", "0.1", "--quiet"]) == 2


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # one of them differs from this CPU's auto precision
def test_update_refits_on_recorded_plus_new_images_like_a_fit_on_all(synthetic_mvtec, tiny_backbone, tmp_path, capsys,
                                                                      precision):
    tiny = [*TINY[:-3], "--precision", precision, "--quiet"]
    train = sorted((synthetic_mvtec / "widget" / "train" / "good").iterdir())
    first, more = tmp_path / "widget", tmp_path / "more"
    first.mkdir(), more.mkdir()
    for p in train[:5]:
        shutil.copy(p, first / p.name)
    for p in train[5:]:
        shutil.copy(p, more / p.name)
    model = tmp_path / "model"
    assert main(["fit", "--good", str(first), "--out", str(model), "--feature-cache", str(tmp_path / "cache"), *tiny]) == 0
    capsys.readouterr()
    assert main(["fit", "--update", "widget", "--good", str(more), "--out", str(model), "--quiet",
                 "--feature-cache", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "5 recorded + 3 new" in out and "before" in out and "after" in out
    everything = tmp_path / "all"
    shutil.copytree(first, everything)
    for p in more.iterdir():
        shutil.copy(p, everything / p.name)
    reference = tmp_path / "reference"
    assert main(["fit", "--good", str(everything), "--category", "widget", "--out", str(reference),
                 "--no-feature-cache", *tiny]) == 0
    # the update ran without --precision: the model keeps the test-time precision it was fitted with
    assert json.loads((model / "manifest.json").read_text())["precision"] == precision
    updated, fresh = load_model(model), load_model(reference)
    assert updated.categories_["widget"].train_images == [str(p) for p in sorted(first.iterdir())] + [
        str(p) for p in sorted(more.iterdir())]
    test = sorted((synthetic_mvtec / "widget" / "test").rglob("*.png"))
    assert [p.scores for p in updated.predict(test, "widget")] == [p.scores for p in fresh.predict(test, "widget")]
    # images named again are not added twice; recorded images that are gone give a clear error
    assert main(["fit", "--update", "widget", "--good", str(more), "--out", str(model), "--quiet"]) == 2
    assert "already among its train images" in capsys.readouterr().err
    before = (model / "manifest.json").read_bytes()
    (first / train[0].name).unlink()
    assert main(["fit", "--update", "widget", "--good", str(everything), "--out", str(model), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "1 of the 8 train images" in err and train[0].name in err
    assert (model / "manifest.json").read_bytes() == before


@pytest.mark.parametrize("method", ["in-sample", "k-fold"])
def test_threshold_calibration_leaves_the_scores_untouched(synthetic_mvtec, tiny_backbone, method):
    """Only the thresholds depend on the threshold calibration: mu, sigma, lambda and every score do not."""
    from structcore import Detector, DetectorConfig

    train = sorted((synthetic_mvtec / "widget" / "train" / "good").iterdir())
    test = sorted((synthetic_mvtec / "widget" / "test").rglob("*.png"))
    base = dict(backbone="tiny", resize=64, crop=56, blocks=(-1, -2), projection_dim=16, coreset_ratio=0.25)
    fits = {}
    for m in ("leave-one-out", method):
        det = Detector(DetectorConfig(**base, threshold_calibration=m), precision="fp32", progress=False)
        model = det.fit("widget", train)
        fits[m] = (det, model)
    (loo, a), (other, b) = fits["leave-one-out"], fits[method]
    assert a.calibration.lam == b.calibration.lam and np.array_equal(a.calibration.mu, b.calibration.mu)
    assert [p.scores for p in loo.predict(test, "widget")] == [p.scores for p in other.predict(test, "widget")]
    assert a.thresholds.method == "leave-one-out" and b.thresholds.method == method
    # a train image scored without its own bank entries (leave-one-out) scores at least as high as in-sample
    if method == "in-sample":
        assert (a.thresholds.scores["base"] >= b.thresholds.scores["base"] - 1e-9).all()
        assert a.thresholds.scores["base"].mean() > b.thresholds.scores["base"].mean()
