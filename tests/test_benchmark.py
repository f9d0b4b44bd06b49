import argparse
import csv
import json
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from structcore import benchmark
from structcore.cli import benchmark as benchmark_cli
from structcore.benchmark import Ablations, pick_examples, run_benchmark
from structcore.data import Category, Sample, load_mvtec
from structcore.detector import DetectorConfig
from structcore.weights import WeightsInfo

TINY = DetectorConfig(backbone="tiny", resize=64, crop=56, blocks=(-1, -2), projection_dim=16, coreset_ratio=0.25)
INFO = WeightsInfo(name="tiny", path=None, sha256="0" * 64, source="test")
ALL = Ablations(
    components=True, distances=True, lambdas=(0.05, 0.2), layers=True, layer_sets=((-1, -3),), calibration=True,
    descriptor_on=True,
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


def _run(root, out, cache, tiny_vit, **kw):
    kw.setdefault("coreset_ratios", [0.25, 0.5])
    kw.setdefault("write_report", False)
    kw.setdefault("precision", "fp32")
    return run_benchmark(
        load_mvtec(root), out, TINY, progress=False, feature_cache=cache, backbone=(tiny_vit, INFO),
        num_workers=0, batch_size=4, dataset="mvtec", data_root=root, **kw,
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
    res = _run(synthetic_mvtec, out, tmp_path / "cache", tiny_vit)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == res
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
    assert (out / "tables.md").is_file()

    # score arrays for the figures: calibration thresholds are the train-good quantiles
    sc = json.loads((out / "scores" / "widget.json").read_text())
    for s in ("base", "struct", "hybrid"):
        assert sc["thresholds"][s] == pytest.approx(np.quantile(sc["train"][s], 0.995), rel=1e-6)
    test = sc["test"]
    assert len(test["paths"]) == len(test["labels"]) == len(test["defect_types"]) == len(test["base"]) == 6
    assert np.allclose(test["hybrid"], np.array(test["base"]) + sc["lambda"] * np.array(test["struct"]))
    assert set(test["defect_types"]) == {"good", "scratch"} and len(sc["train"]["paths"]) == 8
    z = np.load(out / "maps" / "widget.npz")
    assert z["maps"].shape == (6, 56, 56) and z["masks"].shape == (6, 56, 56) and z["images"].shape == (6, 56, 56, 3)
    assert z["masks"][z["labels"] == 1].any(axis=(1, 2)).all() and not z["masks"][z["labels"] == 0].any()
    assert np.allclose(z["base"], z["maps"].reshape(6, -1).max(1)) and z["has_mask"].all()
    assert not np.load(out / "maps" / "gadget.npz")["has_masks"]


def test_second_run_hits_the_cache_and_gives_identical_numbers(synthetic_mvtec, tiny_vit, tmp_path, counted):
    first = _run(synthetic_mvtec, tmp_path / "a", tmp_path / "cache", tiny_vit, coreset_ratios=[0.25])
    assert sum(counted) == 2 * (8 + 6) and first["feature_cache"]["misses"] == 28
    counted.clear()
    second = _run(synthetic_mvtec, tmp_path / "b", tmp_path / "cache", tiny_vit, coreset_ratios=[0.25])
    assert counted == []
    assert second["feature_cache"]["hits"] == 28 and second["feature_cache"]["extractor_calls"] == 0
    assert second["results"] == first["results"]
    a = json.loads((tmp_path / "a" / "scores" / "widget.json").read_text())
    b = json.loads((tmp_path / "b" / "scores" / "widget.json").read_text())
    assert a == b
    # without the cache the numbers are the same too
    counted.clear()
    third = _run(synthetic_mvtec, tmp_path / "c", None, tiny_vit, coreset_ratios=[0.25])
    assert sum(counted) == 28 and third["results"] == first["results"]


def test_ablations_reuse_maps_and_agree_with_the_main_results(synthetic_mvtec, tiny_vit, tmp_path):
    res = _run(synthetic_mvtec, tmp_path / "run", tmp_path / "cache", tiny_vit, ablations=ALL)
    ab = res["ablations"]
    assert list(ab) == ["components", "distances", "lambda", "layers", "coreset", "calibration", "descriptor_on"]
    assert list(ab["components"]["variants"]) == ["std", "topk", "tv", "std+topk", "std+tv", "topk+tv", "std+topk+tv"]
    assert list(ab["distances"]["variants"])[0] == "mahalanobis" and len(ab["distances"]["variants"]) == 7
    assert list(ab["lambda"]["variants"]) == ["auto", "0.05", "0.2"]
    assert list(ab["layers"]["variants"]) == ["-1", "-2", "-3", "-4", "-1,-3"]  # the tiny ViT has 4 blocks
    assert list(ab["coreset"]["variants"]) == ["0.25", "0.5"]
    assert list(ab["calibration"]["variants"]) == ["in-sample", "leave-one-out", "held-out"]
    assert list(ab["descriptor_on"]["variants"]) == ["map", "grid"]
    main = res["results"]["class_separated"]["0.25"]["categories"]
    # the default variant of each score-level ablation reproduces the fitted detector exactly
    for name, label in (("components", "std+topk+tv"), ("distances", "mahalanobis"), ("lambda", "auto"),
                        ("calibration", "in-sample"), ("descriptor_on", "map")):
        for cat, r in ab[name]["variants"][label]["categories"].items():
            for s in ("base", "struct", "hybrid"):
                assert r[s] == main[cat]["image"][s], (name, cat, s)
    for cat in main:
        assert ab["lambda"]["variants"]["0.05"]["categories"][cat]["lambda"] == 0.05
        assert ab["lambda"]["variants"]["auto"]["categories"][cat]["lambda"] == pytest.approx(main[cat]["lambda"])
    assert all(v is None or 0 <= v <= 1 for _, v in _metric_leaves(ab))
    for name in ab:
        assert (tmp_path / "run" / "tables" / f"ablation_{name}.md").is_file()
    rows = list(csv.reader(open(tmp_path / "run" / "tables" / "ablation_components_per_category.csv")))
    assert rows[0][:3] == ["Category", "Base", "{sigma_S}"] and rows[-1][0] == "Mean"


def test_pick_examples_mixes_good_and_defect_types(tmp_path):
    test = [Sample(tmp_path / f"g{i}.png", 0, "good") for i in range(10)]
    test += [Sample(tmp_path / f"a{i}.png", 1, "crack") for i in range(5)]
    test += [Sample(tmp_path / f"b{i}.png", 1, "hole") for i in range(1)]
    cat = Category("c", [], test)
    chosen = pick_examples(cat, 8)
    assert chosen == pick_examples(cat, 8) and len(chosen) == 8
    defects = [test[i].defect for i in chosen]
    assert defects.count("good") == 2 and "hole" in defects and defects.count("crack") == 5
    only_good = Category("c", [], test[:3])
    assert pick_examples(only_good, 8) == [0, 1, 2]


def test_cli_flags_and_run(synthetic_mvtec, tiny_backbone, tmp_path, monkeypatch):
    written = []
    fake_report = types.ModuleType("structcore.report")
    fake_report.write_report = lambda out: written.append(out) or out / "report.html"
    monkeypatch.setitem(sys.modules, "structcore.report", fake_report)
    parser = argparse.ArgumentParser()
    benchmark_cli.register(parser.add_subparsers(dest="command"))
    base = ["benchmark", "--data", str(synthetic_mvtec), "--out", str(tmp_path / "o")]
    args = parser.parse_args([*base, "--layer-sets", "-1,-3,-6,-9,-12", "-4", "--ablate-lambda"])
    assert args.layer_sets == [(-1, -3, -6, -9, -12), (-4,)]
    ab = benchmark_cli.ablations_from_args(args)
    assert ab.lambdas == benchmark.DEFAULT_LAMBDAS and not ab.components and ab.layer_sets == ((-1, -3, -6, -9, -12), (-4,))
    ab = benchmark_cli.ablations_from_args(parser.parse_args([*base, "--ablate-all"]))
    assert ab.components and ab.distances and ab.layers and ab.calibration and ab.descriptor_on and ab.lambdas
    args = parser.parse_args([
        *base, "--categories", "widget", "--backbone", "tiny", "--resize", "64", "--crop", "56", "--blocks", "-1", "-2",
        "--projection-dim", "16", "--coreset-ratios", "0.25", "--feature-cache", str(tmp_path / "cache"),
        "--precision", "fp32", "--quiet", "--ablate-components", "--layer-sets=-1,-2",
    ])
    args.func(args)
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["category_names"] == ["widget"] and list(res["ablations"]) == ["components", "layers", "coreset"]
    assert list(res["ablations"]["layers"]["variants"]) == ["-1,-2"]
    assert res["feature_cache"]["folder"] == str(tmp_path / "cache")
    assert written == [tmp_path / "o"]


def test_train_images_in_fit_precision_test_images_in_precision(synthetic_mvtec, tiny_vit, tiny_backbone, tmp_path):
    from structcore.detector import Detector

    res = _run(synthetic_mvtec, tmp_path / "run", tmp_path / "cache", tiny_vit, precision="bf16", coreset_ratios=[0.25])
    assert (res["precision"], res["fit_precision"]) == ("bf16", "fp32")
    det = Detector(TINY, precision="bf16", fit_precision="fp32", progress=False, batch_size=4)
    det.fit("widget", sorted((synthetic_mvtec / "widget" / "train" / "good").glob("*.png")))
    scores = json.loads((tmp_path / "run" / "scores" / "widget.json").read_text())
    expected = det.predict([Path(p) for p in scores["test"]["paths"]], "widget")
    assert np.allclose(scores["test"]["hybrid"], [p.scores["hybrid"] for p in expected], rtol=1e-5)
    _run(synthetic_mvtec, tmp_path / "run32", tmp_path / "cache", tiny_vit, coreset_ratios=[0.25])
    scores32 = json.loads((tmp_path / "run32" / "scores" / "widget.json").read_text())
    assert scores32["train"]["hybrid"] == scores["train"]["hybrid"]  # same fp32 fit
    assert not np.allclose(scores32["test"]["hybrid"], scores["test"]["hybrid"], rtol=1e-5)  # bf16 test features


def test_calibration_maps_reproduce_the_fit_in_any_chunking(synthetic_mvtec, tiny_backbone):
    from structcore.detector import Detector

    for mode in ("in-sample", "leave-one-out", "held-out"):
        det = Detector(replace(TINY, calibration=mode), precision="fp32", progress=False)
        paths = sorted((synthetic_mvtec / "widget" / "train" / "good").glob("*.png"))
        feats = det.extract(paths)
        det.fit_features("widget", feats, [str(p) for p in paths])
        whole = benchmark.calibration_maps(det, "widget", feats)
        parts = benchmark.calibration_maps(det, "widget", feats, chunk=3)
        assert np.array_equal(whole.ids, parts.ids) and np.allclose(whole.phi_map, parts.phi_map)
        assert len(whole.ids) == (2 if mode == "held-out" else 8)
        thresholds = det.categories_["widget"].calibration.thresholds
        for s in ("base", "struct", "hybrid"):
            assert np.allclose(whole.scores[s], parts.scores[s])
            assert thresholds[s] == pytest.approx(np.quantile(whole.scores[s], 0.995), rel=1e-6)


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
