"""Fit-time costs: coreset, in-sample vs leave-one-image-out calibration, and peak memory at 1,000 images.

    python benchmarks/fit_scale.py --features FEATS/bottle_fp32.pt --out runs/speed/fit_scale.json

Each measurement runs in its own spawned process, so its peak RSS is its own:

* ``bottle``: Detector.fit_features on bottle's real train features (209 images) for each coreset ratio and
  calibration (in-sample, leave-one-out), with the plain and the screened coreset loop;
  the coreset and the calibration scoring are timed separately.
* ``synthetic1000``: 1,000 train images ([1000, 784, 512] fp32, 1.6 GB) made from bottle's features (each
  synthetic image is a bottle image plus 2% Gaussian noise, so that no two are identical), fitted with the
  screened coreset loop (the plain loop would need about 30 ms x 78k selections at 10%).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _job(conn, spec):
    try:
        import torch

        from structcore import Detector, DetectorConfig
        from structcore.coreset import greedy_coreset

        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        feats = torch.load(spec["features"])["train"]
        if spec["images"] and spec["images"] != len(feats):
            gen = torch.Generator().manual_seed(0)
            idx = torch.arange(spec["images"]) % len(feats)
            scale = 0.02 * feats.std()
            big = torch.empty(spec["images"], *feats.shape[1:])
            for s in range(0, spec["images"], 50):
                j = idx[s : s + 50]
                big[s : s + 50] = feats[j] + scale * torch.randn(len(j), *feats.shape[1:], generator=gen)
            feats = big
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        det = Detector(DetectorConfig(coreset_ratio=spec["ratio"], calibration=spec["calibration"]),
                       precision="fp32", device="cpu", progress=False,
                       coreset_selector=functools.partial(greedy_coreset, screened=spec["coreset"] == "screened"))
        t = time.perf_counter()
        model = det.fit_features("c", feats, [str(i) for i in range(len(feats))])
        fit_s = time.perf_counter() - t
        timings = det.fit_timings_["c"]
        conn.send({
            **spec, "n_images": len(feats), "n_patches": int(feats.shape[0] * feats.shape[1]), "bank_size": len(model.bank),
            "fit_s": round(fit_s, 2), **{k: round(v, 2) for k, v in timings.items()},
            "other_s": round(fit_s - sum(timings.values()), 2),
            "features_gb": round(feats.numel() * 4 / 1e9, 2), "rss_after_loading_mb": round(base_rss),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        })
    except BaseException:  # noqa: BLE001
        import traceback

        conn.send({"error": traceback.format_exc(), **spec})
    finally:
        conn.close()


def run(spec):
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_job, args=(b, spec))
    p.start()
    b.close()
    out = a.recv()
    p.join()
    print(json.dumps(out), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.01, 0.1])
    ap.add_argument("--plain", action="store_true", help="also fit bottle with the current (plain) coreset")
    ap.add_argument("--big", type=int, default=1000, help="synthetic category size (0 = skip)")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    rows = []
    for ratio in a.ratios:
        for calibration in ("in-sample", "leave-one-out"):
            for coreset in (["plain"] if a.plain else []) + ["screened"]:
                rows.append(run(dict(features=a.features, images=0, ratio=ratio, calibration=calibration,
                                     coreset=coreset, threads=a.threads, what="bottle")))
    if a.big:
        for ratio in a.ratios:
            for calibration in ("in-sample", "leave-one-out"):
                rows.append(run(dict(features=a.features, images=a.big, ratio=ratio, calibration=calibration,
                                     coreset="screened", threads=a.threads, what=f"synthetic{a.big}")))
    Path(a.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
