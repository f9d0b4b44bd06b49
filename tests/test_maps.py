import numpy as np
import pytest
import torch
from scipy.ndimage import convolve1d

from structcore.maps import anomaly_maps, pool


def test_blur_is_a_33_tap_gaussian_with_edge_reflection():
    grid = torch.zeros(1, 4, 4)
    grid[0, 1, 2] = 1.0
    maps = anomaly_maps(grid, (56, 56), sigma=4)
    up = torch.nn.functional.interpolate(grid[:, None], size=(56, 56), mode="bilinear", align_corners=False)[0, 0].numpy()
    x = np.arange(-16, 17)
    kernel = np.exp(-(x**2) / (2 * 16.0))
    kernel /= kernel.sum()
    expected = convolve1d(convolve1d(up.astype(np.float64), kernel, axis=0, mode="reflect"), kernel, axis=1, mode="reflect")
    assert np.allclose(maps[0], expected, atol=1e-6)


def test_bilinear_upsample_without_blur_keeps_constant_and_range():
    grid = torch.rand(3, 5, 5)
    maps = anomaly_maps(grid, (70, 70), sigma=0)
    assert maps.shape == (3, 70, 70)
    assert maps.max() <= grid.max() + 1e-6 and maps.min() >= grid.min() - 1e-6
    assert np.allclose(anomaly_maps(torch.full((1, 4, 4), 2.5), (28, 28))[0], 2.5)


def test_pooling():
    m = np.arange(2 * 10 * 10, dtype=np.float32).reshape(2, 10, 10)
    assert np.array_equal(pool(m, "max"), [99, 199])
    assert np.allclose(pool(m, "mean"), [49.5, 149.5])
    assert np.allclose(pool(m, "topk", 0.05), [97, 197])  # mean of 95..99
    with pytest.raises(ValueError):
        pool(m, "median")
