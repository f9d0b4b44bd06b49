"""Control for bf16_accuracy.py: how much the metrics move when only the coreset's seed changes (fp32 features).

    python benchmarks/coreset_seed_spread.py --data ROOT --features FEATS --categories bottle screw \
        --coreset-ratios 0.01 0.1 --seeds 42 43 44 45 --precision fp32 --out runs/speed

The seed changes the coreset's 128-d proxy projection and its 10 random starting points, nothing else (the
features are the cached fp32 ones, projected with seed 42). Writes OUT/coreset_seed_spread_<precision>.json.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from common import evaluate, test_targets

from structcore.data import load_mvtec
from structcore import Detector, DetectorConfig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--features", required=True)
    ap.add_argument("--categories", nargs="+", default=["bottle", "screw"])
    ap.add_argument("--coreset-ratios", type=float, nargs="+", default=[0.01, 0.1])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45])
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    cats = {c.name: c for c in load_mvtec(Path(a.data), a.categories)}
    res = {}
    for name in a.categories:
        f = torch.load(Path(a.features) / f"{name}_{a.precision}.pt")
        for ratio in a.coreset_ratios:
            rows = {}
            for seed in a.seeds:
                det = Detector(DetectorConfig(coreset_ratio=ratio, seed=seed), precision="fp32", device="cpu", progress=False)
                det.fit_features("c", f["train"], [str(i) for i in range(len(f["train"]))])
                labels, masks = test_targets(cats[name], det)
                _, m = evaluate(det, "c", f["test"], labels, masks)
                rows[seed] = {**{f"image_auroc_{k}": v for k, v in m.pop("image_auroc").items()}, **m}
                print(name, ratio, seed, json.dumps(rows[seed]), flush=True)
            spread = {}
            for k in rows[a.seeds[0]]:
                vals = [r[k] for r in rows.values() if r[k] is not None]
                if vals:
                    spread[k] = {"min": min(vals), "max": max(vals), "range": max(vals) - min(vals), "std": float(np.std(vals))}
            res[f"{name}/{ratio:g}"] = {"seeds": rows, "spread": spread}
    out = Path(a.out) / f"coreset_seed_spread_{a.precision}.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    for k, v in res.items():
        print(k, {m: round(s["range"], 4) for m, s in v["spread"].items()})


if __name__ == "__main__":
    main()
