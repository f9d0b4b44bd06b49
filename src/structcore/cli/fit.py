"""``structcore fit``: fit a model folder on good images."""

from __future__ import annotations

from functools import partial

from ..errors import ConfigError
from ..feature_cache import default_folder
from ..jobs import fit_model, training_sets, update_category
from .options import (add_engine_options, add_lock_option, add_model_options, add_runtime_options, config_from_args,
                      given_model_options, positive_float, runtime_from_args)


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
    p.add_argument("--update", metavar="CATEGORY",
                   help="refit CATEGORY of the model in --out on its recorded train images plus the good images of "
                   "--good (e.g. confirmed false rejects), with the model's options")
    p.add_argument("--feature-cache", help="folder keeping the train images' backbone tokens, so --update and refits "
                   "are cheap (default <structcore cache>/features)")
    p.add_argument("--no-feature-cache", action="store_true", help="keep no backbone tokens on disk")
    add_lock_option(p)
    add_model_options(p)
    add_runtime_options(p)
    g = add_engine_options(p, "one task per category, merged into one model folder here")
    g.add_argument("--cpus-per-task", type=positive_float, default=1.0,
                   help="with --engine ray: CPUs each category's task holds (default %(default)s)")
    p.set_defaults(func=run, validate=validate)


def validate(args):
    """Checks that need several options together; run before any work (a ConfigError names the option)."""
    config_from_args(args)
    if args.update and (not args.good or args.data or args.add):
        raise ConfigError("--update CATEGORY takes the new good images from --good FOLDER (no --data, no --add)")
    if args.update and args.engine == "ray":
        raise ConfigError("--update refits one category here; drop --engine ray")


def run(args):
    cache = None if args.no_feature_cache else args.feature_cache or default_folder()
    runtime = {**runtime_from_args(args), "feature_cache": cache}
    if args.update:
        sets = training_sets(good=args.good, category=args.update)
        update_category(args.out, args.update, sets[args.update], options=given_model_options(args),
                        lock_timeout=args.lock_timeout, **runtime)
        return
    config = None if args.add else config_from_args(args)
    sets = training_sets(args.data, args.categories, args.good, args.category)
    fit = fit_model
    if args.engine == "ray":
        from ..distributed import fit_ray

        fit = partial(fit_ray, address=args.address, cpus_per_task=args.cpus_per_task)
    fit(sets, args.out, config, add=args.add, overwrite=args.overwrite,
        options=given_model_options(args) if args.add else None, lock_timeout=args.lock_timeout, **runtime)
