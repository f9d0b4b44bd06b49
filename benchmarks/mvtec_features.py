"""Projected StructCore features of MVTec categories in fp32 and bf16, via the shared token cache.

    python benchmarks/mvtec_features.py --data ../shared/data/mvtec_ad --categories bottle screw \
        --precisions fp32 bf16 --out runs/feats

Writes OUT/<category>_<precision>.pt = {"train": [N, P, D], "test": [M, P, D], "labels": [M], "test_paths": [...]}
(features exactly as Detector.extract gives them: raw block tokens from the cache -> Detector.fuse).
"""

import argparse
from pathlib import Path

import torch

from structcore.data import load_mvtec
from structcore import Detector, DetectorConfig
from structcore.feature_cache import CacheContext, FeatureCache, default_folder
from structcore.features import FeatureExtractor
from structcore.weights import load_backbone


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--categories", nargs="+", default=["bottle"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = DetectorConfig()
    model, info = load_backbone(cfg.backbone)
    cfg = cfg.for_weights(info)
    cache = FeatureCache(default_folder())
    for cat in load_mvtec(Path(a.data), a.categories):
        for prec in a.precisions:
            det = Detector(cfg, precision=prec, device="cpu", progress=False)
            ex = FeatureExtractor(model, cfg.blocks, None, prec, "cpu")
            ctx = CacheContext(cfg.backbone, info.sha256, cfg.preprocess, prec, "cpu")
            feats = {}
            for split, paths in (("train", cat.train), ("test", [s.path for s in cat.test])):
                feats[split] = cache.layer_tokens(ex, ctx, paths, cfg.blocks, 8, 2, True, f"{cat.name} {split} {prec}",
                                                  reduce=det.fuse)
            feats["labels"] = torch.tensor([s.label for s in cat.test])
            feats["test_paths"] = [str(s.path) for s in cat.test]
            feats["train_paths"] = [str(p) for p in cat.train]
            torch.save(feats, out / f"{cat.name}_{prec}.pt")
            print(cat.name, prec, {k: tuple(v.shape) for k, v in feats.items() if torch.is_tensor(v)}, cache.stats.as_dict(),
                  flush=True)


if __name__ == "__main__":
    main()
