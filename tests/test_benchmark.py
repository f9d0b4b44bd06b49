"""``run_benchmark`` end to end on the synthetic data set with the tiny ViT: results.json, tables, score and
map files, the feature cache, the ablations and the ``structcore benchmark`` command."""

import argparse
import csv
import json
import os
import stat
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from structcore.cli import benchmark as benchmark_cli
from structcore.data import load_mvtec
from structcore.detector import Detector, DetectorConfig
from structcore.evaluation import (
    DEFAULT_LAMBDAS, Ablations, BenchmarkOptions, Runtime, load_categories, run_benchmark,
)
from structcore.evaluation.protocol import FeatureSource, Setup, Timer, fit_category
from structcore.feature_cache import FeatureCache
from structcore.weights import WeightsInfo

TINY = DetectorConfig(backbone="tiny", resize=64, crop=56, blocks=(-1, -2), projection_dim=16, coreset_ratio=0.25)
INFO = WeightsInfo(name="tiny", path=None, sha256="0" * 64, source="test")
ALL = Ablations(
    components=True, distances=True, lambdas=(0.05, 0.2), layers=True, layer_sets=((-1, -3), (-1, -2), (-1,)),
    calibration=True, descriptor_on=True,
)


@pytest.fixture
def counted(tiny_vit, monkeypatch):
    """Counts backbone forward passes (images) on the tiny ViT."""
    calls = []
    original = type(tiny_vit).patch_tokens

    def patch_tokens(self, images, blocks):
        calls.append(len(images))
        return original(self, images, blocks)

    monkeypatch.setattr(type(tiny_vit), "patch_tokens", patch_tokens)
    return calls


def _run(root, out, cache, tiny_vit, coreset_ratios=(0.25, 0.5), ablations=None, precision="fp32"):
    return run_benchmark(
        load_mvtec(root), out, config=TINY,
        options=BenchmarkOptions(coreset_ratios=coreset_ratios, ablations=ablations or Ablations(), feature_cache=cache,
                                 dataset="mvtec", data_root=root, write_report=False),
        runtime=Runtime(precision=precision, progress=False, num_workers=0, batch_size=4),
        backbone=(tiny_vit, INFO),
    )


def _metric_leaves(obj, path=""):
    """Every (path, value) whose key is a metric name."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}.{k}"
            if k in ("auroc", "ap", "f1_max", "aupro", "routing_accuracy", "routing_accuracy_overall"):
                yield p, v
            else:
                yield from _metric_leaves(v, p)


def test_results_schema_tables_and_figure_files(synthetic_mvtec, tiny_vit, tmp_path):
    out = tmp_path / "run"
    old = os.umask(0o027)
    try:
        res = _run(synthetic_mvtec, out, tmp_path / "cache", tiny_vit)
    finally:
        os.umask(old)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == res
    for f in [out / "results.json", out / "tables.md", *out.glob("*/*")]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o640, f
    assert res["weights"] == {"name": "tiny", "sha256": "0" * 64, "source": "test", "origin": ""}
    assert res["precision"] == "fp32" and res["coreset_ratios"] == [0.25, 0.5] and res["primary"] == "0.25"
    assert list(res["ablations"]) == ["coreset"]  # several ratios: the 1% vs 10% table comes for free
    assert list(res["ablations"]["coreset"]["variants"]) == ["0.25", "0.5"]
    assert res["config"]["crop"] == 56 and res["category_names"] == ["gadget", "widget"]
    # headline: class-separated at the primary ratio, with routing accuracy from the routed setting
    routed = res["results"]["routed"]["0.25"]
    assert res["categories"]["widget"]["image"] == res["results"]["class_separated"]["0.25"]["categories"]["widget"]["image"]
    assert res["categories"]["widget"]["routing_accuracy"] == routed["categories"]["widget"]["routing_accuracy"]
    assert res["mean"]["routing_accuracy"] == routed["mean"]["routing_accuracy"]
    for key in ("wall_s", "feature_extraction_s", "fit_s", "scoring_s", "metrics_s"):
        assert res["timings"][key] >= 0
    for setting in ("class_separated", "routed"):
        assert set(res["results"][setting]) == {"0.25", "0.5"}
        for block in res["results"][setting].values():
            assert set(block["categories"]) == {"widget", "gadget"}
            for name, r in [*block["categories"].items(), ("mean", block["mean"])]:
                assert set(r["image"]) == {"base", "struct", "hybrid"}
                for s in r["image"].values():
                    assert set(s) == {"auroc", "ap", "f1_max"}
                    assert all(v is not None for v in s.values())
            # gadget has no ground_truth folder: pixel metrics absent, never zeros
            assert block["categories"]["gadget"]["pixel"] is None
            assert set(block["categories"]["widget"]["pixel"]) == {"auroc", "ap", "f1_max", "aupro"}
            assert block["mean"]["pixel"] == block["categories"]["widget"]["pixel"]
            assert block["mean"]["n_categories_pixel"] == 1
            means = block["mean"]["image"]["hybrid"]["auroc"]
            per = [c["image"]["hybrid"]["auroc"] for c in block["categories"].values()]
            assert means == pytest.approx(np.mean(per))
        for block in res["results"]["routed"].values():
            for name, c in block["categories"].items():
                assert sum(c["routed_to"].values()) == c["n_test"] == 6
                assert c["routing_accuracy"] == pytest.approx(c["routed_to"].get(name, 0) / 6)
    for block in res["results"]["class_separated"].values():
        assert block["mean"]["routing_accuracy"] is None and "routed_to" not in block["categories"]["widget"]
    leaves = list(_metric_leaves(res["results"]))
    assert leaves and all(v is None or 0.0 <= v <= 1.0 for _, v in leaves)
    # the widget's magenta defects are easy even for a random ViT
    assert res["results"]["class_separated"]["0.25"]["categories"]["widget"]["image"]["base"]["auroc"] == 1.0

    # tables in the paper's Tables 8-11 layout, percent with one decimal
    for stem in ("class_separated_coreset25", "class_separated_coreset50", "routed_coreset25", "routed_coreset50"):
        rows = list(csv.reader(open(out / "tables" / f"{stem}.csv")))
        assert rows[0][:4] == ["Category", "Base AUROC", "Base AP", "Base F1-max"]
        assert rows[0][10:14] == ["P-AUROC", "P-AP", "P-F1-max", "AUPRO"]
        assert [r[0] for r in rows[1:]] == ["gadget", "widget", "Mean"]
        assert rows[1][10:14] == ["", "", "", ""] and rows[2][1] == "100.0"
        assert "| Mean |" in (out / "tables" / f"{stem}.md").read_text()
    assert "Routing acc." in (out / "tables" / "routed_coreset25.md").read_text()
    md = (out / "tables.md").read_text()
    # 4 main, 2 over seeds (one seed here), 2 decision tables, 1 ablation
    assert md.count("### ") == 9 and "### ablation: coreset" in md and "### decisions at the stored thresholds" in md
    assert md.count("### class-separated, coreset 0.25, 1 seed (42)") == 1

    # score arrays for the figures: the thresholds are order statistics of the threshold-calibration scores
    sc = json.loads((out / "scores" / "widget.json").read_text())
    assert sc["threshold_calibration"] == "leave-one-out" and sc["false_reject_rate"] == 0.01
    for s in ("base", "struct", "hybrid"):
        assert sc["thresholds"][s] == max(sc["threshold_train"][s])  # 8 images: too few for 1%, so the largest
    test = sc["test"]
    assert len(test["paths"]) == len(test["labels"]) == len(test["defect_types"]) == len(test["base"]) == 6
    assert len(test["routed_to"]) == len(test["routed"]["hybrid"]) == 6
    assert np.allclose(test["hybrid"], np.array(test["base"]) + sc["lambda"] * np.array(test["struct"]))
    assert set(test["defect_types"]) == {"good", "scratch"} and len(sc["train"]["paths"]) == 8

    # decisions at the stored thresholds, counted again from the score file
    block = res["results"]["class_separated"]["0.25"]
    dec = block["categories"]["widget"]["decisions"]
    assert list(dec) == ["leave-one-out", "k-fold", "in-sample"]
    labels, hybrid = np.array(test["labels"]), np.array(test["hybrid"])
    own = dec["leave-one-out"]["hybrid"]
    assert own["threshold"] == sc["thresholds"]["hybrid"]
    assert own["good_rejected"]["count"] == int(((hybrid > own["threshold"]) & (labels == 0)).sum())
    assert own["defective_accepted"]["count"] == int(((hybrid <= own["threshold"]) & (labels == 1)).sum())
    assert own["good_rejected"]["n"] + own["defective_accepted"]["n"] == 6
    pooled = block["mean"]["decisions"]["k-fold"]["hybrid"]["good_rejected"]
    assert pooled["count"] == sum(c["decisions"]["k-fold"]["hybrid"]["good_rejected"]["count"]
                                  for c in block["categories"].values())
    # a train image scored without its own bank entries scores higher than with them
    assert dec["in-sample"]["base"]["threshold"] < dec["leave-one-out"]["base"]["threshold"]
    assert sc["thresholds"] == res["results"]["class_separated"]["0.25"]["categories"]["widget"]["thresholds"]
    z = np.load(out / "maps" / "widget.npz")
    assert z["maps"].shape == (6, 56, 56) and z["masks"].shape == (6, 56, 56) and z["images"].shape == (6, 56, 56, 3)
    assert z["masks"][z["labels"] == 1].any(axis=(1, 2)).all() and not z["masks"][z["labels"] == 0].any()
    assert np.allclose(z["base"], z["maps"].reshape(6, -1).max(1)) and z["has_mask"].all()
    assert np.array_equal(z["hybrid"], np.array(test["hybrid"])[z["indices"]])
    assert not np.load(out / "maps" / "gadget.npz")["has_masks"]


def test_second_run_hits_the_cache_and_gives_identical_numbers(synthetic_mvtec, tiny_vit, tmp_path, counted):
    first = _run(synthetic_mvtec, tmp_path / "a", tmp_path / "cache", tiny_vit, coreset_ratios=(0.25,))
    assert sum(counted) == 2 * (8 + 6) and first["feature_cache"]["misses"] == 28
    counted.clear()
    second = _run(synthetic_mvtec, tmp_path / "b", tmp_path / "cache", tiny_vit, coreset_ratios=(0.25,))
    assert counted == []
    assert second["feature_cache"]["hits"] == 28 and second["feature_cache"]["extractor_calls"] == 0
    assert second["results"] == first["results"]
    a = json.loads((tmp_path / "a" / "scores" / "widget.json").read_text())
    b = json.loads((tmp_path / "b" / "scores" / "widget.json").read_text())
    assert a == b
    # without the cache the numbers are the same too
    counted.clear()
    third = _run(synthetic_mvtec, tmp_path / "c", None, tiny_vit, coreset_ratios=(0.25,))
    assert sum(counted) == 28 and third["results"] == first["results"]


def test_ablations_reuse_maps_and_agree_with_the_main_results(synthetic_mvtec, tiny_vit, tmp_path):
    res = _run(synthetic_mvtec, tmp_path / "run", tmp_path / "cache", tiny_vit, ablations=ALL)
    ab = res["ablations"]
    assert list(ab) == ["components", "distances", "lambda", "layers", "coreset", "calibration", "descriptor_on"]
    assert list(ab["components"]["variants"]) == ["std", "topk", "tv", "std+topk", "std+tv", "topk+tv", "std+topk+tv"]
    assert list(ab["distances"]["variants"])[0] == "mahalanobis" and len(ab["distances"]["variants"]) == 7
    assert list(ab["lambda"]["variants"]) == ["auto", "0.05", "0.2"]
    # the tiny ViT has 4 blocks; a chosen set that is a single block already swept is not repeated
    assert list(ab["layers"]["variants"]) == ["-1", "-2", "-3", "-4", "-1,-3", "-1,-2"]
    assert list(ab["coreset"]["variants"]) == ["0.25", "0.5"]
    assert list(ab["calibration"]["variants"]) == ["in-sample", "leave-one-out", "held-out"]
    assert list(ab["descriptor_on"]["variants"]) == ["map", "grid"]
    main = res["results"]["class_separated"]["0.25"]["categories"]
    # the default variant of each ablation (for layers: the model's own blocks) reproduces the fitted detector exactly
    for name, label in (("components", "std+topk+tv"), ("distances", "mahalanobis"), ("lambda", "auto"),
                        ("calibration", "in-sample"), ("descriptor_on", "map"), ("layers", "-1,-2")):
        for cat, r in ab[name]["variants"][label]["categories"].items():
            for s in ("base", "struct", "hybrid"):
                assert r[s] == main[cat]["image"][s], (name, cat, s)
    # the model's own block set also reproduces its pixel metrics (widget has masks, gadget none)
    own = ab["layers"]["variants"]["-1,-2"]["categories"]
    assert own["widget"]["pixel"] == pytest.approx(main["widget"]["pixel"]) and "pixel" not in own["gadget"]
    assert ab["layers"]["variants"]["-3"]["categories"]["widget"]["pixel"] != main["widget"]["pixel"]
    for cat in main:
        assert ab["lambda"]["variants"]["0.05"]["categories"][cat]["lambda"] == 0.05
        assert ab["lambda"]["variants"]["auto"]["categories"][cat]["lambda"] == pytest.approx(main[cat]["lambda"])
        assert "lambda" not in ab["components"]["variants"]["std"]["categories"][cat]
    assert ab["coreset"]["variants"]["0.5"]["categories"]["widget"]["bank_size"] == \
        res["results"]["class_separated"]["0.5"]["categories"]["widget"]["bank_size"]
    assert all(v is None or 0 <= v <= 1 for _, v in _metric_leaves(ab))
    for name in ab:
        assert (tmp_path / "run" / "tables" / f"ablation_{name}.md").is_file()
    rows = list(csv.reader(open(tmp_path / "run" / "tables" / "ablation_components_per_category.csv")))
    assert rows[0][:3] == ["Category", "Base", "{sigma_S}"] and rows[-1][0] == "Mean"


@pytest.mark.parametrize("mode", ["in-sample", "leave-one-out", "held-out"])
def test_calibration_ablation_rescoring_reproduces_the_fit(synthetic_mvtec, tiny_vit, mode):
    """The calibration ablation scores the train images again; for the model's own mode that is the fit's record."""
    (cat,) = load_mvtec(synthetic_mvtec, ["widget"])
    cfg = replace(TINY, calibration=mode)
    kwargs = dict(precision="fp32", progress=False, batch_size=4, num_workers=0)
    timer = Timer()
    features = FeatureSource(tiny_vit, INFO.sha256, cfg, FeatureCache(None), timer, precision="fp32",
                             fit_precision="fp32", device=Detector(cfg, **kwargs).device, batch_size=4, num_workers=0,
                             progress=False, compile=False)
    setup = Setup({"0.25": Detector(cfg, **kwargs)}, features, timer, lambda c: Detector(c, **kwargs),
                  calibration_ablation=True)
    fitted = fit_category(setup, cat)
    record = fitted.calibration
    assert len(record.ids) == (2 if mode == "held-out" else 8)
    assert (fitted.reference is setup.detectors["0.25"]) == (mode != "held-out")
    assert fitted.held_out.config.calibration == "held-out"
    rescored = {"in-sample": fitted.in_sample, "leave-one-out": fitted.leave_one_out}.get(mode)
    if rescored is not None:
        assert np.array_equal(rescored.base, record.base) and np.array_equal(rescored.phi_map, record.phi_map)
        assert np.array_equal(rescored.phi_grid, record.phi_grid)
    assert not np.array_equal(fitted.in_sample.base, fitted.leave_one_out.base)  # own patches excluded: higher
    assert (fitted.leave_one_out.base >= fitted.in_sample.base).all()


def test_load_categories(synthetic_mvtec, tmp_path):
    assert [c.name for c in load_categories("mvtec", root=synthetic_mvtec, categories=["widget"])] == ["widget"]
    (folder,) = load_categories("folder", good=synthetic_mvtec / "widget" / "train" / "good",
                                defective=[synthetic_mvtec / "widget" / "test" / "scratch"], name="w")
    assert folder.name == "w" and len(folder.train) == 8 and len(folder.test) == 3
    with pytest.raises(ValueError, match="--good"):
        load_categories("folder")
    with pytest.raises(ValueError, match="--data ROOT"):
        load_categories("visa")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_categories("mvtec-ad", root=synthetic_mvtec)


def test_cli_flags_and_run(synthetic_mvtec, tiny_backbone, tmp_path, monkeypatch, capsys):
    import structcore.report

    written = []
    monkeypatch.setattr(structcore.report, "write_report", lambda out: written.append(out) or out / "report.html")
    parser = argparse.ArgumentParser()
    benchmark_cli.register(parser.add_subparsers(dest="command"))
    base = ["benchmark", "--data", str(synthetic_mvtec), "--out", str(tmp_path / "o")]
    args = parser.parse_args([*base, "--layer-sets", "-1,-3,-6,-9,-12", "-4", "--ablate-lambda"])
    assert args.layer_sets == [(-1, -3, -6, -9, -12), (-4,)]
    ab = benchmark_cli.ablations_from_args(args)
    assert ab.lambdas == DEFAULT_LAMBDAS and not ab.components and ab.layer_sets == ((-1, -3, -6, -9, -12), (-4,))
    ab = benchmark_cli.ablations_from_args(parser.parse_args([*base, "--ablate-all"]))
    assert ab.components and ab.distances and ab.layers and ab.calibration and ab.descriptor_on and ab.lambdas
    assert benchmark_cli.ablations_from_args(parser.parse_args([*base, "--ablate-lambda", "0.3"])).lambdas == (0.3,)
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--layer-sets", "-1,x"])
    args = parser.parse_args([
        *base, "--categories", "widget", "--backbone", "tiny", "--resize", "64", "--crop", "56", "--blocks", "-1", "-2",
        "--projection-dim", "16", "--coreset-ratios", "0.25", "--feature-cache", str(tmp_path / "cache"),
        "--precision", "fp32", "--quiet", "--ablate-components", "--layer-sets=-1,-2", "--k", "3",
        "--seeds", "3", "4", "--bootstrap-resamples", "100",
    ])
    args.func(args)
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["seeds"] == [3, 4] and res["config"]["seed"] == 3 and res["bootstrap_resamples"] == 100
    assert res["seed_results"]["3"]["0.25"]["categories"]["widget"]["statistics"]["n_resamples"] == 100
    assert res["category_names"] == ["widget"] and list(res["ablations"]) == ["components", "layers", "coreset"]
    assert list(res["ablations"]["layers"]["variants"]) == ["-1,-2"]
    assert res["feature_cache"]["folder"] == str(tmp_path / "cache") and res["config"]["k"] == 3
    assert written == [tmp_path / "o"]
    assert "StructCore benchmark, coreset 0.25" in capsys.readouterr().out
    assert parser.parse_args(base).seeds is None  # default: the config's one seed


def test_train_images_in_fit_precision_test_images_in_precision(synthetic_mvtec, tiny_vit, tiny_backbone, tmp_path):
    res = _run(synthetic_mvtec, tmp_path / "run", tmp_path / "cache", tiny_vit, precision="bf16", coreset_ratios=(0.25,))
    assert (res["precision"], res["fit_precision"]) == ("bf16", "fp32")
    det = Detector(TINY, precision="bf16", fit_precision="fp32", progress=False, batch_size=4)
    det.fit("widget", sorted((synthetic_mvtec / "widget" / "train" / "good").glob("*.png")))
    scores = json.loads((tmp_path / "run" / "scores" / "widget.json").read_text())
    expected = det.predict([Path(p) for p in scores["test"]["paths"]], "widget")
    assert np.allclose(scores["test"]["hybrid"], [p.scores["hybrid"] for p in expected], rtol=1e-5)
    _run(synthetic_mvtec, tmp_path / "run32", tmp_path / "cache", tiny_vit, coreset_ratios=(0.25,))
    scores32 = json.loads((tmp_path / "run32" / "scores" / "widget.json").read_text())
    assert scores32["train"]["hybrid"] == scores["train"]["hybrid"]  # same fp32 fit
    assert not np.allclose(scores32["test"]["hybrid"], scores["test"]["hybrid"], rtol=1e-5)  # bf16 test features


def test_a_second_benchmark_into_the_same_out_waits_or_fails_naming_the_holder(synthetic_mvtec, tmp_path, capsys):
    import subprocess
    import time

    from structcore.cli import main

    out = tmp_path / "o"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from structcore.files import exclusive\n"
         "with exclusive(sys.argv[1]):\n    print('held', flush=True); time.sleep(30)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.perf_counter()
        code = main(["benchmark", "--data", str(synthetic_mvtec), "--out", str(out), "--backbone", "tiny",
                     "--resize", "64", "--crop", "56", "--blocks", "-1", "-2", "--projection-dim", "16",
                     "--no-feature-cache", "--no-report", "--quiet", "--lock-timeout", "0"])
        assert code == 2 and time.perf_counter() - started < 20
        assert f"pid {holder.pid}" in capsys.readouterr().err
        assert not (out / "results.json").exists()
    finally:
        holder.kill()
        holder.wait()


def _seeded(root, out, cache, tiny_vit, seeds, resamples=200, ablations=Ablations()):
    return run_benchmark(
        load_mvtec(root), out, config=TINY,
        options=BenchmarkOptions(coreset_ratios=(0.25,), seeds=seeds, bootstrap_resamples=resamples, ablations=ablations,
                                 feature_cache=cache, dataset="mvtec", data_root=root, write_report=False),
        runtime=Runtime(precision="fp32", progress=False, num_workers=0, batch_size=4),
        backbone=(tiny_vit, INFO),
    )


def test_seeds_refit_on_cached_features_and_aggregate(synthetic_mvtec, tiny_vit, tmp_path, counted):
    """Each further seed refits and rescores from the cache (no forward pass); its results equal a
    one-seed run with that seed; the statistics are the mean, std and median p over the seeds' results."""
    cache = tmp_path / "cache"
    res = _seeded(synthetic_mvtec, tmp_path / "multi", cache, tiny_vit, (5, 6, 7))
    passes = len(counted)
    single = _seeded(synthetic_mvtec, tmp_path / "one", cache, tiny_vit, (6,))
    assert len(counted) == passes  # the second run read every feature from the cache
    assert res["seeds"] == [5, 6, 7] and single["seeds"] == [6] and res["config"]["seed"] == 5
    runs = res["seed_results"]
    assert runs["5"] == res["results"]["class_separated"]
    assert runs["6"] == single["results"]["class_separated"]
    assert runs["5"]["0.25"]["categories"]["widget"]["lambda"] != runs["6"]["0.25"]["categories"]["widget"]["lambda"]
    stats = res["statistics"]["0.25"]["categories"]["widget"]
    rows = [runs[s]["0.25"]["categories"]["widget"] for s in ("5", "6", "7")]
    for score in ("base", "struct", "hybrid"):
        vals = [r["image"][score]["auroc"] for r in rows]
        assert np.isclose(stats["image"][score]["auroc"]["mean"], np.mean(vals))
        assert np.isclose(stats["image"][score]["auroc"]["std"], np.std(vals, ddof=1))
        lo, hi = stats["image"][score]["auroc"]["ci95"]
        assert 0 <= lo <= np.mean(vals) <= hi <= 1
    assert np.isclose(stats["pixel"]["aupro"]["mean"], np.mean([r["pixel"]["aupro"] for r in rows]))
    ps = [r["statistics"]["hybrid_vs_base"]["delong_p"] for r in rows]
    assert stats["delong_p_by_seed"] == ps and stats["delong_p"] == np.median(ps)
    assert stats["significance"] in ("gain", "none", "loss")
    assert res["statistics"]["0.25"]["categories"]["gadget"]["pixel_full"] is None
    mean = res["statistics"]["0.25"]["mean"]["image"]["hybrid"]["auroc"]["mean"]
    assert np.isclose(mean, np.mean([runs[s]["0.25"]["mean"]["image"]["hybrid"]["auroc"] for s in ("5", "6", "7")]))
    assert (tmp_path / "multi" / "tables" / "seeds_coreset25.md").is_file()
    from structcore.report import write_report

    page = write_report(tmp_path / "multi").read_text()
    assert (tmp_path / "multi" / "figures" / "seed_spread.png").is_file() and "Over seeds" in page
    assert "could not be drawn" not in page


def test_full_frame_pixel_metrics_leave_out_the_unseen_border(synthetic_mvtec, tiny_vit, tmp_path):
    """P-AUROC and P-AP in the original frame equal the metrics over every seen pixel of every image,
    computed directly from the saved crop-frame maps mapped back (NaN border dropped) and the original masks."""
    from structcore.evaluation.schema import maps_file, read_maps
    from structcore.images import load_mask
    from structcore.metrics import auroc, average_precision
    from structcore.regions import to_original_frame

    res = _seeded(synthetic_mvtec, tmp_path / "run", tmp_path / "cache", tiny_vit, (5,))
    full = res["results"]["class_separated"]["0.25"]["categories"]["widget"]["pixel_full"]
    cat = next(c for c in load_mvtec(synthetic_mvtec) if c.name == "widget")
    saved = read_maps(maps_file(tmp_path / "run", "widget"))
    assert list(saved.indices) == list(range(len(cat.test)))  # every test map was kept
    values, truth, unseen, total = [], [], 0, 0
    for s, m in zip(cat.test, saved.maps):
        f = to_original_frame(m, (64, 64), TINY.preprocess)
        mask = load_mask(s.mask_path) if s.mask_path else np.zeros((64, 64), bool)
        seen = ~np.isnan(f)
        values.append(f[seen])
        truth.append(mask[seen])
        unseen, total = unseen + (~seen).sum(), total + f.size
    values, truth = np.concatenate(values), np.concatenate(truth)
    assert np.isclose(full["auroc"], auroc(truth, values))
    assert np.isclose(full["ap"], average_precision(truth, values))
    assert np.isclose(full["not_seen"], unseen / total) and 0 < full["not_seen"] < 1
    assert 0 <= full["aupro"] <= 1


def test_score_ablations_are_repeated_for_every_seed(synthetic_mvtec, tiny_vit, tmp_path):
    """Each variant's spread over seeds is made of what a one-seed run with each seed gives; the
    calibration ablation (primary seed only) gets none."""
    cache = tmp_path / "cache"
    ablations = Ablations(components=True, lambdas=(0.1,), calibration=True, layer_sets=((-1,), (-1, -2)))
    res = _seeded(synthetic_mvtec, tmp_path / "multi", cache, tiny_vit, (5, 6), resamples=50, ablations=ablations)
    other = _seeded(synthetic_mvtec, tmp_path / "one", cache, tiny_vit, (6,), resamples=50, ablations=ablations)
    assert res["ablations"]["components"]["seeds"] == [5, 6] and "seeds" not in res["ablations"]["calibration"]
    for name, label in (("components", "std+tv"), ("lambda", "0.1"), ("lambda", "auto")):
        spread = res["ablations"][name]["variants"][label]["seeds"]
        for cat in ("widget", "gadget"):
            vals = [run["ablations"][name]["variants"][label]["categories"][cat]["hybrid"]["auroc"] for run in (res, other)]
            assert np.isclose(spread["categories"][cat]["hybrid"]["mean"], np.mean(vals))
            assert np.isclose(spread["categories"][cat]["hybrid"]["std"], np.std(vals, ddof=1))
        means = [run["ablations"][name]["variants"][label]["mean"]["base"]["auroc"] for run in (res, other)]
        assert np.isclose(spread["mean"]["base"]["mean"], np.mean(means))
    spread = res["ablations"]["layers"]["variants"]["-1"]["seeds"]
    vals = [run["ablations"]["layers"]["variants"]["-1"]["categories"]["widget"]["pixel"]["aupro"] for run in (res, other)]
    assert np.isclose(spread["categories"]["widget"]["pixel"]["aupro"]["mean"], np.mean(vals))
    assert np.isclose(spread["mean"]["pixel"]["aupro"]["mean"], np.mean(vals))  # widget alone has masks
    assert "pixel" not in spread["categories"]["gadget"]
    table = (tmp_path / "multi" / "tables" / "ablation_components.md").read_text()
    assert " ± " in table and "over seeds 5, 6" in table
