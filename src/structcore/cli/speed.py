"""``structcore speed``: the paper's Table 4 on this machine."""

from __future__ import annotations

import argparse

from .. import speed
from ..errors import ConfigError
from ..runtime import RUNTIMES
from .options import add_model_options, config_from_args

COMPILE_MODES = {"off": (False,), "on": (True,), "both": (False, True)}


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "speed",
        help="time extraction, kNN and post-processing per image (the paper's Table 4) on this machine",
        description=speed.__doc__.split("\n\n")[0],
    )
    p.add_argument("--data", required=True, help="dataset root in MVTec AD layout")
    p.add_argument("--category", default="bottle")
    p.add_argument("--backbones", nargs="+", help="backbones to time, e.g. dinov2_vits14 dinov2_vitb14 (default: --backbone)")
    p.add_argument("--runtime", "--runtimes", dest="runtimes", nargs="+", choices=list(RUNTIMES), default=["torch", "openvino"],
                   help="backbone runtimes to time side by side (openvino: CPU only)")
    p.add_argument("--precisions", nargs="+", choices=["auto", "fp32", "bf16", "int8"], default=["fp32", "bf16"],
                   help="int8: OpenVINO only, quantised with NNCF on the train images")
    p.add_argument("--coreset-ratios", type=float, nargs="+", default=[0.01, 0.05, 0.1],
                   help="coreset ratios to time (instead of --coreset-ratio)")
    p.add_argument("--runs", type=int, default=3, help="timed passes over the test images; medians are reported")
    p.add_argument("--images", type=int, default=32, help="test images per pass (evenly spread; 0 = all)")
    p.add_argument("--train-images", type=int, default=None, help="train images to fit on (default: all)")
    p.add_argument("--out", required=True, help="output folder (speed.json, speed.md, models/)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="image-decoding threads")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--weights", nargs="+", default=[], metavar="NAME=FILE", help="weights file per backbone")
    p.add_argument("--random-weights", action="store_true", help="random weights for every backbone (timing only)")
    p.add_argument("--compile", choices=list(COMPILE_MODES), default="off",
                   help="time the test pass with the backbone under torch.compile (on), without (off), or both")
    p.add_argument("--in-process", action="store_true", help="no subprocesses (peak RSS is then cumulative)")
    p.add_argument("--quiet", action="store_true")
    add_model_options(p)
    p.set_defaults(func=run)
    return p


def run(args):
    if args.coreset_size is not None:
        raise ConfigError("speed times the --coreset-ratios; --coreset-size is not supported here")
    weights = {}
    for item in args.weights:
        name, sep, file = item.partition("=")
        if not sep:
            raise ConfigError(f"--weights takes NAME=FILE, got {item!r}")
        weights[name] = file
    config = config_from_args(args)
    result = speed.run_speed(
        args.data, args.category, args.out, backbones=tuple(args.backbones or [config.backbone]), runtimes=tuple(args.runtimes),
        precisions=tuple(args.precisions), coreset_ratios=tuple(args.coreset_ratios), runs=args.runs,
        images=args.images or None, train_images=args.train_images, config=config, device=args.device,
        batch_size=args.batch_size, workers=args.workers, threads=args.threads, weights=weights,
        random_weights=args.random_weights, isolate=not args.in_process, quiet=args.quiet,
        compile_modes=COMPILE_MODES[args.compile],
    )
    print(speed.markdown(result))
