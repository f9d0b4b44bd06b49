"""The ``structcore`` command line: one module per command, each a few lines over one library function."""

from __future__ import annotations

import argparse
import sys

from ..errors import StructcoreError
from . import benchmark, fit, predict, report, rescore, speed, weights

COMMANDS = (weights, fit, predict, benchmark, report, speed, rescore)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="structcore", description="Training-free anomaly detection with StructCore.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (StructcoreError, KeyError, ValueError) as e:
        message = e.args[0] if isinstance(e, KeyError) and not isinstance(e, StructcoreError) and e.args else e
        print(f"structcore: error: {message}", file=sys.stderr)
        return 2
    return 0
