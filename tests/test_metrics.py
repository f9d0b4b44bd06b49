"""Tests of structcore.metrics against slow brute-force implementations written here, independently."""

import tracemalloc

import numpy as np
import pytest
from scipy import ndimage

from structcore.metrics import (
    aupro,
    auroc,
    average_precision,
    f1_max,
    image_metrics,
    pixel_metrics,
)


# -- brute-force references ----------------------------------------------------------------------------
def bf_auroc(labels, scores):
    """Count every (positive, negative) pair: 1 if the positive scores higher, 1/2 on a tie."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    total = 0.0
    for p in s[y]:
        for n in s[~y]:
            total += 1.0 if p > n else (0.5 if p == n else 0.0)
    return total / (y.sum() * (~y).sum())


def _pr_points(labels, scores):
    """(precision, recall) at each distinct score, thresholds from high to low, predicted = score >= t."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    pts = []
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        tp = int(np.sum(pred & y))
        fp = int(np.sum(pred & ~y))
        pts.append((tp / (tp + fp), tp / y.sum()))
    return pts


def bf_ap(labels, scores):
    ap, r_prev = 0.0, 0.0
    for p, r in _pr_points(labels, scores):
        ap += (r - r_prev) * p
        r_prev = r
    return ap


def bf_f1(labels, scores):
    best = 0.0
    for p, r in _pr_points(labels, scores):
        if p + r > 0:
            best = max(best, 2 * p * r / (p + r))
    return best


def bf_aupro(masks, maps, limit=0.3, structure=np.ones((3, 3))):
    """Loop over every distinct threshold; PRO over labelled regions, FPR over defect-free pixels."""
    masks = [np.asarray(m, bool) for m in masks]
    maps = [np.asarray(a, np.float64) for a in maps]
    regions = []  # (image index, boolean region mask)
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=structure)
        for r in range(1, n + 1):
            regions.append((i, lab == r))
    n_ok = sum(int((~m).sum()) for m in masks)
    values = sorted(set(np.concatenate([a.ravel() for a in maps]).tolist()), reverse=True)
    xs, ys = [0.0], [0.0]
    for t in values:
        fp = sum(int(((a >= t) & ~m).sum()) for a, m in zip(maps, masks))
        pro = np.mean([(maps[i][reg] >= t).mean() for i, reg in regions])
        xs.append(fp / n_ok)
        ys.append(pro)
    area = 0.0
    for k in range(1, len(xs)):
        x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_lim) / 2
    return area / limit


def random_case(rng, n, levels=None):
    y = rng.random(n) < rng.uniform(0.1, 0.9)
    y[0], y[1] = True, False
    s = rng.normal(size=n) + y * rng.uniform(0, 2)
    if levels:
        s = np.round(s * levels / 3)  # integer-quantised: many ties
    return y.astype(int), s


def random_pixels(rng, n=3, h=9, w=11, levels=6, empty_image=True):
    masks = np.zeros((n, h, w), bool)
    for i in range(n - 1 if empty_image else n):
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, h - 2), rng.integers(0, w - 2)
            masks[i, r:r + rng.integers(1, 4), c:c + rng.integers(1, 4)] = True
        masks[i] |= rng.random((h, w)) < 0.05  # speckles: single pixels, diagonal neighbours
    maps = rng.normal(size=(n, h, w)) + masks * rng.uniform(0.5, 2)
    maps = np.round(maps * levels / 3).astype(np.float32)
    return masks, maps


# -- image-level: hand-made cases ------------------------------------------------------------------------
def test_known_values():
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert auroc(y, s) == pytest.approx(0.75)
    assert average_precision(y, s) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert f1_max(y, s) == pytest.approx(0.8)  # threshold 0.35: TP 2, FP 1, FN 0
    assert image_metrics(y, s) == pytest.approx({"auroc": 0.75, "ap": 5 / 6, "f1_max": 0.8})


def test_perfect_and_reversed():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    assert image_metrics(y, s) == {"auroc": 1.0, "ap": 1.0, "f1_max": 1.0}
    assert auroc(y, -s) == 0.0
    # reversed: positives at the bottom; AP = 1/2 * 1/4 + 1/2 * 2/5
    assert average_precision(y, -s) == pytest.approx(0.5 * 0.25 + 0.5 * 0.4)


def test_all_tied():
    y, s = [0, 1, 0, 1], [0.5] * 4
    assert auroc(y, s) == 0.5
    assert average_precision(y, s) == 0.5  # one threshold: recall 1, precision 1/2
    assert f1_max(y, s) == pytest.approx(2 / 3)


def test_ties_grouped_not_ordered():
    # A positive tied with a negative must not be ranked above it (tie broken by position would give 1.0).
    y, s = [0, 1, 0], [0.2, 0.5, 0.5]
    assert auroc(y, s) == 0.75
    assert average_precision(y, s) == 0.5
    assert f1_max(y, s) == pytest.approx(2 / 3)
    assert auroc([1, 0, 0], [0.5, 0.5, 0.2]) == 0.75


def test_types_and_python_floats():
    y = np.array([False, True, True, False])
    s = np.array([1, 3, 2, 2], dtype=np.int64)
    out = image_metrics(y, s)
    assert all(type(v) is float and 0 <= v <= 1 for v in out.values())
    assert out["auroc"] == pytest.approx(bf_auroc(y, s))
    assert auroc(y.tolist(), s.astype(np.float32).tolist()) == out["auroc"]


def test_errors():
    with pytest.raises(ValueError, match="one class|both classes"):
        auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="one class|both classes"):
        auroc([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="one class|both classes"):
        image_metrics([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="positive"):
        average_precision([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0 and 1"):
        auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="empty"):
        auroc([], [])
    # only positives: AP and F1 are defined (precision 1 everywhere)
    assert average_precision([1, 1], [0.1, 0.2]) == 1.0
    assert f1_max([1, 1], [0.1, 0.2]) == 1.0


# -- image-level: random cases vs brute force -------------------------------------------------------------
@pytest.mark.parametrize("levels", [None, 2, 5])
def test_random_vs_bruteforce(levels):
    rng = np.random.default_rng(0 if levels is None else levels)
    for _ in range(40):
        y, s = random_case(rng, int(rng.integers(2, 60)), levels)
        assert auroc(y, s) == pytest.approx(bf_auroc(y, s), abs=1e-12)
        assert average_precision(y, s) == pytest.approx(bf_ap(y, s), abs=1e-12)
        assert f1_max(y, s) == pytest.approx(bf_f1(y, s), abs=1e-12)


def test_chunked_loop_matches(monkeypatch):
    """The distinct-threshold loop in small chunks (tie groups straddling chunk borders) gives the same."""
    import structcore.metrics as M

    rng = np.random.default_rng(7)
    y, s = random_case(rng, 300, levels=4)
    ref = image_metrics(y, s)
    monkeypatch.setattr(M, "_CHUNK", 3)
    assert image_metrics(y, s) == pytest.approx(ref, abs=1e-12)
    assert ref == pytest.approx({"auroc": bf_auroc(y, s), "ap": bf_ap(y, s), "f1_max": bf_f1(y, s)}, abs=1e-12)
    masks, maps = random_pixels(rng, n=3, h=10, w=10, levels=3)
    ref = pixel_metrics(masks, maps)
    monkeypatch.setattr(M, "_CHUNK", 2)
    assert pixel_metrics(masks, maps) == pytest.approx(ref, abs=1e-12)


def test_against_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    for levels in (None, 3):
        for _ in range(20):
            y, s = random_case(rng, int(rng.integers(2, 80)), levels)
            assert auroc(y, s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
            assert average_precision(y, s) == pytest.approx(metrics.average_precision_score(y, s), abs=1e-12)


# -- AUPRO: hand-made cases ------------------------------------------------------------------------------
def test_aupro_eight_connectivity():
    # Mask: (0,0) and the pair (1,1)-(1,2), touching (0,0) only diagonally.
    # 8-connected: ONE region of 3 pixels; 4-connected: regions {(0,0)} and {(1,1),(1,2)}.
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 1, 2] = True
    amap = np.full((1, 4, 4), 0.5)
    amap[0, 0, 0] = 1.0
    amap[0, 1, 1] = amap[0, 1, 2] = 0.0
    # t=1: FPR 0, PRO 1/3 (4-conn: (1 + 0)/2); t=0.5: FPR 1; t=0: PRO 1. Area to 0.3 = 0.3 * 1/3.
    assert aupro(mask, amap) == pytest.approx(1 / 3)
    assert bf_aupro(mask, amap) == pytest.approx(1 / 3)
    assert bf_aupro(mask, amap, structure=None) == pytest.approx(0.5)  # what 4-connectivity would give


def test_aupro_interpolation_at_limit():
    # 10 defect-free pixels: one at 0.9, four at 0.5, five at 0.1; one defect pixel at 0.5 (tied).
    amap = np.array([[[0.5, 0.9, 0.5, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1]]])
    mask = np.zeros_like(amap, bool)
    mask[0, 0, 0] = True
    # curve: (0,0) (0.1,0) (0.5,1) (1,1); at FPR 0.3 the PRO is interpolated to 0.5:
    # area = 0.2 * (0 + 0.5) / 2 = 0.05, normalised 0.05 / 0.3 = 1/6.
    assert aupro(mask, amap) == pytest.approx(1 / 6)
    assert bf_aupro(mask, amap) == pytest.approx(1 / 6)
    # limit exactly on a curve point: (0.5 - 0.1) * 1/2 / 0.5 = 0.4
    assert aupro(mask, amap, fpr_limit=0.5) == pytest.approx(0.4)
    assert aupro(mask, amap, fpr_limit=1.0) == pytest.approx((0.4 * 0.5 + 0.5) / 1.0)


def test_aupro_perfect_and_worst():
    rng = np.random.default_rng(1)
    masks, _ = random_pixels(rng)
    perfect = masks.astype(np.float32) + rng.random(masks.shape).astype(np.float32) * 0.5
    assert aupro(masks, perfect) == pytest.approx(1.0, abs=1e-12)  # PRO is a float sum of region shares
    assert pixel_metrics(masks, perfect) == pytest.approx({"auroc": 1.0, "ap": 1.0, "f1_max": 1.0, "aupro": 1.0},
                                                          abs=1e-12)
    assert aupro(masks, -perfect) == 0.0  # no defect pixel above threshold until FPR = 1


def test_aupro_regions_weighted_equally_and_good_images():
    # Image 0: a 1-pixel region (score 1) and a 4-pixel region (scores 0); image 1: defect-free.
    masks = np.zeros((2, 5, 5), bool)
    maps = np.zeros((2, 5, 5))
    masks[0, 0, 0] = True
    maps[0, 0, 0] = 1.0
    masks[0, 3:5, 3:5] = True
    maps[0, 3:5, 3:5] = -1.0
    # PRO(t=1) = mean(1, 0) = 1/2 (pixel-wise it would be 1/5); FPR jumps to 1 at t=0.
    assert aupro(masks, maps) == pytest.approx(0.5)
    # A defect-free image with high scores moves the FPR only: 10 of the 20 + 25 defect-free pixels.
    maps[1, :2, :] = 2.0
    # t=2: FPR 10/45 (> 0) with PRO 0; t=1: PRO 1/2; then FPR 1.
    x = 10 / 45
    assert aupro(masks, maps) == pytest.approx((0.3 - x) * 0.5 / 0.3)
    assert aupro(masks, maps) == pytest.approx(bf_aupro(masks, maps))


# -- AUPRO and pixel metrics: random cases vs brute force -------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_aupro_random_vs_bruteforce(seed):
    rng = np.random.default_rng(100 + seed)
    masks, maps = random_pixels(rng, n=3, h=8, w=10, levels=int(rng.integers(2, 12)))
    for limit in (0.3, 0.05, 1.0):
        assert aupro(masks, maps, limit) == pytest.approx(bf_aupro(masks, maps, limit), abs=1e-9)
    out = pixel_metrics(masks, maps)
    y, s = masks.ravel(), maps.ravel()
    assert out["auroc"] == pytest.approx(bf_auroc(y, s), abs=1e-12)
    assert out["ap"] == pytest.approx(bf_ap(y, s), abs=1e-12)
    assert out["f1_max"] == pytest.approx(bf_f1(y, s), abs=1e-12)
    assert out["aupro"] == pytest.approx(bf_aupro(masks, maps), abs=1e-9)


def test_aupro_continuous_scores_vs_bruteforce():
    rng = np.random.default_rng(5)
    masks, _ = random_pixels(rng, n=2, h=7, w=8)
    maps = rng.normal(size=masks.shape) + masks  # float64, no ties
    assert aupro(masks, maps) == pytest.approx(bf_aupro(masks, maps), abs=1e-9)


def test_pixel_lists_of_different_sizes():
    rng = np.random.default_rng(9)
    m1, a1 = random_pixels(rng, n=1, h=6, w=9, empty_image=False)
    m2, a2 = random_pixels(rng, n=1, h=8, w=5, empty_image=False)
    masks, maps = [m1[0], m2[0]], [a1[0], a2[0].astype(np.float64)]
    out = pixel_metrics(masks, maps)
    assert out["aupro"] == pytest.approx(bf_aupro(masks, maps), abs=1e-9)
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([a.ravel() for a in maps])
    assert out["auroc"] == pytest.approx(bf_auroc(y, s), abs=1e-12)


def test_pixel_errors():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, 1, 1] = True
    maps = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="mask 1 .*map 1"):
        pixel_metrics([masks[0], masks[1]], [maps[0], maps[1, :3]])
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        pixel_metrics(masks[0], maps[0])
    with pytest.raises(ValueError, match="2 masks but 1 maps"):
        aupro(masks, maps[:1])
    with pytest.raises(ValueError, match="defect region"):
        aupro(np.zeros((2, 4, 4), bool), maps)
    with pytest.raises(ValueError, match="defect-free"):
        aupro(np.ones((2, 4, 4), bool), maps)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(masks, maps, fpr_limit=0)
    bad = maps.copy()
    bad[1, 2, 2] = np.nan
    with pytest.raises(ValueError, match="map 1 contains NaN"):
        pixel_metrics(masks, bad)
    with pytest.raises(ValueError, match="mask 0"):
        pixel_metrics(masks.astype(np.uint8) * 255, maps)


def test_pixel_metrics_large_input_bounded_memory():
    """60 maps of 392 x 392 (9.2 M pixels): runs, sane values, peak numpy allocations well bounded."""
    rng = np.random.default_rng(0)
    n, h = 60, 392
    masks = np.zeros((n, h, h), bool)
    for i in range(0, n, 2):
        r, c = rng.integers(0, h - 60, size=2)
        masks[i, r:r + 50, c:c + 40] = True
    maps = rng.random((n, h, h), dtype=np.float32)
    maps[masks] += 0.5
    tracemalloc.start()
    try:
        out = pixel_metrics(masks, maps)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert set(out) == {"auroc", "ap", "f1_max", "aupro"}
    assert all(type(v) is float and 0.0 <= v <= 1.0 for v in out.values())
    # scores U(0,1), +0.5 on defects: AUROC = P(U + 0.5 > V) = 7/8; for FPR f <= 0.3 the threshold is
    # 1 - f and every region's PRO is 0.5 + f, so AUPRO = (0.3 * 0.5 + 0.3**2 / 2) / 0.3 = 0.65
    assert out["auroc"] == pytest.approx(0.875, abs=0.003)
    assert out["aupro"] == pytest.approx(0.65, abs=0.01)
    # the float32 maps are 37 MB: a float64 copy, a pixel-wide argsort or int64 cumulative counts
    # would each exceed this bound on their own
    assert peak < 2.0 * maps.nbytes, f"peak {peak / 2**20:.0f} MiB for {maps.nbytes / 2**20:.0f} MiB of maps"
