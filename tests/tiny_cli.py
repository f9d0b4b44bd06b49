"""Run the ``structcore`` command line with the tiny random ViT of conftest.py registered as backbone "tiny".

For tests that need real processes (concurrent writers, kills): ``python tests/tiny_cli.py fit ...``; Ray
workers import it through their setup hook (tests/test_ray.py).
Subprocesses do not load conftest.py, so the backbone is registered here the same way (same seed, same
weights record), and models fitted here load in the test process and the other way round.
"""

import sys

import torch

from structcore.backbones import register_backbone
from structcore.vit import VisionTransformer, ViTConfig
from structcore.weights import WeightsInfo


def _tiny():
    torch.manual_seed(0)
    vit = VisionTransformer(ViTConfig(embed_dim=48, depth=4, num_heads=3, pos_grid=4)).eval()
    return vit, WeightsInfo(name="tiny", path=None, sha256="0" * 64, source="test")


_cache = []


def _load(weights=None):
    if not _cache:
        _cache.append(_tiny())
    return _cache[0]


def register():
    """Register the tiny ViT as backbone "tiny" (also a Ray ``worker_process_setup_hook``: "tiny_cli.register")."""
    register_backbone("tiny", _load, embed_dim=48, patch_size=14, depth=4, default_blocks=(-1, -2))


register()

if __name__ == "__main__":
    torch.set_num_threads(1)
    from structcore.cli import main

    sys.exit(main())
