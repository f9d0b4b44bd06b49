"""The report's figures (matplotlib, Agg): Figure 2 (base vs hybrid score), Figures 3-4 (qualitative) and
the seed spread (hybrid minus base I-AUROC per category over seeds, with intervals).

A decision is "reject" (anomalous) where a score is strictly greater than its threshold, as in
:class:`structcore.detector.Prediction`.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402

from ..evaluation.schema import MapFile, ReportError, ScoreFile  # noqa: E402
from ..files import atomic_write_bytes  # noqa: E402
from ..visualize import color_range, overlay  # noqa: E402

DPI = 120
GOOD_COLOR = "#1f77b4"
DEFECT_COLOR = "#d62728"
HYBRID_REJECTS_COLOR = "#ff7f0e"  # base accepts, hybrid rejects
HYBRID_ACCEPTS_COLOR = "#9467bd"  # base rejects, hybrid accepts


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


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


def score_crossover(s: ScoreFile) -> Crossover:
    """:func:`crossover_counts` of a category's test images."""
    return crossover_counts(s.test["base"], s.test["hybrid"], s.labels, s.thresholds["base"], s.thresholds["hybrid"])


def _limits(values: np.ndarray, tau: float) -> tuple[float, float]:
    v = np.concatenate([values[np.isfinite(values)], [tau]])
    lo, hi = float(v.min()), float(v.max())
    pad = 0.06 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.1
    return lo - pad, hi + pad


def zoom_top(values: np.ndarray, good: np.ndarray, train: np.ndarray, tau: float) -> float | None:
    """Upper axis limit that keeps the threshold region readable, or None where all points fit anyway.

    The scale is the distance from the 5th percentile of the train-good scores (else the good test scores)
    up to the threshold: the window ends 3 such distances above the threshold, or at the highest good test
    score if that is further (at most 6 distances), and is used only where it cuts the axis by a third.
    """
    ref = train if np.isfinite(train).any() else values[good]
    ref = ref[np.isfinite(ref)]
    if not len(ref):
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


def draw_base_vs_hybrid(ax, s: ScoreFile, fontsize: float = 8.0, zoom: bool = False) -> Crossover:
    """One Figure 2 panel. ``zoom``: axes end a few train-good spreads above the thresholds; points beyond
    are drawn hollow on the edge (the counts always cover every test image)."""
    base, hyb, labels = s.test["base"], s.test["hybrid"], s.labels
    tb, th = s.thresholds["base"], s.thresholds["hybrid"]
    counts = score_crossover(s)
    good = labels == 0
    x0, x1 = _limits(base, tb)
    y0, y1 = _limits(hyb, th)
    xs, ys = base.copy(), hyb.copy()
    clipped = np.zeros(len(base), bool)
    if zoom:
        for vals, tau, train, axis in ((xs, tb, s.train["base"], "x"), (ys, th, s.train["hybrid"], "y")):
            top = zoom_top(vals, good, train, tau)
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
    title = f"{s.category}   (n={len(base)}: {int((~good).sum())} defective)   $\\lambda$={s.lam:.3g}"
    if clipped.any():
        title += f"\nzoomed: {int(clipped.sum())} far points drawn hollow on the edge"
    ax.set_title(title, fontsize=fontsize + 1.5)
    return counts


def _legend_handles(s) -> list:
    q = f"{s.threshold_calibration}, rate {s.false_reject_rate:g}"
    return [
        Line2D([], [], ls="", marker="o", color=GOOD_COLOR, label="good (test)"),
        Line2D([], [], ls="", marker="^", color=DEFECT_COLOR, label="defective (test)"),
        Line2D([], [], ls="--", color="0.2", label=rf"$\tau_{{\mathrm{{base}}}}$ ({q} train-good)"),
        Line2D([], [], ls=":", color="0.2", lw=1.2, label=rf"$\tau_{{\mathrm{{hyb}}}}$ ({q} train-good)"),
        Patch(color=HYBRID_REJECTS_COLOR, alpha=0.3, label="base accepts, hybrid rejects"),
        Patch(color=HYBRID_ACCEPTS_COLOR, alpha=0.3, label="base rejects, hybrid accepts"),
    ]


def figure_base_vs_hybrid(s: ScoreFile, path: str | Path) -> Crossover:
    """Figure 2 for one category: test S_base (x) vs S_hyb (y), thresholds, cross-over counts; the full
    range and, where far points squeeze it, a view zoomed on the thresholds. Returns the counts shown."""
    good = s.labels == 0
    zoomable = any(zoom_top(s.test[k], good, s.train[k], s.thresholds[k]) is not None for k in ("base", "hybrid"))
    fig, axes = plt.subplots(1, 1 + zoomable, figsize=(5.6 * (1 + zoomable), 5.6), squeeze=False)
    counts = draw_base_vs_hybrid(axes[0, 0], s, fontsize=9)
    if zoomable:
        draw_base_vs_hybrid(axes[0, 1], s, fontsize=9, zoom=True)
    fig.legend(handles=_legend_handles(s), loc="lower center", ncol=3 * (1 + zoomable), fontsize=7.5,
               frameon=False)
    fig.tight_layout(rect=(0, 0.1 / (1 + zoomable), 1, 1))
    _save(fig, path)
    return counts


def _grid_shape(n: int) -> tuple[int, int]:
    ncols = min(n, max(2, math.ceil(math.sqrt(1.4 * n))))
    return math.ceil(n / ncols), ncols


def figure_2(scores: list[ScoreFile], path: str | Path, zoom: bool = True) -> Path:
    """Figure 2 with one panel per category, by default zoomed on the thresholds (far points hollow on
    the edge; :func:`figure_base_vs_hybrid` shows both views)."""
    if not scores:
        raise ReportError("Figure 2 needs the scores of at least one category")
    nrows, ncols = _grid_shape(len(scores))
    legend_cols = 6 if ncols >= 4 else 3
    legend_h = 0.35 if legend_cols == 6 else 0.6  # inches below the panels
    height = 3.8 * nrows + legend_h
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.1 * ncols, height), squeeze=False)
    for ax, s in zip(axes.flat, scores):
        draw_base_vs_hybrid(ax, s, fontsize=7.5, zoom=zoom)
    for ax in list(axes.flat)[len(scores) :]:
        ax.set_visible(False)
    fig.legend(handles=_legend_handles(scores[0]), loc="lower center", ncol=legend_cols, fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, legend_h / height, 1, 1))
    return _save(fig, path)


# -- seed spread ----------------------------------------------------------------------------------
SIGNIFICANCE_COLORS = {"gain": "#2ca02c", "loss": DEFECT_COLOR, "none": "0.35"}


def _setting_label(key: str) -> str:
    """``"0.01"`` -> ``1%``; a fixed size ``"size<N>"`` stays."""
    return key if key.startswith("size") else f"{float(key) * 100:g}%"


def figure_seed_spread(results: dict, path: str | Path) -> Path:
    """Hybrid minus base I-AUROC (points) per category and coreset setting: every seed (small dots), the
    mean with its 95% t-interval over seeds (thick bar) and the paired-bootstrap 95% interval over the test
    images averaged over seeds (thin bar); colour = significance class by DeLong's test."""
    stats, runs, seeds = results.get("statistics"), results.get("seed_results"), results.get("seeds")
    if not stats or not runs:
        raise ReportError("the seed spread needs results.json's statistics and seed_results (run the benchmark again)")
    keys = list(stats)
    names = list(stats[keys[0]]["categories"])
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(names) * len(keys) + 1.5), 4.2))
    ticks = []
    for j, key in enumerate(keys):
        for i, name in enumerate(names):
            c = stats[key]["categories"][name]
            x = i + (j - (len(keys) - 1) / 2) * width
            per_seed = [runs[str(sd)][key]["categories"][name] for sd in seeds]
            diffs = [r["image"]["hybrid"]["auroc"] - r["image"]["base"]["auroc"] for r in per_seed
                     if None not in (r["image"]["hybrid"]["auroc"], r["image"]["base"]["auroc"])]
            if not diffs:
                continue
            color = SIGNIFICANCE_COLORS.get(c.get("significance") or "none", "0.35")
            boots = [r["statistics"]["hybrid_vs_base"]["bootstrap_ci95"] for r in per_seed if r.get("statistics")]
            if boots:
                lo, hi = (100 * float(np.mean([b[k] for b in boots])) for k in (0, 1))
                ax.plot([x, x], [lo, hi], color=color, lw=1, alpha=0.7)
            m = c["hybrid_minus_base"]
            if m["ci95"] is not None:
                ax.plot([x, x], [100 * m["ci95"][0], 100 * m["ci95"][1]], color=color, lw=5, alpha=0.6,
                        solid_capstyle="butt")
            ax.scatter(x - width * (0.3 + np.linspace(0, 0.1, len(diffs))), 100 * np.array(diffs), s=10, color="k",
                       zorder=3)
            ax.scatter([x], [100 * m["mean"]], s=50, marker="D", color=color, edgecolors="k", zorder=4)
            ticks.append((x, f"{name}\n{_setting_label(key)}"))
    ax.axhline(0, color="0.5", lw=0.8, ls="--")
    ax.set_xticks([t[0] for t in ticks], [t[1] for t in ticks], fontsize=8)
    ax.set_ylabel("hybrid - base I-AUROC (points)")
    ax.set_title(f"Hybrid against base over {len(seeds)} seed{'s' if len(seeds) > 1 else ''} "
                 f"({', '.join(_setting_label(k) for k in keys)} coreset)",
                 fontsize=10)
    ax.legend(handles=[
        Line2D([], [], ls="", marker=".", color="k", label="one seed"),
        Line2D([], [], ls="", marker="D", color="0.6", markeredgecolor="k", label="mean over seeds"),
        Line2D([], [], lw=5, color="0.6", label="95% interval over seeds"),
        Line2D([], [], lw=1, color="0.6", label="95% paired bootstrap (test images)"),
        *[Patch(color=SIGNIFICANCE_COLORS[k], label=t) for k, t in
          (("gain", "significant gain"), ("none", "no significant difference"), ("loss", "significant loss"))],
    ], fontsize=7, loc="best", frameon=False, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


# -- Figures 3-4: qualitative -------------------------------------------------------------------
def _mask(m: MapFile, r: int) -> np.ndarray | None:
    return m.masks[r] if m.has_masks else None


def _truth(m: MapFile, r: int) -> str:
    if m.labels[r] == 0:
        return "good"
    kind = m.defect_types[r]
    return f"defective: {kind}" if kind and kind != "good" else "defective"


def _decisions(m: MapFile, r: int, decision: str) -> tuple[str, str]:
    """Panel title (base and hybrid score with their decisions) and its colour (red: final decision wrong)."""
    parts = []
    for k, name in (("base", "base"), ("hybrid", "hyb")):
        v = m.scores[k][r]
        parts.append(f"{name} {v:.3g} {'reject' if v > m.thresholds[k] else 'accept'}")
    wrong = (m.scores[decision][r] > m.thresholds[decision]) != (m.labels[r] > 0)
    return "\n".join(parts), DEFECT_COLOR if wrong else "black"


def _draw_mask(ax, m: MapFile, r: int):
    mask = _mask(m, r)
    if mask is not None:
        ax.imshow(mask, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(np.full(m.maps[r].shape, 0.35), cmap="gray", vmin=0, vmax=1)
        ax.text(0.5, 0.5, "no mask", ha="center", va="center", transform=ax.transAxes, color="white", fontsize=9)


def _draw_overlay(ax, m: MapFile, r: int):
    vmin, vmax = color_range(m.thresholds["base"])
    ax.imshow(overlay(Image.fromarray(m.images[r]), m.maps[r], vmin, vmax))
    mask = _mask(m, r)
    if mask is not None and mask.any():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors="white", linewidths=0.8)


def _colorbar(fig, rect, tau: float):
    vmin, vmax = color_range(tau)
    cax = fig.add_axes(rect)
    cb = fig.colorbar(plt.cm.ScalarMappable(cmap="jet", norm=plt.Normalize(vmin, vmax)), cax=cax,
                      orientation="horizontal")
    cb.ax.tick_params(labelsize=7)
    cb.ax.xaxis.set_label_position("top")
    cb.set_label(f"anomaly score (colour scale {vmin:.3g} .. {vmax:.3g} = 0.5 .. 1.5 x base threshold {tau:.3g})",
                 fontsize=7.5)


def _no_ticks(*axes):
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])


def figure_qualitative(m: MapFile, path: str | Path, decision: str = "hybrid", max_rows: int = 8) -> Path:
    """Figures 3-4 style for one category: a row per image (up to ``max_rows``): the input as the model
    saw it, the ground-truth mask (or "no mask"), and the heatmap overlay on the category's colour scale
    (:func:`visualize.color_range` of the base threshold), titled with the base and hybrid scores and
    decisions (red where the ``decision`` score disagrees with the label)."""
    rows = min(len(m.maps), max_rows)
    if rows == 0:
        raise ReportError(f"{m.category}: no maps")
    height = 2.75 * rows + 1.0
    fig, axes = plt.subplots(rows, 3, figsize=(7.2, height), squeeze=False)
    for r in range(rows):
        a_img, a_gt, a_ov = axes[r]
        a_img.imshow(m.images[r])
        p = Path(m.paths[r])
        a_img.set_title(f"{p.parent.name}/{p.name}", fontsize=7.5)
        a_img.set_ylabel(_truth(m, r), fontsize=8, color=DEFECT_COLOR if m.labels[r] > 0 else "0.2")
        a_gt.set_title("ground truth", fontsize=8)
        _draw_mask(a_gt, m, r)
        _draw_overlay(a_ov, m, r)
        title, color = _decisions(m, r, decision)
        a_ov.set_title(title, fontsize=7.5, color=color)
        _no_ticks(*axes[r])
    fig.suptitle(f"{m.category}: input (resized + center-cropped), ground truth, anomaly map", fontsize=10)
    fig.tight_layout(rect=(0, 0.75 / height, 1, 1 - 0.35 / height))
    _colorbar(fig, (0.25, 0.3 / height, 0.5, 0.12 / height), m.thresholds["base"])
    return _save(fig, path)


def figure_3(maps: list[MapFile], path: str | Path, decision: str = "hybrid", per_category: int | None = None) -> Path:
    """Figures 3-4 of the paper: a column per example, ``per_category`` defective examples per category
    (default: 1, or up to 3 where there are few categories; those with a mask first), rows: input,
    ground truth, anomaly map (each category on its own colour scale)."""
    if per_category is None:
        per_category = max(1, min(3, 6 // max(len(maps), 1)))
    columns = []
    for m in maps:
        order = sorted(range(len(m.maps)), key=lambda r: (m.labels[r] <= 0, _mask(m, r) is None, r))
        columns += [(m, r) for r in order[:per_category]]
    if not columns:
        raise ReportError("Figure 3 needs the maps of at least one test image")
    n = len(columns)
    fig, axes = plt.subplots(3, n, figsize=(1.75 * n + 0.5, 6.2), squeeze=False)
    for c, (m, r) in enumerate(columns):
        axes[0, c].imshow(m.images[r])
        _draw_mask(axes[1, c], m, r)
        _draw_overlay(axes[2, c], m, r)
        axes[0, c].set_title(f"{m.category}\n{m.defect_types[r] if m.labels[r] > 0 else 'good'}", fontsize=8)
        title, color = _decisions(m, r, decision)
        axes[2, c].set_xlabel(title, fontsize=7, color=color)
        _no_ticks(*axes[:, c])
    for row, name in enumerate(("input", "ground truth", "anomaly map")):
        axes[row, 0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
