import numpy as np
import pytest
import torch

from structcore.knn import MemoryBank


def brute(queries, bank, k):
    d = ((queries[:, None, :].double() - bank[None].double()) ** 2).sum(-1)
    return torch.sort(d, dim=1).values[:, :k]


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_patch_scores_match_brute_force(backend):
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(300, 24, generator=g), torch.randn(130, 24, generator=g)
    mb = MemoryBank(bank, torch.zeros(300, dtype=torch.long), backend=backend, chunk=50)
    expected = brute(queries, bank, 5).mean(1)
    assert torch.allclose(mb.patch_scores(queries, 5).double(), expected, rtol=1e-4, atol=1e-4)
    d, i = mb.search(queries, 3)
    assert torch.allclose(d.double(), brute(queries, bank, 3), rtol=1e-4, atol=1e-4)
    assert torch.allclose(((queries - bank[i[:, 0]]) ** 2).sum(1), d[:, 0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_leave_one_image_out(backend):
    g = torch.Generator().manual_seed(1)
    bank = torch.randn(200, 8, generator=g)
    source = torch.arange(200) % 7
    queries = bank[source == 3][:10] + 0.001  # nearly identical to image 3's own entries
    mb = MemoryBank(bank, source, backend=backend)
    loo = mb.patch_scores(queries, 4, exclude_image=3)
    expected = brute(queries, bank[source != 3], 4).mean(1)
    assert torch.allclose(loo.double(), expected, rtol=1e-4, atol=1e-4)
    assert (loo > mb.patch_scores(queries, 4) + 1e-3).all()
    with_own, without_own = mb.patch_scores_with_and_without(queries, 4, 3)
    assert torch.allclose(with_own.double(), brute(queries, bank, 4).mean(1), rtol=1e-4, atol=1e-4)
    assert torch.equal(without_own, loo)


def test_backends_agree_and_errors():
    g = torch.Generator().manual_seed(2)
    bank, q = torch.randn(64, 16, generator=g), torch.randn(20, 16, generator=g)
    src = torch.zeros(64, dtype=torch.long)
    a = MemoryBank(bank, src, "faiss").patch_scores(q, 5)
    b = MemoryBank(bank, src, "torch").patch_scores(q, 5)
    assert np.allclose(a.numpy(), b.numpy(), rtol=1e-4)
    with pytest.raises(ValueError, match="non-empty"):
        MemoryBank(torch.empty(0, 16), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError, match="k=65"):
        MemoryBank(bank, src).patch_scores(q, 65)
    with pytest.raises(ValueError, match="other images"):
        MemoryBank(bank, src).patch_scores(q, 5, exclude_image=0)
