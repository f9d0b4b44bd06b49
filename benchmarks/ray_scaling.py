"""Ray scale-out on this machine: throughput against the number of actors, and Ray's start-up and
per-batch overhead against local scoring (README, "Scale out on Ray").

    python benchmarks/ray_scaling.py --data ../shared/data/mvtec_ad --out runs/ray_scaling

* The model: ``--category`` fitted on its first ``--train-images`` good images (1% coreset), or ``--model``.
* Local: Detector.load, one warm-up batch, then predict_stream over the N2 test images in this process
  (torch's default threads): the work an actor does per batch.
* Ray: ``ray.init(num_cpus=2)`` timed once; then for each ``ACTORSxCPUS`` configuration
  :func:`structcore.distributed.predict_ray` over the first N1 and the first N2 test images, each run
  with a fresh actor pool. Per-image cost = (T(N2) - T(N1)) / (N2 - N1), fixed cost = T(N1) - N1 x that
  (actor start, model and backbone load, Ray Data's plan). Peak RSS per actor process is sampled from
  /proc while it runs.
* Per-batch overhead: (Ray per-image cost with one actor holding every CPU - local per-image cost) x the
  batch size. Each measurement is the median over ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from structcore import Detector, DetectorConfig
from structcore.distributed import connect, predict_ray
from structcore.jobs import fit_model


class ActorMemory:
    """Peak RSS (MB) of each Ray actor process running BatchScorer, sampled from /proc every 0.2 s."""

    def __init__(self):
        self.peak: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self):
        while not self._stop.wait(0.2):
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    if b"BatchScorer" not in (proc / "cmdline").read_bytes():
                        continue
                    rss = next(int(line.split()[1]) for line in (proc / "status").read_text().splitlines()
                               if line.startswith("VmRSS:"))
                except (OSError, StopIteration, ValueError):
                    continue
                self.peak[int(proc.name)] = max(self.peak.get(int(proc.name), 0), rss / 1024)


def _fit(data: Path, category: str, n_train: int, folder: Path) -> Path:
    if not (folder / "manifest.json").is_file():
        train = sorted((data / category / "train" / "good").glob("*.png"))[:n_train]
        fit_model({category: train}, folder, DetectorConfig(coreset_ratio=0.01), overwrite=True, progress=False)
    return folder


def _local(model: Path, images: list[Path], batch_size: int) -> dict:
    """Load time (model, backbone, one warm-up batch) and per-image time of scoring ``images`` locally."""
    started = time.perf_counter()
    detector = Detector.load(model, batch_size=batch_size, progress=False)
    detector.predict(images[:batch_size], maps=False)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in detector.predict_stream(images):
        pass
    return {"load_s": load_s, "ms_per_image": 1000 * (time.perf_counter() - started) / len(images)}


def _ray_run(model: Path, images: list[Path], actors: int, cpus: float, batch_size: int) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory() as out, ActorMemory() as memory:
        started = time.perf_counter()
        predict_ray(model, images, out, actors=actors, cpus_per_actor=cpus, batch_size=batch_size, progress=False,
                    log=lambda m: None)
        wall = time.perf_counter() - started
    return wall, sorted(memory.peak.values())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data/mvtec_ad"))
    p.add_argument("--category", default="bottle")
    p.add_argument("--model", type=Path, help="a fitted model folder (default: fit one into --out)")
    p.add_argument("--train-images", type=int, default=20)
    p.add_argument("--sizes", type=int, nargs=2, default=[16, 48], metavar=("N1", "N2"))
    p.add_argument("--configs", nargs="+", default=["1x2", "2x1", "4x0.5"], help="ACTORSxCPUS_PER_ACTOR")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/ray_scaling"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.model or _fit(args.data, args.category, args.train_images, args.out / "model")
    images = sorted((args.data / args.category / "test").rglob("*.png"))
    n1, n2 = args.sizes
    if len(images) < n2:
        raise SystemExit(f"{args.data / args.category / 'test'} has {len(images)} images, fewer than N2 = {n2}")
    images = images[:n2]

    local = [_local(model, images, args.batch_size) for _ in range(args.runs)]
    local_ms = statistics.median(r["ms_per_image"] for r in local)
    local_load = statistics.median(r["load_s"] for r in local)

    started = time.perf_counter()
    connect(None, num_cpus=2, num_gpus=0)
    init_s = time.perf_counter() - started

    rows = []
    for config in args.configs:
        actors, cpus = int(config.split("x")[0]), float(config.split("x")[1])
        t1, t2, rss = [], [], []
        for _ in range(args.runs):
            wall, peaks = _ray_run(model, images[:n1], actors, cpus, args.batch_size)
            t1.append(wall)
            wall, peaks = _ray_run(model, images[:n2], actors, cpus, args.batch_size)
            t2.append(wall)
            rss.extend(peaks)
        per_image = (statistics.median(t2) - statistics.median(t1)) / (n2 - n1)
        rows.append({
            "config": config, "actors": actors, "cpus_per_actor": cpus, "torch_threads": max(1, int(cpus)),
            "wall_n1_s": statistics.median(t1), "wall_n2_s": statistics.median(t2),
            "fixed_s": statistics.median(t1) - n1 * per_image, "ms_per_image": 1000 * per_image,
            "images_per_s": 1 / per_image, "core_ms_per_image": 1000 * per_image * actors * cpus,
            "peak_rss_per_actor_mb": max(rss) if rss else None,
        })
    one_actor = next((r for r in rows if r["actors"] == 1), None)
    result = {
        "machine": f"{torch.get_num_threads()} torch threads locally; ray.init(num_cpus=2)",
        "category": args.category, "images": {"n1": n1, "n2": n2}, "batch_size": args.batch_size, "runs": args.runs,
        "local": {"load_s": local_load, "ms_per_image": local_ms, "images_per_s": 1000 / local_ms,
                  "core_ms_per_image": local_ms * torch.get_num_threads()},
        "ray_init_s": init_s,
        "per_batch_overhead_ms": None if one_actor is None else (one_actor["ms_per_image"] - local_ms) * args.batch_size,
        "ray": rows,
    }
    (args.out / "ray_scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "| engine | actors x CPUs | fixed cost (s) | ms / image | images / s | core-ms / image | peak RSS / actor (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| local | 1 process, {torch.get_num_threads()} threads | {local_load:.1f} (model + backbone load) | {local_ms:.0f} "
        f"| {1000 / local_ms:.2f} | {local_ms * torch.get_num_threads():.0f} | |",
    ]
    for r in rows:
        lines.append(f"| Ray | {r['actors']} x {r['cpus_per_actor']:g} | {r['fixed_s']:.1f} | {r['ms_per_image']:.0f} "
                     f"| {r['images_per_s']:.2f} | {r['core_ms_per_image']:.0f} | {r['peak_rss_per_actor_mb']:.0f} |")
    lines.append(f"\nray.init(num_cpus=2): {init_s:.1f} s; per-batch overhead (batch {args.batch_size}): "
                 + ("n/a" if result["per_batch_overhead_ms"] is None else f"{result['per_batch_overhead_ms']:.0f} ms"))
    table = "\n".join(lines)
    (args.out / "ray_scaling.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
