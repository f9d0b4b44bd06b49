"""Approximate greedy k-center coreset (PatchCore's memory-bank subsampling).

Distances are measured in a seeded 128-d random projection of the features; the greedy loop starts
from the mean distance to 10 random points (PatchCore's approximation) and then repeatedly takes the
point farthest from everything chosen so far. Memory is O(N): never an N x N matrix.

The plain loop streams all N proxy rows once per selection, so a 10% bank of a large category costs
minutes. For large N the *screened* loop makes the same selections several times faster:

1. One low-precision matrix product (bf16 where the CPU has bf16 matrix instructions, else fp32), in
   chunks of points, gives ``dot~(p, c) - |c|^2 (1 - err) / 2`` for every point p and each of the
   ``_BATCH`` points c of largest running distance, the likely next centers (the norm rides along as
   an extra input column).
2. A point is *live* when that value reaches its slack for some center of the batch; the rest provably
   keep their running minimum for the whole batch (slack only grows), so only the live points' columns
   are kept and scanned, and the largest running distance among the others is a constant.
3. While the exact argmax is one of the batch, it is selected, and only the live points whose value for
   it reaches their slack get their distance recomputed, with the plain loop's fp32 expression.

The rounding bound: bf16 inputs (the norm column included) and output give an error of at most
``0.005 (|p|^2 + |c|^2)`` in the dot product (unit roundoff 2^-8, Cauchy-Schwarz); the slack allows
``0.015 (|p|^2 + |c|^2)``, i.e. points with ``d~ <= min_dist + 0.03 (|p|^2 + |c|^2)`` are recomputed.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .features import cpu_has_bf16_matmul, random_projection

_SCREEN_MIN_N = 4096  # below this the plain loop is already fast
_BATCH = 128  # candidate centers screened per low-precision product
_ALIGN = 16  # gathered rows are padded to a multiple of this, so MKL reduces them like the full product
_ERR = {torch.bfloat16: 0.03, torch.float32: 1e-4}


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
    screened: bool | None = None,
) -> torch.Tensor:
    """Indices (int64, in selection order) of ``n_select`` rows of ``features`` ``[N, D]`` chosen greedily.

    ``screened`` picks the loop (default: screened for large problems on the CPU); both give the same
    selections.
    """
    n = features.shape[0]
    if n == 0:
        raise ValueError("cannot build a coreset from zero features")
    if n_select >= n:
        return torch.arange(n)
    features = features.float()
    proxy = features @ random_projection(features.shape[1], proxy_dim, seed) if features.shape[1] > proxy_dim else features
    proxy = proxy.contiguous()
    sq_norms = (proxy * proxy).sum(1)
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randperm(n, generator=generator)[: min(n_starts, n)]
    min_dist = torch.stack([_sq_dist(proxy, sq_norms, int(i)) for i in starts]).mean(0)
    if screened is None:
        screened = n >= _SCREEN_MIN_N and n_select >= _BATCH and proxy.device.type == "cpu"
    loop = _screened_loop if screened else _plain_loop
    with tqdm(total=n_select, desc="coreset", disable=not progress, leave=False) as bar:
        return loop(proxy, sq_norms, min_dist, n_select, bar)


def _sq_dist(proxy: torch.Tensor, sq_norms: torch.Tensor, i: int) -> torch.Tensor:
    """Squared distance of every row to row ``i`` (the expression both loops must share)."""
    return (sq_norms - 2 * (proxy @ proxy[i]) + sq_norms[i]).clamp_min_(0)


def _plain_loop(proxy, sq_norms, min_dist, n_select, bar) -> torch.Tensor:
    selected = torch.empty(n_select, dtype=torch.int64)
    for t in range(n_select):
        i = int(torch.argmax(min_dist))
        selected[t] = i
        torch.minimum(min_dist, _sq_dist(proxy, sq_norms, i), out=min_dist)
        min_dist[i] = 0.0  # never pick the same row twice, whatever the rounding
        bar.update()
    return selected


def _screened_loop(proxy, sq_norms, min_dist, n_select, bar) -> torch.Tensor:
    n, dim = proxy.shape
    low = torch.bfloat16 if cpu_has_bf16_matmul() else torch.float32
    err = _ERR[low]
    # a center c's row of the product is  dot~(p, c) - sq_c (1 - err) / 2  (the last two input rows: 1, 0)
    columns = torch.zeros(dim + 2, n, dtype=low)
    columns[:dim] = proxy.T
    columns[dim] = 1
    dist = min_dist.numpy()  # shares memory with min_dist, so topk sees every update
    sq = sq_norms.numpy()
    # recompute j for center c when  sq_j - 2 dot~ + sq_c <= dist_j + err (sq_j + sq_c),
    # i.e. when  dot~ - sq_c (1 - err) / 2 >= slack_j  with  slack_j = (sq_j (1 - err) - dist_j) / 2
    sq_shrunk = sq * (1 - err)
    slack = (sq_shrunk - dist) / 2
    gathered = torch.zeros(n + _ALIGN, dim)
    row_in_batch = np.full(n, -1, np.int64)
    selected = np.empty(n_select, np.int64)
    t, i = 0, int(np.argmax(dist))
    while t < n_select:
        batch = torch.topk(min_dist, min(_BATCH, n)).indices
        if not bool((batch == i).any()):
            batch[-1] = i
        batch_np = batch.numpy()
        centers = torch.zeros(len(batch_np), dim + 2, dtype=low)
        centers[:, :dim] = proxy[batch]
        centers[:, dim] = torch.from_numpy(-sq_shrunk[batch_np] / 2)
        live, product = _live_points(centers, columns, slack, batch_np)
        row_in_batch[batch_np] = np.arange(len(batch_np))
        # the batch only ever touches live points; the rest keep their distances (and their maximum)
        outside = dist.copy()
        outside[live] = -np.inf
        out_i = int(np.argmax(outside))
        out_max = outside[out_i]
        dist_live, slack_live = dist[live], slack[live]
        slack_live_t = torch.from_numpy(slack_live)
        near = torch.empty(len(live), dtype=torch.bool)
        while t < n_select and row_in_batch[i] >= 0:
            selected[t] = i
            t += 1
            torch.ge(product[row_in_batch[i]], slack_live_t, out=near)
            loc = np.flatnonzero(near.numpy())
            idx_np = live[loc]
            idx = torch.from_numpy(idx_np)
            k = len(idx_np)
            torch.index_select(proxy, 0, idx, out=gathered[:k])
            dots = (gathered[: -(-k // _ALIGN) * _ALIGN] @ proxy[i])[:k]
            d = (sq_norms[idx] - 2 * dots + sq_norms[i]).clamp_min_(0).numpy()
            np.minimum(dist_live[loc], d, out=d)
            dist_live[loc] = d
            slack_live[loc] = (sq_shrunk[idx_np] - d) / 2
            at = np.searchsorted(live, i)
            dist_live[at] = 0.0
            slack_live[at] = sq_shrunk[i] / 2
            best = int(np.argmax(dist_live))  # the first maximum, like np.argmax over all points
            best_max, best_i = dist_live[best], int(live[best])
            i = best_i if best_max > out_max or (best_max == out_max and best_i < out_i) else out_i
            bar.update()
        dist[live] = dist_live
        slack[live] = slack_live
        row_in_batch[batch_np] = -1
    return torch.from_numpy(selected)


def _live_points(centers, columns, slack, batch, chunk: int = 4096) -> tuple[np.ndarray, torch.Tensor]:
    """The points some center of the batch may come near (slack only grows during the batch) and the
    batch itself, sorted, and their columns of the low-precision product ``centers @ columns``."""
    slack_t = torch.from_numpy(slack)
    live, parts = [], []
    for s in range(0, columns.shape[1], chunk):
        part = centers @ columns[:, s : s + chunk]
        hit = torch.nonzero(torch.amax(part, 0) >= slack_t[s : s + chunk]).flatten()
        live.append(hit.numpy() + s)
        parts.append(part[:, hit])
    live = np.concatenate(live)
    if not np.isin(batch, live).all():  # a center always comes near itself, but never rely on rounding
        live = np.union1d(live, batch)
        return live, centers @ columns[:, torch.from_numpy(live)]
    return live, torch.cat(parts, 1)
