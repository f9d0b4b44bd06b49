"""Compare the screened and the plain greedy coreset loop (structcore.coreset) on real features.

    python benchmarks/coreset_check.py --features runs/feats/bottle_fp32.pt --ratios 0.01 0.1

Prints both times, whether the selection sequences are identical, and the pruning statistics.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from structcore.coreset import coreset_size, greedy_coreset


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.01, 0.1])
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of the screened loop (median)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--plain-cache", help="json file to keep plain-loop selections between runs")
    ap.add_argument("--out", help="json results file")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    feats = torch.load(a.features)["train"]
    flat = feats.reshape(-1, feats.shape[-1])
    cache = json.loads(Path(a.plain_cache).read_text()) if a.plain_cache and Path(a.plain_cache).exists() else {}
    results = []
    for r in a.ratios:
        m = coreset_size(len(flat), r)
        key = f"{Path(a.features).name}:{m}"
        if key in cache:
            plain, t_plain = torch.tensor(cache[key]["sel"]), cache[key]["s"]
        else:
            t = time.perf_counter()
            plain = greedy_coreset(flat, m, screened=False)
            t_plain = time.perf_counter() - t
            cache[key] = {"sel": plain.tolist(), "s": t_plain}
            if a.plain_cache:
                Path(a.plain_cache).write_text(json.dumps(cache))
        for _ in range(1):
            times = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                fast = greedy_coreset(flat, m, screened=True)
                times.append(time.perf_counter() - t)
            t_fast = sorted(times)[len(times) // 2]
            same = torch.equal(fast, plain)
            first_diff = None if same else int((fast != plain).nonzero()[0])
            row = dict(features=a.features, threads=torch.get_num_threads(), n=len(flat), ratio=r, n_select=m, plain_s=round(t_plain, 2),
                       fast_s=round(t_fast, 2), speedup=round(t_plain / t_fast, 1), identical=same,
                       first_difference=first_diff, overlap=len(set(fast.tolist()) & set(plain.tolist())) / m)
            print(json.dumps(row), flush=True)
            results.append(row)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
