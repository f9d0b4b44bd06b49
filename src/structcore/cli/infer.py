"""The command line of a deployment folder: ``python infer.py DIR IMAGE... [--out predictions.json]``.

Copied by ``structcore export`` into the folder as ``infer.py``, next to ``structcore_infer.py`` (a copy of
:mod:`structcore.deployed`), which it imports; like it, it needs no torch and no structcore.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # structcore_infer.py lies next to this file
import structcore_infer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infer.py", description="Score images with an exported structcore model "
                                     "(numpy, Pillow, faiss and OpenVINO or ONNX Runtime; no torch).")
    parser.add_argument("deployment", help="the folder structcore export wrote")
    parser.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--category", help="category of all images (default: routed per image)")
    parser.add_argument("--out", help="write the predictions as JSON here (default: print them)")
    parser.add_argument("--maps", help="also write each anomaly map (crop frame) as NNNN.npy into this folder")
    parser.add_argument("--threads", type=int, default=None, help="graph threads (default: all cores)")
    args = parser.parse_args(argv)
    try:
        model = structcore_infer.load(args.deployment, threads=args.threads)
        for name in model.edited:
            print(f"structcore_infer: note: {name} was edited after export", file=sys.stderr)
        results = model.predict(structcore_infer.image_files(args.images), category=args.category, maps=bool(args.maps))
        rows = [r.as_dict() for r in results]
        if args.maps:
            os.makedirs(args.maps, exist_ok=True)
            for i, r in enumerate(results):
                np.save(Path(args.maps) / f"{i:04d}.npy", r.anomaly_map)
        text = json.dumps(rows, indent=2)
        if args.out:
            Path(args.out).write_text(text + "\n")
        else:
            print(text)
    except structcore_infer.DeploymentError as e:
        print(f"structcore_infer: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"structcore_infer: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
