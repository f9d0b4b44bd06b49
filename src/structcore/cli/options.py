"""Option groups shared by several commands, and turning parsed options into library settings."""

from __future__ import annotations

import argparse
from dataclasses import fields

from ..config import CALIBRATIONS, DetectorConfig
from ..maps import POOLINGS
from ..structure import COMPONENTS, DISTANCES


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
    g.add_argument("--pooling", choices=POOLINGS, default=d.pooling)
    g.add_argument("--components", nargs="+", choices=COMPONENTS, default=list(d.components))
    g.add_argument("--top-ratio", type=float, default=d.top_ratio)
    g.add_argument("--distance", choices=DISTANCES, default=d.distance)
    g.add_argument("--lam", type=float, default=None, help="fixed hybrid weight (default: lambda_auto)")
    g.add_argument("--calibration", choices=CALIBRATIONS, default=d.calibration)
    g.add_argument("--heldout-fraction", type=float, default=d.heldout_fraction,
                   help="share of train images held out for --calibration held-out")
    g.add_argument("--quantile", type=float, default=d.quantile, help="threshold quantile of train-good scores")
    g.add_argument("--descriptor-on", choices=["map", "grid"], default=d.descriptor_on,
                   help="compute phi on the final map or on the raw kNN grid")
    g.add_argument("--routing-prototypes", type=int, default=d.routing_prototypes)
    g.add_argument("--decision-score", choices=["base", "struct", "hybrid"], default=d.decision_score,
                   help="the score whose threshold decides accept/reject")
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
    """The DetectorConfig of the model options (every config field has one)."""
    values = {f.name: getattr(args, f.name) for f in fields(DetectorConfig)}
    values["projection_dim"] = values["projection_dim"] or None  # 0 = no projection
    return DetectorConfig(**values)


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
