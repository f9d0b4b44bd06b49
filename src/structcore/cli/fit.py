"""``structcore fit``: fit a model folder on good images."""

from __future__ import annotations

from ..jobs import fit_model, training_sets
from .options import (add_lock_option, add_model_options, add_runtime_options, config_from_args, given_model_options,
                      runtime_from_args)


def register(sub):
    p = sub.add_parser("fit", help="fit a model on good images")
    p.add_argument("--data", help="dataset root in MVTec AD layout (ROOT/CATEGORY/train/good)")
    p.add_argument("--categories", nargs="+", help="categories under --data (default: all)")
    p.add_argument("--good", help="instead of --data: a plain folder of good images")
    p.add_argument("--category", help="category name for --good (default: the folder name)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--add", action="store_true",
                   help="add categories to the model in --out (with its options; with --overwrite, refit ones it has)")
    p.add_argument("--overwrite", action="store_true", help="replace the model in --out (with --add: its categories named again)")
    add_lock_option(p)
    add_model_options(p)
    add_runtime_options(p)
    p.set_defaults(func=run, validate=validate)


def validate(args):
    """Checks that need several options together; run before any work (a ConfigError names the option)."""
    config_from_args(args)


def run(args):
    config = None if args.add else config_from_args(args)
    sets = training_sets(args.data, args.categories, args.good, args.category)
    fit_model(sets, args.out, config, add=args.add, overwrite=args.overwrite,
              options=given_model_options(args) if args.add else None, lock_timeout=args.lock_timeout,
              **runtime_from_args(args))
