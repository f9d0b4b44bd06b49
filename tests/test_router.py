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
