import numpy as np
import pytest
from scipy import ndimage

from structcore.features import Preprocess
from structcore.regions import defect_regions, region_mask, to_original_frame


def brute_force_original(m, size, pre):
    """Per-pixel reference: map each original pixel centre into the crop frame and interpolate there."""
    width, height = size
    out = np.full((height, width), np.nan)
    for y in range(height):
        v = (y + 0.5) * pre.resize / height - pre.offset
        for x in range(width):
            u = (x + 0.5) * pre.resize / width - pre.offset
            if 0 <= u < pre.crop and 0 <= v < pre.crop:
                coords = np.array([[np.clip(v - 0.5, 0, pre.crop - 1)], [np.clip(u - 0.5, 0, pre.crop - 1)]])
                out[y, x] = ndimage.map_coordinates(m, coords, order=1)[0]
    return out


@pytest.mark.parametrize("size", [(50, 40), (28, 28), (97, 61)])
def test_original_frame_matches_per_pixel_interpolation(size):
    pre = Preprocess(resize=32, crop=28, patch_size=14)
    m = np.random.default_rng(0).random((28, 28)).astype(np.float32)
    got = to_original_frame(m, size, pre)
    want = brute_force_original(m.astype(np.float64), size, pre)
    assert got.shape == (size[1], size[0])
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.nanmax(np.abs(got - want)) < 1e-5
    assert np.isnan(got).any()  # the crop drops a border of every image of this geometry


def test_identity_geometry_returns_the_map():
    pre = Preprocess(resize=28, crop=28, patch_size=14)
    m = np.random.default_rng(1).random((28, 28)).astype(np.float32)
    assert np.allclose(to_original_frame(m, (28, 28), pre), m, atol=1e-6)


def test_regions_of_two_blobs_in_original_pixels():
    m = np.zeros((40, 60), np.float32)
    m[5:10, 3:8] = 2.0  # 25 pixels
    m[20:30, 40:52] = 1.0  # 120 pixels
    m[22, 45] = 3.0
    m[0:40, 0] = np.nan  # unseen column never counts
    regions = defect_regions(m, 0.5)
    assert [(r.x0, r.y0, r.x1, r.y1, r.area) for r in regions] == [(40, 20, 52, 30, 120), (3, 5, 8, 10, 25)]
    assert [r.peak for r in regions] == [3.0, 2.0]
    assert region_mask(m, 0.5).sum() == 145
    assert defect_regions(m, 5.0) == []


def test_diagonal_pixels_are_one_region():
    m = np.zeros((5, 5))
    m[0, 0] = m[1, 1] = m[2, 2] = 1
    (r,) = defect_regions(m, 0.5)
    assert (r.x0, r.y0, r.x1, r.y1, r.area) == (0, 0, 3, 3, 3)
