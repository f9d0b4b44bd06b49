import pytest
import torch

from structcore import coreset
from structcore.coreset import coreset_size, greedy_coreset
from structcore.features import random_projection


def brute_force_greedy(x: torch.Tensor, n: int, seed: int, starts: int = 10) -> list[int]:
    """Independent implementation: full pairwise distances in the same proxy space."""
    proxy = x @ random_projection(x.shape[1], 128, seed) if x.shape[1] > 128 else x
    d = torch.cdist(proxy.double(), proxy.double()) ** 2
    g = torch.Generator().manual_seed(seed)
    s = torch.randperm(len(x), generator=g)[:starts]
    cover = d[:, s].mean(1)
    chosen = []
    for _ in range(n):
        i = int(torch.argmax(cover))
        chosen.append(i)
        cover = torch.minimum(cover, d[:, i])
        cover[i] = 0
    return chosen


@pytest.mark.parametrize("dim", [16, 300])
def test_matches_brute_force(dim):
    torch.manual_seed(1)
    x = torch.randn(400, dim)
    got = greedy_coreset(x, 40, seed=3).tolist()
    assert got == brute_force_greedy(x, 40, seed=3)
    assert len(set(got)) == 40


def test_covers_clusters():
    # 5 tight, far-apart clusters: a 5-point k-center coreset must take one point from each
    torch.manual_seed(0)
    centers = torch.randn(5, 8) * 100
    x = torch.cat([c + 0.01 * torch.randn(50, 8) for c in centers])
    chosen = greedy_coreset(x, 5, seed=0)
    assert sorted({int(i) // 50 for i in chosen}) == [0, 1, 2, 3, 4]


def test_deterministic_and_seed_dependent():
    x = torch.randn(500, 32, generator=torch.Generator().manual_seed(5))
    a, b = greedy_coreset(x, 50, seed=42), greedy_coreset(x, 50, seed=42)
    assert torch.equal(a, b)
    assert not torch.equal(a, greedy_coreset(x, 50, seed=7))


def test_sizes():
    assert coreset_size(1000, ratio=0.01) == 10
    assert coreset_size(50, ratio=0.01) == 1
    assert coreset_size(50, size=80) == 50
    with pytest.raises(ValueError):
        coreset_size(10, ratio=0.1, size=3)
    with pytest.raises(ValueError):
        coreset_size(10, ratio=1.5)
    assert torch.equal(greedy_coreset(torch.randn(7, 4), 10), torch.arange(7))


@pytest.mark.parametrize("bf16", [True, False])
def test_screened_loop_makes_the_plain_loops_selections(bf16, monkeypatch):
    # clustered data like patch features: a few hundred selections over several thousand points
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(40, 256, generator=g) * 3
    x = centers[torch.randint(0, 40, (6000,), generator=g)] + torch.randn(6000, 256, generator=g)
    monkeypatch.setattr(coreset, "cpu_has_bf16_matmul", lambda: bf16)
    plain = greedy_coreset(x, 300, seed=4, screened=False)
    screened = greedy_coreset(x, 300, seed=4, screened=True)
    assert torch.equal(plain, screened)
    assert len(set(screened.tolist())) == 300


def test_screened_loop_handles_duplicate_points():
    # 50 exact copies of 100 points: the first 100 selections take one copy of each point, as the plain loop
    x = torch.randn(100, 8, generator=torch.Generator().manual_seed(2)).repeat(50, 1)
    chosen = greedy_coreset(x, 100, seed=0, screened=True)
    assert len({int(i) % 100 for i in chosen}) == 100
    assert torch.equal(chosen, greedy_coreset(x, 100, seed=0, screened=False))
