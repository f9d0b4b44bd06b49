import numpy as np
import pytest

from structcore.structure import DISTANCES, StructCalibration, descriptor, structural_distance


def direct_tv(S):
    h, w = S.shape
    total = 0.0
    for i in range(h):
        for j in range(w):
            if i + 1 < h:
                total += abs(S[i + 1, j] - S[i, j])
            if j + 1 < w:
                total += abs(S[i, j + 1] - S[i, j])
    return total / (h * w)


def test_descriptor_against_direct_formulas():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 12, 9))
    phi = descriptor(maps, top_ratio=0.05)
    for m, row in zip(maps, phi):
        s = np.sort(m.ravel())[::-1]
        k = max(1, int(np.floor(108 * 0.05)))
        assert row[0] == pytest.approx(np.sqrt(np.mean((s - s.mean()) ** 2)))
        assert row[1] == pytest.approx(s[:k].mean())
        assert row[2] == pytest.approx(direct_tv(m))
    assert descriptor(maps, ("tv", "std")).shape == (3, 2)
    assert np.allclose(descriptor(maps, ("tv", "std"))[:, 0], phi[:, 2])
    with pytest.raises(ValueError):
        descriptor(maps, ("max",))


def test_topk_uses_at_least_one_pixel():
    maps = np.zeros((1, 5, 5))
    maps[0, 2, 2] = 7
    assert descriptor(maps, ("topk",), top_ratio=0.01)[0, 0] == 7


def test_distances_against_numpy():
    rng = np.random.default_rng(1)
    phi, mu, sigma = rng.normal(size=(6, 3)), rng.normal(size=3), rng.random(3) + 0.1
    z = (phi - mu) / (sigma + 1e-6)
    expected = {
        "mahalanobis": np.linalg.norm(z, axis=1),
        "l1_std": np.abs(z).sum(1),
        "chebyshev_std": np.abs(z).max(1),
        "euclidean": np.linalg.norm(phi - mu, axis=1),
        "manhattan": np.abs(phi - mu).sum(1),
        "chebyshev": np.abs(phi - mu).max(1),
        "cosine": 1 - (phi @ mu) / (np.linalg.norm(phi, axis=1) * np.linalg.norm(mu)),
    }
    assert set(expected) == set(DISTANCES)
    for kind, value in expected.items():
        assert np.allclose(structural_distance(phi, mu, sigma, kind), value, atol=1e-6), kind


def test_calibration_lambda_auto():
    rng = np.random.default_rng(2)
    maps = rng.random((40, 8, 8))
    base = maps.reshape(40, -1).max(1)
    c = StructCalibration.from_maps(maps, base)
    phi = descriptor(maps)
    d = np.linalg.norm((phi - phi.mean(0)) / (phi.std(0) + 1e-6), axis=1)
    assert c.lam == pytest.approx(base.std() / (d.std() + 1e-6))
    scores = c.scores(maps, base)
    assert np.allclose(scores["struct"], d)
    assert np.allclose(scores["hybrid"], base + c.lam * d)
    fixed = StructCalibration.from_maps(maps, base, lam=0.1)
    assert fixed.lam == 0.1


def test_constant_descriptor_dimension_stays_finite():
    maps = np.ones((5, 6, 6))
    maps[:, 0, 0] = np.arange(5)  # std/topk vary, but make tv... all finite anyway
    flat = np.ones((5, 6, 6))  # every dimension has zero std
    c = StructCalibration.from_maps(flat, np.ones(5))
    s = c.scores(maps, np.ones(5))
    assert all(np.isfinite(v).all() for v in s.values())
    assert c.lam == 0.0


def test_needs_two_images():
    with pytest.raises(ValueError, match="at least 2"):
        StructCalibration.from_maps(np.ones((1, 4, 4)), np.ones(1))


# -- degenerate calibrations are detected, fall back to lambda 0 and say so --------------------------
def test_two_calibration_images_give_lambda_0_and_a_warning():
    from structcore.structure import StructCalibration

    phi = np.array([[0.1, 0.5, 0.02], [0.2, 0.7, 0.03]])
    calib = StructCalibration.fit(phi, np.array([0.4, 0.5]))
    # every Mahalanobis distance is sqrt(3): lambda_auto would be std(base) / eps = 5e4
    assert calib.lam == 0.0
    assert any("D_struct has no spread" in w and "lambda set to 0" in w for w in calib.warnings)


def test_near_identical_images_give_lambda_0_and_a_warning():
    from structcore.structure import StructCalibration

    rng = np.random.default_rng(0)
    phi = np.array([0.1, 0.5, 0.02]) + rng.normal(0, 1e-9, (10, 3))
    base = 0.4 + rng.normal(0, 1e-3, 10)
    calib = StructCalibration.fit(phi, base)
    assert calib.lam == 0.0 and any("(almost) no spread" in w for w in calib.warnings)
    other = np.array([[0.11, 0.5, 0.02]])  # a slightly different image: no 1e5 hybrid score
    assert calib.scores_from_descriptors(other, np.array([0.4]))["hybrid"][0] == pytest.approx(0.4)
    fixed = StructCalibration.fit(phi, base, lam=2.0)
    assert fixed.lam == 2.0 and any("fixed lambda 2.0" in w for w in fixed.warnings)


def test_a_healthy_calibration_has_no_warnings():
    from structcore.structure import StructCalibration

    rng = np.random.default_rng(1)
    phi = rng.uniform(0.5, 1.5, (400, 3))
    calib = StructCalibration.fit(phi, rng.uniform(0.3, 0.6, 400))
    assert calib.warnings == [] and 0 < calib.lam < 100
