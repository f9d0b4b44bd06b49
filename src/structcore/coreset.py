"""Approximate greedy k-center coreset (PatchCore's memory-bank subsampling).

Distances are measured in a seeded 128-d random projection of the features; the greedy loop starts
from the mean distance to 10 random points (PatchCore's approximation) and then repeatedly takes the
point farthest from everything chosen so far. Memory is O(N): never an N x N matrix.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .features import random_projection


def coreset_size(n: int, ratio: float | None = None, size: int | None = None) -> int:
    """Number of entries to keep: an absolute ``size`` or ``ratio`` of ``n`` (at least 1, at most n)."""
    if (ratio is None) == (size is None):
        raise ValueError("give exactly one of a coreset ratio or an absolute size")
    if ratio is not None and not 0 < ratio <= 1:
        raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
    if size is not None and size < 1:
        raise ValueError(f"coreset size must be at least 1, got {size}")
    wanted = size if size is not None else int(n * ratio)
    return max(1, min(n, wanted))


def greedy_coreset(
    features: torch.Tensor,
    n_select: int,
    seed: int = 42,
    proxy_dim: int = 128,
    n_starts: int = 10,
    progress: bool = False,
) -> torch.Tensor:
    """Indices (int64, in selection order) of ``n_select`` rows of ``features`` ``[N, D]`` chosen greedily."""
    n = features.shape[0]
    if n == 0:
        raise ValueError("cannot build a coreset from zero features")
    if n_select >= n:
        return torch.arange(n)
    features = features.float()
    proxy = features @ random_projection(features.shape[1], proxy_dim, seed) if features.shape[1] > proxy_dim else features
    sq_norms = (proxy * proxy).sum(1)

    def sq_dist_to(i: int) -> torch.Tensor:
        c = proxy[i]
        return (sq_norms - 2 * (proxy @ c) + sq_norms[i]).clamp_min_(0)

    generator = torch.Generator().manual_seed(seed)
    starts = torch.randperm(n, generator=generator)[: min(n_starts, n)]
    min_dist = torch.stack([sq_dist_to(int(i)) for i in starts]).mean(0)

    selected = torch.empty(n_select, dtype=torch.int64)
    for t in tqdm(range(n_select), desc="coreset", disable=not progress, leave=False):
        i = int(torch.argmax(min_dist))
        selected[t] = i
        torch.minimum(min_dist, sq_dist_to(i), out=min_dist)
        min_dist[i] = 0.0  # never pick the same row twice, whatever the rounding
    return selected
