"""What a forward pass costs and what this machine can do: analytic ViT GFLOP, measured matmul rates,
peak memory and a description of the machine (for :mod:`structcore.speed`)."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time

import torch

from .features import cpu_bf16_flags
from .vit import ViTConfig


def vit_gflops(cfg: ViTConfig, crop: int, blocks: tuple[int, ...] | list[int]) -> float:
    """Matmul GFLOP per image of a ViT forward up to the deepest of ``blocks`` (multiply-add = 2 FLOP).

    Counts the patch embedding, each block's qkv / output projection / MLP (or SwiGLU) and the
    attention products QK^T and AV; norms, softmax and activations are not counted.
    """
    p = cfg.patch_size
    patches = (crop // p) ** 2
    n = 1 + cfg.num_registers + patches
    d = cfg.embed_dim
    depth = max(b % cfg.depth for b in blocks) + 1
    if cfg.swiglu:
        hidden = (int(cfg.embed_dim * cfg.mlp_ratio * 2 / 3) + 7) // 8 * 8
        mlp = 2 * n * d * 2 * hidden + 2 * n * hidden * d
    else:
        hidden = int(d * cfg.mlp_ratio)
        mlp = 2 * n * d * hidden * 2
    block = 2 * n * d * 3 * d + 2 * n * d * d + mlp + 2 * (2 * n * n * d)
    embed = 2 * patches * d * 3 * p * p
    return (embed + depth * block) / 1e9


def projection_gflops(cfg: ViTConfig, crop: int, n_blocks: int, out_dim: int | None) -> float:
    """GFLOP per image of the fp32 random projection of the fused features (0 without projection)."""
    if not out_dim:
        return 0.0
    patches = (crop // cfg.patch_size) ** 2
    return 2 * patches * cfg.embed_dim * n_blocks * out_dim / 1e9


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(dtype: torch.dtype, device: torch.device | str = "cpu", size: int = 2048, repeats: int = 5) -> float:
    """Measured dense matmul rate (TFLOP/s, median of ``repeats``) for square ``size`` matrices."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)
    inner = 1 if device.type == "cpu" else 20
    with torch.inference_mode():
        for _ in range(2):
            a @ b
        sync(device)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(inner):
                a @ b
            sync(device)
            times.append((time.perf_counter() - t) / inner)
    return 2 * size**3 / statistics.median(times) / 1e12


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "bf16_cpu_flags": list(cpu_bf16_flags()),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": str(device),
        "omp_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ},
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
