"""Category routing for multi-category models (paper eq. 3-4).

Each category keeps K_r prototypes: spherical k-means centroids (faiss, seeded) of its L2-normalised
patch features. An image goes to the category whose prototypes are nearest on average over its patches.

Not greedy k-center (spec decision 5): k-center picks the 64 most extreme patches and leaves the dense
bulk of a category (e.g. screw's plain background) uncovered (measured in the README, "Deviations from
the paper").
"""

from __future__ import annotations

import faiss
import torch
import torch.nn.functional as F


def routing_prototypes(features: torch.Tensor, k: int = 64, seed: int = 42, iterations: int = 20) -> torch.Tensor:
    """``k`` prototypes ``[k, D]`` (L2-normalised) from a category's patch features ``[N, D]``."""
    normed = F.normalize(features.float(), dim=-1)
    k = min(k, len(normed))
    kmeans = faiss.Kmeans(normed.shape[1], k, niter=iterations, seed=seed, spherical=True, verbose=False)
    kmeans.train(normed.numpy())
    return F.normalize(torch.from_numpy(kmeans.centroids.copy()), dim=-1)


def route_distances(image_features: torch.Tensor, prototypes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """route(c) for each category: mean over patches of the min squared L2 to c's prototypes.

    ``image_features`` is ``[B, P, D]``; each value is ``[B]``.
    """
    z = F.normalize(image_features.float(), dim=-1)
    out = {}
    for name, protos in prototypes.items():
        # both sides unit-norm: ||z - r||^2 = 2 - 2 z.r
        nearest = (2 - 2 * (z @ protos.T)).clamp_min(0).min(-1).values
        out[name] = nearest.mean(-1)
    return out


def route(image_features: torch.Tensor, prototypes: dict[str, torch.Tensor]) -> list[str]:
    """The routed category of each image (eq. 4)."""
    if not prototypes:
        raise ValueError("routing needs at least one fitted category")
    names = list(prototypes)
    per_category = route_distances(image_features, prototypes)
    dists = torch.stack([per_category[n] for n in names], dim=1)
    return [names[i] for i in dists.argmin(1).tolist()]
