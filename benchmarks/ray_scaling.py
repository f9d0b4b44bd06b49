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
* CPU time as well as wall time: on a shared host wall time measures the share of the CPUs a run gets,
  CPU time (from /proc: the actors, this driver, the other processes of the local Ray it started) what
  the work costs.
  Overhead per batch: (actor CPU per image - local CPU per image + driver and Ray CPU per image) x the
  batch size. Each measurement is the median over ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from structcore import Detector, DetectorConfig
from structcore.distributed import connect, predict_ray
from structcore.jobs import fit_model


TICK = os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user + system CPU seconds) of every process, from /proc/PID/stat."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            found[int(proc.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)
    return found


def _descendants(processes: dict[int, tuple[int, float]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


class RaySampler:
    """CPU seconds spent during a run by the processes of the local Ray this driver started (its
    descendants: GCS, raylet, workers; a process that exits counts with its last sample), the part of it
    in the BatchScorer actors, and each actor's peak RSS (MB); sampled from /proc every 0.2 s."""

    def __init__(self):
        self.start = {pid: cpu for pid, (_, cpu) in _processes().items()}
        self.last: dict[int, float] = {}
        self.actors: set[int] = set()
        self.peak: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample_once()

    def cpu(self, actors_only: bool = False) -> float:
        return sum(cpu - self.start.get(pid, 0.0) for pid, cpu in self.last.items()
                   if not actors_only or pid in self.actors)

    def _sample(self):
        while not self._stop.wait(0.2):
            self._sample_once()

    def _sample_once(self):
        processes = _processes()
        for pid in _descendants(processes, os.getpid()):
            self.last[pid] = processes[pid][1]
            try:
                if b"BatchScorer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    self.actors.add(pid)
                    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                               if line.startswith("VmRSS:"))
                    self.peak[pid] = max(self.peak.get(pid, 0.0), rss / 1024)
            except (OSError, StopIteration, ValueError):
                continue


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
    started, cpu = time.perf_counter(), time.process_time()
    for _ in detector.predict_stream(images):
        pass
    return {"load_s": load_s, "ms_per_image": 1000 * (time.perf_counter() - started) / len(images),
            "cpu_ms_per_image": 1000 * (time.process_time() - cpu) / len(images)}


def _ray_run(model: Path, images: list[Path], actors: int, cpus: float, batch_size: int) -> dict:
    """Wall time, CPU seconds (actors, this driver, Ray's own processes) and actor peak RSS of one run."""
    with tempfile.TemporaryDirectory() as out, RaySampler() as sampler:
        started, driver = time.perf_counter(), time.process_time()
        predict_ray(model, images, out, actors=actors, cpus_per_actor=cpus, batch_size=batch_size, progress=False,
                    log=lambda m: None)
        wall, driver = time.perf_counter() - started, time.process_time() - driver
    actor_cpu = sampler.cpu(actors_only=True)
    return {"wall": wall, "actor_cpu": actor_cpu, "driver_cpu": driver, "system_cpu": sampler.cpu() - actor_cpu,
            "rss": sorted(sampler.peak.values())}


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
        small = [_ray_run(model, images[:n1], actors, cpus, args.batch_size) for _ in range(args.runs)]
        large = [_ray_run(model, images[:n2], actors, cpus, args.batch_size) for _ in range(args.runs)]

        def per_image(key, small=small, large=large):
            return (statistics.median(r[key] for r in large) - statistics.median(r[key] for r in small)) / (n2 - n1)

        def fixed(key, small=small):
            return statistics.median(r[key] for r in small) - n1 * per_image(key)

        rss = [m for r in small + large for m in r["rss"]]
        rows.append({
            "config": config, "actors": actors, "cpus_per_actor": cpus, "torch_threads": max(1, int(cpus)),
            "runs": {"n1": small, "n2": large},
            "fixed_s": fixed("wall"), "ms_per_image": 1000 * per_image("wall"), "images_per_s": 1 / per_image("wall"),
            "actor_cpu_ms_per_image": 1000 * per_image("actor_cpu"), "actor_fixed_cpu_s": fixed("actor_cpu"),
            "driver_cpu_ms_per_image": 1000 * per_image("driver_cpu"),
            "ray_system_cpu_ms_per_image": 1000 * per_image("system_cpu"),
            "peak_rss_per_actor_mb": max(rss) if rss else None,
        })
    local_cpu = statistics.median(r["cpu_ms_per_image"] for r in local)
    result = {
        "machine": f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads locally; ray.init(num_cpus=2)",
        "load_average_end": os.getloadavg(),
        "category": args.category, "images": {"n1": n1, "n2": n2}, "batch_size": args.batch_size, "runs": args.runs,
        "local": {"load_s": local_load, "ms_per_image": local_ms, "images_per_s": 1000 / local_ms,
                  "cpu_ms_per_image": local_cpu, "runs": local},
        "ray_init_s": init_s,
        "ray": rows,
    }
    for r in rows:  # Ray's CPU per batch beyond the scoring itself: actor vs local scoring, plus driver and Ray
        r["overhead_cpu_ms_per_batch"] = args.batch_size * (r["actor_cpu_ms_per_image"] - local_cpu
                                                            + r["driver_cpu_ms_per_image"] + r["ray_system_cpu_ms_per_image"])
    (args.out / "ray_scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "| engine | actors x CPUs (torch threads) | fixed wall (s) | wall ms / image | images / s | CPU ms / image: "
        "scoring | driver + Ray's processes | overhead CPU ms / batch | peak RSS / actor (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| local | 1 process ({torch.get_num_threads()}) | {local_load:.1f} | {local_ms:.0f} | {1000 / local_ms:.2f} "
        f"| {local_cpu:.0f} | | | |",
    ]
    for r in rows:
        lines.append(f"| Ray | {r['actors']} x {r['cpus_per_actor']:g} ({r['torch_threads']}) | {r['fixed_s']:.1f} "
                     f"| {r['ms_per_image']:.0f} | {r['images_per_s']:.2f} | {r['actor_cpu_ms_per_image']:.0f} "
                     f"| {r['driver_cpu_ms_per_image'] + r['ray_system_cpu_ms_per_image']:.0f} "
                     f"| {r['overhead_cpu_ms_per_batch']:.0f} | {r['peak_rss_per_actor_mb']:.0f} |")
    lines.append(f"\nray.init(num_cpus=2): {init_s:.1f} s; batch size {args.batch_size}; N1 = {n1}, N2 = {n2} images; "
                 f"load average at the end {os.getloadavg()[0]:.1f}")
    table = "\n".join(lines)
    (args.out / "ray_scaling.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
