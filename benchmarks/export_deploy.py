"""Export and deploy: export time, folder and install sizes, cold start and ms per image of the exported
model against ``structcore predict``, on one category with the real weights.

    python benchmarks/export_deploy.py --data ../shared/data/mvtec_ad --category bottle --train 30 \
        --images 10 --venvs /tmp/deploy --out runs/export_deploy

1. fits the category on its first ``--train`` good images (fp32) into OUT/model (or takes ``--model``);
2. per format: ``python -m structcore.cli export --model OUT/model --format F --out OUT/F`` in its own
   process (wall time), and the folder's size;
3. a fresh venv per format (``VENVS/F``, made once: ``python -m venv`` + ``pip install -r OUT/F/requirements.txt``),
   checked to have no torch; its site-packages size, against torch's own and this environment's;
4. cold start: ``VENVS/F/bin/python OUT/F/infer.py OUT/F IMAGE --out x.json`` (process start to
   the first prediction written), median of ``--repeats``; and ``structcore predict --model OUT/model IMAGE``
   the same way (fp32; after one uncounted run, so the OpenVINO runtime's graph cache is filled);
5. warm ms per image, in this process: the deployment's ``predict`` and ``Detector.predict`` (fp32, runtime
   torch and openvino) over ``--images`` test images after a one-image warm-up, and the largest relative
   difference of their scores.

Prints a Markdown table and writes OUT/export_deploy.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORMATS = ("openvino", "onnx")


def tree_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = Path(root) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def mib(n: int) -> float:
    return round(n / 2**20, 1)


def timed(cmd: list[str], env: dict | None = None) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return seconds


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python*/site-packages"))


def make_venv(venv: Path, requirements: Path) -> float:
    """A fresh venv with the deployment's requirements (made once); returns the install seconds (0 if it existed)."""
    if (venv / "bin" / "python").is_file():
        return 0.0
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-cache-dir", "-r", str(requirements)], check=True)
    return time.perf_counter() - started


def warm_ms(predict, images: list[Path]) -> tuple[float, list]:
    predict(images[:1])
    started = time.perf_counter()
    out = predict(images)
    return (time.perf_counter() - started) * 1000 / len(images), out


def max_rel(a, b) -> float:
    return max(abs(x.scores[s] / y.scores[s] - 1) for x, y in zip(a, b) for s in ("base", "struct", "hybrid"))


def render(result: dict, repeats: int) -> str:
    """The Markdown table of a result (for structcore predict the install column is torch's own size)."""
    lines = [f"| | export (s) | folder (MiB) | install (MiB) | cold start (s, median of {repeats}) | warm ms / image | "
             "max rel. score diff vs torch |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in result["rows"].items():
        install = f"{r['torch_mib']} (torch alone)" if "torch_mib" in r else r.get("install_mib")
        cells = [r.get("export_s"), r.get("folder_mib"), install, r.get("cold_start_s"),
                 r.get("warm_ms_per_image"), r.get("max_rel_score_diff_vs_torch")]
        lines.append(f"| {name} | " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="the MVTec AD root (required unless --render)")
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--train", type=int, default=30)
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--model", type=Path, help="an existing model folder (default: fit one into OUT/model)")
    ap.add_argument("--venvs", type=Path, default=Path("/tmp/deploy"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/export_deploy"))
    ap.add_argument("--render", type=Path, help="only print the table of an export_deploy.json written before")
    args = ap.parse_args()
    if args.render:
        result = json.loads(args.render.read_text())
        print(render(result, len(result["rows"]["openvino"]["cold_start_runs_s"])))
        return
    if args.data is None:
        ap.error("--data is required")

    import torch

    from structcore import Detector, DetectorConfig
    from structcore import deployed

    args.out.mkdir(parents=True, exist_ok=True)
    cat = args.data / args.category
    test = sorted((cat / "test").glob("*/*.png"))
    images = test[:: max(1, len(test) // args.images)][: args.images]
    model = args.model
    result: dict = {"category": args.category, "train_images": args.train, "images": len(images),
                    "cpus": os.cpu_count(), "load_average": os.getloadavg(), "command": sys.argv}
    if model is None:
        model = args.out / "model"
        det = Detector(DetectorConfig(), precision="fp32", progress=False)
        started = time.perf_counter()
        det.fit(args.category, sorted((cat / "train" / "good").glob("*.png"))[: args.train])
        result["fit_s"] = round(time.perf_counter() - started, 1)
        det.save(model)
    cli = [sys.executable, "-m", "structcore.cli"]
    env = {**os.environ, "STRUCTCORE_RUNTIME": os.environ.get("STRUCTCORE_RUNTIME", "auto")}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        rows = {}
        for fmt in FORMATS:
            folder = args.out / fmt
            export_s = timed([*cli, "export", "--model", str(model), "--format", fmt, "--out", str(folder)], env)
            venv = args.venvs / fmt
            install_s = make_venv(venv, folder / "requirements.txt")
            py = str(venv / "bin" / "python")
            no_torch = subprocess.run([py, "-c", "import torch"], capture_output=True).returncode != 0
            cold = [timed([py, str(folder / "infer.py"), str(folder), str(images[0]), "--out",
                           str(scratch / "p.json")]) for _ in range(args.repeats)]
            rows[fmt] = {"export_s": round(export_s, 1), "folder_mib": mib(tree_bytes(folder)),
                         "install_mib": mib(tree_bytes(site_packages(venv))), "install_s": round(install_s, 1),
                         "torch_importable": not no_torch, "cold_start_s": round(statistics.median(cold), 2),
                         "cold_start_runs_s": [round(c, 2) for c in cold]}
        predict = [*cli, "predict", "--model", str(model), str(images[0]), "--precision", "fp32", "--quiet"]
        timed([*predict, "--out", str(scratch / "warmup")], env)  # fills the OpenVINO graph cache
        cold = [timed([*predict, "--out", str(scratch / f"pred{i}")], env) for i in range(args.repeats)]
        torch_dir = Path(torch.__file__).parent
        rows["structcore predict (fp32)"] = {"install_mib": mib(tree_bytes(Path(torch_dir).parent)),
                                      "torch_mib": mib(tree_bytes(torch_dir)),
                                      "cold_start_s": round(statistics.median(cold), 2),
                                      "cold_start_runs_s": [round(c, 2) for c in cold],
                                      "runtime": env["STRUCTCORE_RUNTIME"]}
    # warm, in this process
    references = {}
    for runtime in ("torch", "openvino"):
        det = Detector.load(model, precision="fp32", runtime=runtime, progress=False)
        ms, preds = warm_ms(lambda x: det.predict(x), images)
        references[runtime] = preds
        rows.setdefault(f"Detector.predict (fp32, {runtime})", {})["warm_ms_per_image"] = round(ms)
    for fmt in FORMATS:
        dep = deployed.load(args.out / fmt)
        ms, got = warm_ms(lambda x: dep.predict(x), images)
        rows[fmt]["warm_ms_per_image"] = round(ms)
        rows[fmt]["max_rel_score_diff_vs_torch"] = float(f"{max_rel(got, references['torch']):.2e}")
        rows[fmt]["same_decisions"] = [r.decision for r in got] == [p.decision for p in references["torch"]]
    result["rows"] = rows
    result["load_average_end"] = os.getloadavg()
    table = render(result, args.repeats)
    print(table)
    print(json.dumps(result, indent=2))
    (args.out / "export_deploy.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "export_deploy.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
