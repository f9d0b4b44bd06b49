"""k-nearest-neighbour patch scores against a memory bank (paper eq. 5).

faiss (exact ``IndexFlatL2``) on the CPU, a chunked torch matmul search elsewhere (CUDA, or when
faiss is unavailable). Optionally leave-one-image-out: a query from training image ``i`` only sees
bank entries that came from other images.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import ConfigError

try:
    import faiss
except ImportError:  # pragma: no cover - faiss-cpu is a dependency; the torch path still works
    faiss = None

BACKENDS = ("auto", "faiss", "torch")


class MemoryBank:
    """Bank entries ``[M, D]`` (fp32) and, for each entry, the index of the training image it came from."""

    def __init__(
        self,
        entries: torch.Tensor,
        source_image: torch.Tensor,
        backend: str = "auto",
        device: str | torch.device = "cpu",
        chunk: int = 8192,
    ):
        if entries.ndim != 2 or entries.shape[0] == 0:
            raise ValueError(f"a memory bank needs a non-empty [M, D] matrix, got shape {tuple(entries.shape)}")
        if source_image.shape != (entries.shape[0],):
            raise ValueError("source_image must give one training-image index per bank entry")
        if backend not in BACKENDS:
            raise ConfigError(f"unknown kNN backend {backend!r}; choose one of {BACKENDS}")
        self.device = torch.device(device)
        if backend == "auto":
            backend = "faiss" if faiss is not None and self.device.type == "cpu" else "torch"
        if backend == "faiss" and faiss is None:
            raise RuntimeError("the faiss backend needs the faiss-cpu package: pip install faiss-cpu")
        self.backend = backend
        self.entries = entries.float().contiguous()
        self.source_image = source_image.long()
        self.chunk = chunk
        if backend == "faiss":
            self._index = faiss.IndexFlatL2(self.entries.shape[1])
            self._index.add(self.entries.numpy())
        else:
            self._bank = self.entries.to(self.device)
            self._bank_sq = (self._bank * self._bank).sum(1)

    def __len__(self) -> int:
        return self.entries.shape[0]

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared L2 distances and indices ``[Q, k]`` of the ``k`` nearest entries, ascending."""
        if not 1 <= k <= len(self):
            raise ConfigError(
                f"k={k} nearest neighbours, but the memory bank has {len(self)} entries: lower --k or keep more "
                "patches (--coreset-ratio / --coreset-size)"
            )
        queries = queries.float()
        dists, idx = [], []
        for start in range(0, queries.shape[0], self.chunk):
            q = queries[start : start + self.chunk]
            if self.backend == "faiss":
                d, i = self._index.search(np.ascontiguousarray(q.numpy()), k)
                d, i = torch.from_numpy(d), torch.from_numpy(i)
            else:
                q = q.to(self.device)
                sq = ((q * q).sum(1, keepdim=True) - 2 * q @ self._bank.T + self._bank_sq).clamp_min_(0)
                d, i = torch.topk(sq, k, dim=1, largest=False, sorted=True)
                d, i = d.cpu(), i.cpu()
            dists.append(d)
            idx.append(i)
        return torch.cat(dists), torch.cat(idx)

    def patch_scores(self, queries: torch.Tensor, k: int = 5, exclude_image: int | None = None) -> torch.Tensor:
        """Mean squared L2 distance of each query to its ``k`` nearest entries ``[Q]``.

        With ``exclude_image``, entries from that training image are skipped (leave-one-image-out).
        """
        if exclude_image is None:
            return self.search(queries, k)[0].mean(1)
        return self.patch_scores_with_and_without(queries, k, exclude_image)[1]

    def patch_scores_with_and_without(self, queries: torch.Tensor, k: int, image: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One search, two scores ``[Q]`` of queries from training image ``image``: against the whole
        bank, and without that image's own entries (leave-one-image-out)."""
        own = int((self.source_image == image).sum())
        if len(self) - own < k:
            raise ConfigError(
                f"leave-one-image-out needs at least {k} bank entries from other images; lower --k or keep more patches"
            )
        d, i = self.search(queries, k + own)
        keep = self.source_image[i] != image
        # stable: the first k kept neighbours of each row, still in ascending order
        rank = torch.cumsum(keep.int(), dim=1)
        chosen = keep & (rank <= k)
        return d[:, :k].mean(1), (d * chosen).sum(1) / k
