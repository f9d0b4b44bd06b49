"""Load on `structcore serve`: N concurrent clients on loopback for a bounded time.

    python benchmarks/serve_load.py --model runs/serve/bottle --images ../shared/data/mvtec_ad/bottle/test \
        --clients 1 2 8 --seconds 40 --queue-size 2 --threads 2 --out runs/serve/serve_load.json

Scores the images offline first (``Detector.predict`` of each file on its own, as the server does),
then starts ``structcore serve`` in its own process and, for each client count, runs that many client
threads that send ``POST /v1/predict`` back to back for ``--seconds`` (a client that gets 503 waits for
its Retry-After, as a well-behaved client does). Every request sent gets counted once: 200 (its scores
must equal the offline ones to 1e-6 relative), 503 (queue full), another status (error), or no answer at
all (lost: a timeout or a broken connection). Latency percentiles are over the 200 answers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

COLUMNS = ("clients", "requests", "ok", "503", "errors", "lost", "mismatched", "img/s", "p50 ms", "p95 ms", "p99 ms")


def offline_scores(model: Path, images: list[Path], threads: int) -> tuple[dict[str, dict[str, float]], float]:
    """Each image's scores predicted on its own (as the server does, and ``structcore predict FILE``), and
    the largest relative difference from predicting them in batches (bf16 rounding depends on the batch)."""
    import torch

    from structcore import load_model

    torch.set_num_threads(threads)
    detector = load_model(model, progress=False)
    alone = {str(p): detector.predict([p])[0].scores for p in images}
    batched = detector.predict(images)
    spread = max(abs(pred.scores[k] - alone[str(p)][k]) / abs(alone[str(p)][k])
                 for p, pred in zip(images, batched) for k in pred.scores)
    return alone, spread


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, queue_size: int, threads: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-c", "from structcore.cli import main; raise SystemExit(main())", "serve",
               "--model", str(model), "--port", str(port), "--queue-size", str(queue_size), "--threads", str(threads)]
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())


def wait_ready(url: str, server: subprocess.Popen, limit_s: float = 600):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode} before it was ready (see its log)")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server was not ready after {limit_s} s")


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def run_clients(url: str, images: list[Path], reference: dict, clients: int, seconds: float, timeout: float) -> dict:
    """``clients`` threads sending requests until ``seconds`` have passed; every outcome is recorded."""
    payloads = [(str(p), p.read_bytes()) for p in images]
    order = itertools.count()
    outcomes: list[dict] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client():
        with httpx.Client(base_url=url, timeout=timeout) as http:
            while (now := time.monotonic()) < stop_at:
                path, data = payloads[next(order) % len(payloads)]
                started = time.perf_counter()
                try:
                    response = http.post("/v1/predict", files={"file": (Path(path).name, data, "image/png")})
                except httpx.HTTPError as e:
                    record = {"outcome": "lost", "detail": f"{type(e).__name__}: {e}"}
                else:
                    latency_ms = 1000 * (time.perf_counter() - started)
                    record = {"status": response.status_code, "latency_ms": latency_ms}
                    if response.status_code == 200:
                        scores = response.json()["scores"]
                        same = all(math.isclose(scores[k], v, rel_tol=1e-6) for k, v in reference[path].items())
                        record["outcome"] = "ok" if same else "mismatched"
                    elif response.status_code == 503:
                        record["outcome"] = "503"
                        time.sleep(min(float(response.headers.get("Retry-After", 1)), max(0.0, stop_at - now)))
                    else:
                        record["outcome"] = "error"
                        record["detail"] = response.text[:200]
                with lock:
                    outcomes.append(record)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    count = {k: sum(o["outcome"] == k for o in outcomes) for k in ("ok", "503", "error", "lost", "mismatched")}
    ok_latency = [o["latency_ms"] for o in outcomes if o["outcome"] in ("ok", "mismatched")]
    return {
        "clients": clients, "requests": len(outcomes), "ok": count["ok"], "503": count["503"],
        "errors": count["error"], "lost": count["lost"], "mismatched": count["mismatched"],
        "img/s": (count["ok"] + count["mismatched"]) / elapsed, "elapsed_s": elapsed,
        "p50 ms": percentile(ok_latency, 50), "p95 ms": percentile(ok_latency, 95), "p99 ms": percentile(ok_latency, 99),
        "details": sorted({o["detail"] for o in outcomes if "detail" in o})[:5],
    }


def markdown(rows: list[dict]) -> str:
    def cell(v):
        return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="model folder written by `structcore fit`")
    ap.add_argument("--images", type=Path, required=True, help="folder of test images (searched recursively)")
    ap.add_argument("--max-images", type=int, default=16, help="images to cycle through, evenly spread (default 16)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 8])
    ap.add_argument("--seconds", type=float, default=40, help="how long each client count sends requests")
    ap.add_argument("--queue-size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the server (and the offline reference)")
    ap.add_argument("--timeout", type=float, default=300, help="client timeout per request: past it, a request is lost")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = ap.parse_args(argv)

    from structcore.data import list_images

    found = list_images(args.images, recursive=True)
    images = found[:: max(1, len(found) // args.max_images)][: args.max_images]
    print(f"offline predict of {len(images)} images ...", flush=True)
    reference, batch_spread = offline_scores(args.model, images, args.threads)
    print(f"offline: batched vs one-by-one scores differ by at most {batch_spread:.1e} (relative)", flush=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    server = start_server(args.model, port, args.queue_size, args.threads, args.out.with_suffix(".server.log"))
    try:
        wait_ready(url, server)
        rows = []
        for clients in args.clients:
            row = run_clients(url, images, reference, clients, args.seconds, args.timeout)
            print(f"{clients} clients: {row['requests']} requests, {row['ok']} ok, {row['503']} x 503, "
                  f"{row['errors']} errors, {row['lost']} lost, {row['mismatched']} mismatched", flush=True)
            rows.append(row)
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(markdown(rows))
    args.out.write_text(json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                    "images": [str(p) for p in images],
                                    "offline_batch_vs_single_max_rel": batch_spread, "rows": rows}, indent=2))
    print(f"written {args.out}")
    return 0 if all(r["lost"] == 0 and r["errors"] == 0 and r["mismatched"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
