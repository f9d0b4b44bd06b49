"""StructCore as a drop-in decision layer over another detector's anomaly maps (structcore rescore).

Expected values come from a numpy reimplementation of the paper's formulas in this file; the maps come
from an independent raw-pixel PatchCore written here (no structcore code) or from synthetic fields.
"""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from structcore import DataError, NotFittedError, StructcoreError
from structcore.cli import main
from structcore.rescore import StructCoreScorer, read_maps


# -- an independent detector and the reference formulas ------------------------------------------
def _pixel_patches(path, size=8, stride=4):
    """Raw RGB patches of an image: ``[rows*cols, size*size*3]`` and the grid side."""
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
    n = (a.shape[0] - size) // stride + 1
    return np.stack([a[r * stride : r * stride + size, c * stride : c * stride + size].ravel()
                     for r in range(n) for c in range(n)]), n


def _nn_map(query, bank, side, up=4):
    """Distance of each patch to its nearest bank patch, nearest-neighbour upsampled by ``up``."""
    d2 = (query**2).sum(1)[:, None] + (bank**2).sum(1)[None] - 2 * query @ bank.T
    grid = np.sqrt(np.maximum(d2, 0).min(1)).reshape(side, side)
    return np.kron(grid, np.ones((up, up))).astype(np.float32)


def _order_statistic(values, rate):
    """The smallest sorted value v_(k) whose exceedance chance for one more exchangeable value,
    (n + 1 - k) / (n + 1), is at most ``rate``; the largest value when none is."""
    v = np.sort(values)
    n = len(v)
    return float(next((v[k - 1] for k in range(1, n + 1) if (n + 1 - k) / (n + 1) <= rate + 1e-12), v[-1]))


def _reference(train, test, top=0.01, rate=0.01):
    """Base, struct, hybrid of the test maps and the thresholds, straight from the paper's equations."""
    def describe(maps):
        phi, base = [], []
        for m in maps:
            m = np.asarray(m, np.float64)
            h, w = m.shape
            assert float(top * h * w).is_integer(), "pick sizes where the top 1% is a whole number of pixels"
            k = int(top * h * w)
            tv = (np.abs(m[1:] - m[:-1]).sum() + np.abs(m[:, 1:] - m[:, :-1]).sum()) / (h * w)
            phi.append([m.std(), np.sort(m.ravel())[-k:].mean(), tv])
            base.append(m.max())
        return np.array(phi), np.array(base)

    phi_tr, base_tr = describe(train)
    mu, sd = phi_tr.mean(0), phi_tr.std(0)

    def dist(phi):
        return np.sqrt((((phi - mu) / (sd + 1e-6)) ** 2).sum(1))

    lam = base_tr.std() / (dist(phi_tr).std() + 1e-6)
    tr = {"base": base_tr, "struct": dist(phi_tr), "hybrid": base_tr + lam * dist(phi_tr)}
    phi_te, base_te = describe(test)
    te = {"base": base_te, "struct": dist(phi_te), "hybrid": base_te + lam * dist(phi_te)}
    return te, {s: _order_statistic(v, rate) for s, v in tr.items()}, lam


def _auroc(labels, scores):
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


def _save(folder, name, m):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / name, np.asarray(m, np.float32))


def _read_csv(path):
    return list(csv.DictReader(open(path)))


def _check_csv(rows, expected, thresholds):
    for s in ("base", "struct", "hybrid"):
        got = np.array([float(r[f"{s}_score"]) for r in rows])
        assert np.allclose(got, expected[s], rtol=1e-6, atol=1e-9), s
        assert [r[f"{s}_decision"] for r in rows] == ["reject" if v > thresholds[s] else "accept" for v in expected[s]]


# -- on maps of an independent PatchCore ------------------------------------------------------------
def test_rescore_cli_on_an_independent_detectors_maps(synthetic_mvtec, tmp_path, capsys):
    cat = synthetic_mvtec / "widget"
    train_imgs = sorted((cat / "train" / "good").glob("*.png"))
    feats = [_pixel_patches(p) for p in train_imgs]
    side = feats[0][1]
    train_maps, test_maps, labels = [], [], []
    for i, (f, _) in enumerate(feats):  # leave-one-image-out, as a train image must not find itself
        m = _nn_map(f, np.concatenate([g for j, (g, _) in enumerate(feats) if j != i]), side)
        _save(tmp_path / "train", f"{i:03d}.npy", m)
        train_maps.append(m)
    bank = np.concatenate([g for g, _ in feats])
    for sub, label in (("good", 0), ("scratch", 1)):
        for p in sorted((cat / "test" / sub).glob("*.png")):
            m = _nn_map(_pixel_patches(p)[0], bank, side)
            _save(tmp_path / "test" / sub, p.stem + ".npy", m)
            test_maps.append(m)
            labels.append(label)
    assert train_maps[0].shape == (60, 60)

    out = tmp_path / "out"
    rc = main(["rescore", "--train-maps", str(tmp_path / "train"), "--test-maps", str(tmp_path / "test"), "--out", str(out)])
    assert rc == 0
    assert "fitted on 8 train-good maps" in capsys.readouterr().out
    rows = _read_csv(out / "rescored.csv")
    assert [r["map"] for r in rows] == [f"{s}/{i:03d}.npy" for s in ("good", "scratch") for i in range(3)]
    assert [int(r["label"]) for r in rows] == labels
    expected, thresholds, lam = _reference(train_maps, test_maps)
    _check_csv(rows, expected, thresholds)
    doc = json.loads((out / "scores" / "rescored.json").read_text())
    assert doc["lambda"] == pytest.approx(lam, rel=1e-9)
    assert doc["thresholds"] == pytest.approx(thresholds, rel=1e-9)
    assert doc["test"]["labels"] == labels
    base = np.array([float(r["base_score"]) for r in rows])
    hybrid = np.array([float(r["hybrid_score"]) for r in rows])
    assert base[3:].min() > base[:3].max() and hybrid[3:].min() > hybrid[:3].max()
    with Image.open(out / "figure2_rescored.png") as im:
        assert im.format == "PNG" and min(im.size) > 100
        im.verify()


# -- on synthetic maps with a known answer ------------------------------------------------------------
SIZES = [(40, 50), (50, 50), (60, 40), (50, 40)]  # top 1% = 20, 25, 24, 20 pixels


def _field(rng, h, w):
    """A smooth random field (a few low-frequency waves in pixel units), scaled to [0, 1]."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    m = sum(np.sin(2 * np.pi * (rng.uniform(-1, 1) * x + rng.uniform(-1, 1) * y) / 30 + rng.uniform(0, 6.3)) for _ in range(4))
    return (m - m.min()) / (m.max() - m.min())


def _blob(rng, h, w):
    """One small high blob on a faint background, max exactly 1 like every smooth field."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = rng.uniform(10, h - 10), rng.uniform(10, w - 10)
    m = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 3.0**2)) + 0.05 * _field(rng, h, w)
    return m / m.max()


@pytest.fixture
def known_answer(tmp_path):
    rng = np.random.default_rng(7)
    # train maxima vary a little (so lambda_auto > 0); every test map peaks at exactly 1
    train = [rng.uniform(0.9, 1.1) * _field(rng, *SIZES[i % 4]) for i in range(24)]
    good = [_field(rng, *SIZES[(i + 1) % 4]) for i in range(6)]
    blobs = [_blob(rng, *SIZES[(i + 2) % 4]) for i in range(6)]
    for i, m in enumerate(train):
        _save(tmp_path / "train", f"{i:02d}.npy", m)
    for i, m in enumerate(good):
        _save(tmp_path / "test" / "good", f"{i:02d}.npy", m)
    for i, m in enumerate(blobs):
        _save(tmp_path / "test" / "blob", f"{i:02d}.npy", m)
    as32 = lambda maps: [np.float32(m) for m in maps]  # noqa: E731
    return tmp_path, as32(train), as32(good + blobs), np.array([0] * 6 + [1] * 6)


def test_structure_separates_what_the_max_cannot(known_answer):
    root, train, test, labels = known_answer
    assert all(m.max() == 1.0 for m in test)  # by design base cannot tell them apart
    assert main(["rescore", "--train-maps", str(root / "train"), "--test-maps", str(root / "test"),
                 "--out", str(root / "out"), "--name", "blobs"]) == 0
    rows = _read_csv(root / "out" / "rescored.csv")
    assert [r["map"].split("/")[0] for r in rows] == ["blob"] * 6 + ["good"] * 6  # sorted paths
    order = np.r_[6:12, 0:6]
    expected, thresholds, _ = _reference(train, test)
    _check_csv(rows, {s: v[order] for s, v in expected.items()}, thresholds)
    got = {s: np.array([float(r[f"{s}_score"]) for r in rows]) for s in ("base", "struct", "hybrid")}
    y = np.array([int(r["label"]) for r in rows])
    assert np.array_equal(y, labels[order])
    assert _auroc(y, got["base"]) == 0.5
    assert _auroc(y, got["struct"]) == 1.0 and _auroc(y, got["hybrid"]) == 1.0
    assert all(r["struct_decision"] == "reject" for r in rows if r["label"] == "1")
    assert (root / "out" / "figure2_blobs.png").is_file()


def _write_bad(folder, kind):
    folder.mkdir(parents=True)
    _save(folder, "000.npy", np.ones((8, 8)))
    path = folder / "bad.npy"
    if kind == "3d":
        np.save(path, np.ones((2, 3, 4), np.float32))
    elif kind == "pickle":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif kind == "nan":
        m = np.ones((8, 8), np.float32)
        m[3, 3] = np.nan
        np.save(path, m)
    elif kind == "empty-file":
        path.write_bytes(b"")
    elif kind == "empty-folder":
        (folder / "000.npy").unlink()
        return str(folder)
    return "bad.npy"


@pytest.mark.parametrize("kind", ["empty-folder", "3d", "pickle", "nan", "empty-file"])
@pytest.mark.parametrize("which", ["train", "test"])
def test_bad_maps_are_a_one_line_error(known_answer, capsys, kind, which):
    root = known_answer[0]
    bad = root / f"bad_{which}"
    named = _write_bad(bad, kind)
    train, test = (bad, root / "test") if which == "train" else (root / "train", bad)
    capsys.readouterr()
    rc = main(["rescore", "--train-maps", str(train), "--test-maps", str(test), "--out", str(root / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("structcore: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert named in err
    assert not (root / "o" / "rescored.csv").exists()


def test_labels_come_from_subfolders(tmp_path):
    for sub in ("Good", "crack", "good"):
        _save(tmp_path / "t" / sub, "a.npy", np.ones((3, 3)))
    _save(tmp_path / "t" / "crack" / "deep", "b.npy", np.ones((1, 3, 3)))  # [1, H, W] is a map too
    maps = read_maps(tmp_path / "t")
    assert [p.relative_to(tmp_path / "t").as_posix() for p in maps.paths] == ["Good/a.npy", "crack/a.npy", "crack/deep/b.npy", "good/a.npy"]
    assert maps.labels.tolist() == [0, 1, 1, 0] and maps.defect_types == ["Good", "crack", "crack", "good"]
    assert all(m.shape == (3, 3) for m in maps.maps)
    _save(tmp_path / "t", "loose.npy", np.ones((3, 3)))  # one map outside the subfolders: no labels at all
    assert read_maps(tmp_path / "t").labels is None


# -- the Python API -----------------------------------------------------------------------------------
def test_scorer_fit_score_and_options(known_answer):
    _, train, test, _ = known_answer
    scorer = StructCoreScorer().fit(train)
    expected, thresholds, lam = _reference(train, test)
    got = scorer.score(test)
    for s in ("base", "struct", "hybrid"):
        assert np.allclose(got[s], expected[s], rtol=1e-9, atol=1e-12), s
    assert scorer.thresholds_ == pytest.approx(thresholds, rel=1e-9)
    assert scorer.calibration_.lam == pytest.approx(lam, rel=1e-9)
    fixed = StructCoreScorer(lam=2.0, false_reject_rate=0.5).fit(train)
    s = fixed.score(test)
    assert np.allclose(s["hybrid"], expected["base"] + 2.0 * expected["struct"])
    assert fixed.thresholds_["hybrid"] == pytest.approx(_order_statistic(fixed.train_scores_["hybrid"], 0.5))
    assert fixed.thresholds_["hybrid"] != pytest.approx(scorer.thresholds_["hybrid"])


def test_scorer_errors_are_structcore_errors():
    scorer = StructCoreScorer()
    with pytest.raises(NotFittedError, match="fit"):
        scorer.score([np.ones((4, 4))])
    with pytest.raises(NotFittedError):
        scorer.thresholds_
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="no anomaly maps"):
        scorer.fit([])
    with pytest.raises(DataError, match="map 1"):
        scorer.fit([rng.random((4, 4)), rng.random((2, 4, 4)), rng.random((4, 4))])
    with pytest.raises(DataError, match="map 2"):
        scorer.fit([rng.random((4, 4)), rng.random((4, 4)), np.full((4, 4), np.inf)])
    fitted = StructCoreScorer().fit([rng.random((4, 4)) for _ in range(3)])
    with pytest.raises(DataError, match="map 0"):
        fitted.score([np.full((4, 4), np.nan)])
    for bad, name in ((dict(distance="cos"), "distance"), (dict(pooling="median"), "pooling"),
                      (dict(components=("std", "area")), "components"), (dict(top_ratio=0.0), "top_ratio"),
                      (dict(false_reject_rate=1.5), "false-reject rate"), (dict(lam=-1.0), "lam")):
        with pytest.raises(StructcoreError, match=name):
            StructCoreScorer(**bad)
