"""``structcore predict``: score images with a fitted model."""

from __future__ import annotations

from ..detector import Detector
from ..jobs import predict_files
from .options import add_runtime_options, runtime_from_args


def register(sub):
    p = sub.add_parser("predict", help="score images with a fitted model")
    p.add_argument("--model", required=True)
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--category", help="category of all inputs (default: routed per image)")
    p.add_argument("--out", default="predictions", help="output folder (default %(default)s)")
    add_runtime_options(p)
    p.set_defaults(func=run)


def run(args):
    detector = Detector.load(args.model, **runtime_from_args(args))
    predict_files(detector, args.inputs, args.out, category=args.category)
