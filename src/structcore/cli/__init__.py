"""The ``structcore`` command line: one module per command, each a few lines over one library function."""

from __future__ import annotations

import argparse
import sys

from .errors import run_command
from . import benchmark, export, fit, predict, report, rescore, serve, speed, threshold, weights

COMMANDS = (weights, fit, predict, threshold, export, serve, benchmark, speed, report, rescore)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="structcore", description="Training-free anomaly detection with StructCore.")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    for p in sub.choices.values():  # also after the command (SUPPRESS: absent, it keeps the top-level value)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the Python traceback of an error")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error becomes one ``structcore: error: ...`` line (a traceback only with --debug)."""
    args = build_parser().parse_args(argv)
    return run_command(args, sys.stderr)
