
import pytest
import torch
import torch.nn.functional as F

from structcore.vit import CONFIGS, VisionTransformer, ViTConfig, build_vit


def test_all_sizes_and_register_variants_exist():
    for size in ("vits14", "vitb14", "vitl14", "vitg14"):
        assert f"dinov2_{size}" in CONFIGS and CONFIGS[f"dinov2_{size}_reg"].num_registers == 4
    assert CONFIGS["dinov2_vitg14"].swiglu


def test_vits14_parameter_count_and_meta_keys():
    model = build_vit("dinov2_vits14")
    # Meta's ViT-S/14: 22,056,576 parameters including the 384-wide mask token
    assert sum(p.numel() for p in model.parameters()) == 22_056_576
    keys = set(model.state_dict())
    for key in ("cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "blocks.11.ls2.gamma", "norm.bias"):
        assert key in keys
    assert model.state_dict()["pos_embed"].shape == (1, 1 + 37 * 37, 384)


def test_vitg_swiglu_hidden_width_matches_meta():
    cfg = CONFIGS["dinov2_vitg14"]
    block_keys = {k: v.shape for k, v in VisionTransformer(ViTConfig(**{**cfg.__dict__, "depth": 1})).state_dict().items()}
    assert block_keys["blocks.0.mlp.w12.weight"] == (8192, 1536)
    assert block_keys["blocks.0.mlp.w3.weight"] == (1536, 4096)


def test_patch_tokens_match_a_manual_forward(tiny_vit):
    x = torch.randn(2, 3, 56, 42)
    tokens = tiny_vit.patch_tokens(x, [-1, 1])
    # manual forward through all blocks
    h = tiny_vit._tokens(x)
    outs = []
    for block in tiny_vit.blocks:
        h = block(h)
        outs.append(h[:, 1:])
    assert torch.allclose(tokens[0], outs[-1], atol=1e-6)
    assert torch.allclose(tokens[1], outs[1], atol=1e-6)
    assert tokens[0].shape == (2, 4 * 3, 48)


def test_patch_tokens_stop_at_the_deepest_block(tiny_vit):
    calls = []
    hooks = [b.register_forward_hook(lambda m, i, o, n=n: calls.append(n)) for n, b in enumerate(tiny_vit.blocks)]
    try:
        tiny_vit.patch_tokens(torch.randn(1, 3, 28, 28), [0, -3])
    finally:
        for h in hooks:
            h.remove()
    assert calls == [0, 1]


def test_register_tokens_are_dropped():
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(embed_dim=24, depth=2, num_heads=2, pos_grid=4, num_registers=4)).eval()
    x = torch.randn(1, 3, 28, 28)
    (tokens,) = model.patch_tokens(x, [-1])
    assert tokens.shape == (1, 4, 24)
    full = model._tokens(x)
    for b in model.blocks:
        full = b(full)
    assert torch.allclose(tokens, full[:, 5:])


def test_block_index_out_of_range(tiny_vit):
    with pytest.raises(ValueError, match="out of range"):
        tiny_vit.patch_tokens(torch.randn(1, 3, 28, 28), [-5])


def test_position_embedding_resize_follows_meta_formula(tiny_vit):
    # Meta: bicubic, no antialias, scale factor (n + 0.1) / grid -- compare against that formula directly
    grid = tiny_vit.cfg.pos_grid
    pos = tiny_vit.pos_embed.detach()
    resized = tiny_vit.interpolate_pos_encoding(6, 5).detach()
    patch = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(patch, scale_factor=(6.1 / grid, 5.1 / grid), mode="bicubic", antialias=False)
    assert torch.allclose(resized[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 30, -1))
    assert torch.equal(resized[:, 0], pos[:, 0])
    # resizing to an explicit size instead (a common mistake) gives different values
    wrong = F.interpolate(patch, size=(6, 5), mode="bicubic", antialias=False).permute(0, 2, 3, 1).reshape(1, 30, -1)
    assert not torch.allclose(resized[:, 1:], wrong, atol=1e-4)


def test_image_size_must_be_multiple_of_patch(tiny_vit):
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny_vit.patch_tokens(torch.randn(1, 3, 30, 28), [-1])


def test_register_models_resize_to_size_with_antialias():
    # Meta's hub builds the _reg models with interpolate_offset=0 and antialiasing
    cfg = CONFIGS["dinov2_vits14_reg"]
    assert (cfg.interpolate_offset, cfg.interpolate_antialias) == (0.0, True)
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(embed_dim=24, depth=1, num_heads=2, pos_grid=8, num_registers=4,
                                        interpolate_offset=0.0, interpolate_antialias=True))
    patch = model.pos_embed.detach()[:, 1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(patch, size=(5, 3), mode="bicubic", antialias=True).permute(0, 2, 3, 1).reshape(1, 15, -1)
    assert torch.allclose(model.interpolate_pos_encoding(5, 3).detach()[:, 1:], expected)
