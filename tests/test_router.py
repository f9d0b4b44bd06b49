import torch
import torch.nn.functional as F

from structcore.router import route, route_distances, routing_prototypes


def test_route_distance_against_direct_formula():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 10, 6, generator=g)
    protos = {"a": F.normalize(torch.randn(4, 6, generator=g), dim=-1), "b": F.normalize(torch.randn(5, 6, generator=g), dim=-1)}
    got = route_distances(feats, protos)
    z = F.normalize(feats, dim=-1)
    for name, p in protos.items():
        direct = ((z[:, :, None, :] - p[None, None]) ** 2).sum(-1).min(-1).values.mean(-1)
        assert torch.allclose(got[name], direct, atol=1e-5)


def test_routes_images_to_their_category():
    g = torch.Generator().manual_seed(1)
    centers = {c: torch.randn(3, 16, generator=g) * 3 for c in ("bottle", "screw", "tile")}

    def sample(c, n):
        idx = torch.randint(0, 3, (n, 49), generator=g)
        return centers[c][idx] + 0.3 * torch.randn(n, 49, 16, generator=g)

    protos = {c: routing_prototypes(sample(c, 5).reshape(-1, 16), k=8) for c in centers}
    assert all(p.shape == (8, 16) for p in protos.values())
    for c in centers:
        assert route(sample(c, 4), protos) == [c] * 4


def test_prototypes_cover_the_dense_bulk_and_are_deterministic():
    # 95% of patches in one tight cluster, 5% scattered: k-center would spend its budget on the
    # scattered ones; the prototypes must sit where most patches are
    g = torch.Generator().manual_seed(3)
    bulk = torch.randn(1, 32, generator=g) * 4 + 0.05 * torch.randn(1900, 32, generator=g)
    outliers = 6 * torch.randn(100, 32, generator=g)
    feats = torch.cat([bulk, outliers])
    protos = routing_prototypes(feats, k=8)
    z = F.normalize(bulk, dim=-1)
    assert (2 - 2 * z @ protos.T).min(1).values.mean() < 0.01
    assert torch.equal(protos, routing_prototypes(feats, k=8))
