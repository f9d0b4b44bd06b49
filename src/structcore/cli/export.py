"""``structcore export``: a fitted model as a deployment folder that runs without torch or structcore."""

from __future__ import annotations

import sys

from ..export import FORMATS, export_model


def register(sub):
    p = sub.add_parser("export", help="write a self-contained deployment folder (OpenVINO or ONNX graph, banks, "
                       "thresholds, structcore_infer.py) that runs without torch")
    p.add_argument("--model", required=True, help="model folder (structcore fit --out)")
    p.add_argument("--format", choices=FORMATS, default="openvino", help="graph format (default %(default)s)")
    p.add_argument("--out", required=True, help="deployment folder to write (a previous deployment there is replaced)")
    p.add_argument("--weights", default=None, help="backbone weights file (default: the model's backbone by name)")
    p.add_argument("--no-check", action="store_true",
                   help="skip running the exported graph against torch on two random images")
    p.add_argument("--quiet", action="store_true", help="no summary")
    p.set_defaults(func=run)


def run(args):
    result = export_model(args.model, args.out, args.format, weights=args.weights, check=not args.no_check,
                          progress=not args.quiet)
    if not args.quiet:
        check = "" if args.no_check else f", features cosine to torch >= {result.min_cosine:.6f}"
        print(f"structcore: exported {args.format} deployment to {result.folder} ({result.bytes / 2**20:.1f} MiB, "
              f"{result.seconds:.1f} s{check})\n  run it: pip install -r {result.folder}/requirements.txt && "
              f"python {result.folder}/infer.py {result.folder} IMAGE...", file=sys.stderr)
