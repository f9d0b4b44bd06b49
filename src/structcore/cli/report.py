"""``structcore report DIR``: (re)write the figures and report.html of a benchmark folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..report import write_report


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="(re)write the figures and report.html of a benchmark folder",
                       description=__doc__)
    p.add_argument("out_dir", type=Path, help="a folder written by `structcore benchmark --out`")
    p.set_defaults(func=run)
    return p


def run(args):
    print(write_report(args.out_dir))
