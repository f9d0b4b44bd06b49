"""Backbone extraction variants on the CPU, timed side by side in one process (paired rounds).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/extract_variants.py --batch 8 --rounds 8 \
        --variants current fast fast_pad16 [compiled] --out runs/speed/extract_variants.json

Every variant returns the fp32 projected features [B, 784, 512] of the same images (the full
``FeatureExtractor.__call__``: backbone, per-block L2 normalisation, concatenation, projection).

* ``current``   - structcore.features.FeatureExtractor as it is (torch.autocast bf16 around the fp32 model).
* ``fp32``      - the same extractor in fp32.
* ``fast``      - the proposed bf16 path (``fast_patch_tokens`` below): linear weights pre-cast to bf16
  once, LayerScale folded into the preceding linear layer, residual stream and LayerNorm in fp32, one
  cast to bf16 per block input; attention through F.scaled_dot_product_attention on bf16 q/k/v views.
* ``fast_pad16`` - ``fast`` with the 785 tokens padded to 800 (a multiple of 16) and the padding masked out
  of attention as keys (exact: padded tokens never influence real ones).
* ``compiled``  - ``current`` under torch.compile (inductor, freezing); compile time is reported.

Per round every variant runs once on the same batch; the report gives each variant's median ms/image and
its median ratio to ``current`` over rounds, the bf16/fp32 matmul rates measured between rounds, GFLOP per
image and the floor they imply.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from structcore.vit import VisionTransformer, resolve_blocks
from structcore.features import SKIP5, FeatureExtractor, fuse_layers, random_projection
from structcore.hardware import matmul_tflops, projection_gflops, vit_gflops
from structcore.speed import get_backbone


class FastBF16:
    """bf16 inference copy of a DINOv2 ViT's blocks (LayerScale folded into proj / fc2)."""

    def __init__(self, model: VisionTransformer, dtype: torch.dtype = torch.bfloat16):
        self.model = model
        self.dtype = dtype
        self.blocks = []
        with torch.no_grad():
            for blk in model.blocks:
                if not hasattr(blk.mlp, "fc1"):
                    raise NotImplementedError("SwiGLU blocks (ViT-g) are not handled here")
                g1, g2 = blk.ls1.gamma.float(), blk.ls2.gamma.float()
                self.blocks.append(dict(
                    n1=(blk.norm1.weight.float(), blk.norm1.bias.float(), blk.norm1.eps),
                    n2=(blk.norm2.weight.float(), blk.norm2.bias.float(), blk.norm2.eps),
                    qkv=(blk.attn.qkv.weight.to(dtype), blk.attn.qkv.bias.to(dtype)),
                    proj=((blk.attn.proj.weight * g1[:, None]).to(dtype), (blk.attn.proj.bias * g1).to(dtype)),
                    fc1=(blk.mlp.fc1.weight.to(dtype), blk.mlp.fc1.bias.to(dtype)),
                    fc2=((blk.mlp.fc2.weight * g2[:, None]).to(dtype), (blk.mlp.fc2.bias * g2).to(dtype)),
                ))

    def patch_tokens(self, images: torch.Tensor, blocks, pad_to: int = 0) -> list[torch.Tensor]:
        m = self.model
        wanted = resolve_blocks(list(blocks), m.depth)
        heads = m.cfg.num_heads
        skip = 1 + m.cfg.num_registers
        x = m._tokens(images.float())  # fp32 residual stream [B, N, C]
        b, n, c = x.shape
        mask = None
        if pad_to and n % pad_to:
            extra = pad_to - n % pad_to
            x = torch.cat([x, x.new_zeros(b, extra, c)], 1)
            mask = torch.ones(1, 1, 1, n + extra, dtype=torch.bool, device=x.device)
            mask[..., n:] = False
        t = x.shape[1]
        out = {}
        for i in range(max(wanted) + 1):
            w = self.blocks[i]
            h = F.layer_norm(x, (c,), w["n1"][0], w["n1"][1], w["n1"][2]).to(self.dtype)
            q, k, v = F.linear(h, *w["qkv"]).view(b, t, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, t, c)
            x = x + F.linear(a, *w["proj"])
            h = F.layer_norm(x, (c,), w["n2"][0], w["n2"][1], w["n2"][2]).to(self.dtype)
            x = x + F.linear(F.gelu(F.linear(h, *w["fc1"])), *w["fc2"])
            if i in wanted:
                out[i] = x[:, skip:n]
        return [out[i] for i in wanted]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="dinov2_vits14")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--crop", type=int, default=392)
    ap.add_argument("--variants", nargs="+", default=["current", "fast", "fast_pad16"])
    ap.add_argument("--out", help="append the result (one JSON line) to this file")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model, info, label = get_backbone(a.backbone, random_weights=a.random_weights)
    blocks = SKIP5
    proj = random_projection(model.cfg.embed_dim * len(blocks), 512, 42)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 3, a.crop, a.crop, generator=gen)
    cur = FeatureExtractor(model, blocks, proj, "bf16")
    f32 = FeatureExtractor(model, blocks, proj, "fp32")
    fast = FastBF16(model)
    variants = {}
    compile_s = None
    for v in a.variants:
        if v == "current":
            variants[v] = lambda: cur(x)
        elif v == "fp32":
            variants[v] = lambda: f32(x)
        elif v == "fast":
            variants[v] = lambda: fuse_layers(fast.patch_tokens(x, blocks), proj)
        elif v == "fast_pad16":
            variants[v] = lambda: fuse_layers(fast.patch_tokens(x, blocks, pad_to=16), proj)
        elif v == "compiled":
            import torch._inductor.config as icfg

            icfg.freezing = True

            class Wrap(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.m = model

                def forward(self, images):
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        layers = self.m.patch_tokens(images, list(blocks))
                    return fuse_layers(layers, proj)

            comp = torch.compile(Wrap().eval(), dynamic=False)
            t = time.perf_counter()
            with torch.inference_mode():
                comp(x)
            compile_s = time.perf_counter() - t
            variants[v] = lambda: comp(x)
        else:
            raise SystemExit(f"unknown variant {v}")
    with torch.inference_mode():
        ref = f32(x)
        quality = {}
        for k, f in variants.items():
            o = f()
            quality[k] = {
                "cosine_to_fp32_mean": float(F.cosine_similarity(o, ref, dim=-1).mean()),
                "rel_diff_to_fp32": float((o - ref).norm() / ref.norm()),
            }
            f()
        times = {k: [] for k in variants}
        rates = []
        for _ in range(a.rounds):
            for k, f in variants.items():
                t = time.perf_counter()
                f()
                times[k].append(1000 * (time.perf_counter() - t) / a.batch)
            rates.append(matmul_tflops(torch.bfloat16, "cpu"))
    rate = statistics.median(rates)
    gflop = vit_gflops(model.cfg, a.crop, blocks)
    pg = projection_gflops(model.cfg, a.crop, len(blocks), 512)
    fp32_rate = matmul_tflops(torch.float32, "cpu")
    floor = 1000 * (gflop / 1e3 / rate + pg / 1e3 / fp32_rate)
    base = times.get("current")
    res = {
        "backbone": a.backbone, "weights": label, "batch": a.batch, "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"), "rounds": a.rounds,
        "bf16_tflops": round(rate, 3), "fp32_tflops": round(fp32_rate, 3), "gflop_per_image": round(gflop + pg, 2),
        "floor_ms": round(floor, 1), "compile_s": None if compile_s is None else round(compile_s, 1), "variants": {},
    }
    for k, v in times.items():
        res["variants"][k] = {
            "median_ms": round(statistics.median(v), 1), "min_ms": round(min(v), 1),
            "x_floor": round(statistics.median(v) / floor, 2),
            "ratio_to_current": None if base is None else round(statistics.median(x / y for x, y in zip(v, base)), 3),
            **{q: round(val, 6) for q, val in quality[k].items()},
        }
    print(json.dumps(res, indent=1))
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
