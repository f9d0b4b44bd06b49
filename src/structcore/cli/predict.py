"""``structcore predict``: score images with a fitted model."""

from __future__ import annotations

import sys

from ..detector import Detector
from ..files import check_writable_folder
from ..jobs import predict_files
from ..errors import ConfigError
from .options import (add_engine_options, add_lock_option, add_runtime_options, finite_float, open_fraction,
                      positive_float, positive_int, runtime_from_args)


def register(sub):
    p = sub.add_parser("predict", help="score images with a fitted model")
    p.add_argument("--model", required=True)
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--category", help="category of all inputs (default: routed per image)")
    p.add_argument("--out", default="predictions", help="output folder (default %(default)s); a rerun into the same "
                   "folder with the same model skips the images already scored there")
    p.add_argument("--false-reject-rate", type=open_fraction,
                   help="for this run: thresholds re-derived for this false-reject rate (the model is unchanged)")
    p.add_argument("--threshold", type=finite_float, help="for this run: the decision score's threshold (with "
                   "--category: that category's; otherwise every category's)")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 if any image could not be scored (default: score the others, list it)")
    add_lock_option(p)
    add_runtime_options(p)
    g = add_engine_options(p, "a Ray Data actor pool scores the images into predictions.parquet and .csv")
    g.add_argument("--actors", type=positive_int, default=2, help="with --engine ray: actors, each loading the model "
                   "once (default %(default)s)")
    g.add_argument("--cpus-per-actor", type=positive_float, default=1.0,
                   help="with --engine ray: CPUs each actor holds, fractions allowed (default %(default)s)")
    g.add_argument("--gpus-per-actor", type=positive_float, default=None, help="with --engine ray: GPUs each actor "
                   "holds (default none)")
    g.add_argument("--maps", action="store_true", help="with --engine ray: also write maps/*.npy (local predict "
                   "always writes maps, overlays and masks)")
    p.set_defaults(func=run)


def run(args) -> int:
    check_writable_folder(args.out, "--out")  # before the model and the backbone are loaded
    if args.false_reject_rate is not None and args.threshold is not None:
        raise ConfigError("give --false-reject-rate or --threshold, not both")
    if args.engine == "ray":
        rows = _predict_on_ray(args)
    else:
        rows = _predict_here(args)
    failed = sum(bool(r["error"]) for r in rows)
    if failed and args.strict:
        print(f"structcore: error: {failed} of {len(rows)} images could not be scored (--strict)", file=sys.stderr)
        return 1
    return 0


def _predict_on_ray(args) -> list[dict]:
    from ..distributed import predict_ray

    settings = runtime_from_args(args)
    del settings["fit_precision"], settings["batch_size"]
    return predict_ray(args.model, args.inputs, args.out, category=args.category, address=args.address,
                       actors=args.actors, cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor or 0.0,
                       batch_size=args.batch_size, write_maps=args.maps, false_reject_rate=args.false_reject_rate,
                       threshold=args.threshold, lock_timeout=args.lock_timeout, **settings)


def _predict_here(args) -> list[dict]:
    detector = Detector.load(args.model, **runtime_from_args(args))
    if args.false_reject_rate is not None or args.threshold is not None:
        for name in [args.category] if args.category else sorted(detector.categories_):
            detector.set_thresholds(name, false_reject_rate=args.false_reject_rate, value=args.threshold)
    return predict_files(detector, args.inputs, args.out, category=args.category, lock_timeout=args.lock_timeout)
