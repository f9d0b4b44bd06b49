"""``structcore benchmark``: the paper's evaluation on MVTec AD, VisA or plain folders."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from .. import evaluation
from ..evaluation import DEFAULT_LAMBDAS, Ablations, BenchmarkOptions, Runtime, load_categories, run_benchmark
from ..files import check_writable_folder, exclusive
from ..thresholds import THRESHOLD_CALIBRATIONS
from .options import add_lock_option, add_model_options, add_runtime_options, config_from_args, runtime_from_args


def parse_layer_set(text: str) -> tuple[int, ...]:
    """``"-1,-3,-6"`` (commas or spaces) -> ``(-1, -3, -6)``."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        blocks = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"layer set {text!r}: expected block indices like -1,-3,-6") from None
    if not blocks:
        raise argparse.ArgumentTypeError("empty layer set")
    return blocks


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "benchmark",
        help="evaluate on MVTec AD / VisA / folders: paper tables, ablations, scores for figures",
        description=evaluation.__doc__.split("\n\n")[0],
    )
    # block lists such as "-1,-3,-6" must read as values, not as options
    p._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+([,\s]+-?\d+)+$")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="dataset root (MVTec AD or VisA layout)")
    g.add_argument("--dataset", choices=evaluation.DATASETS, default="mvtec")
    g.add_argument("--categories", nargs="+", help="categories (default: all under --data)")
    g.add_argument("--split-csv", help="VisA split file (default ROOT/split_csv/1cls.csv)")
    g.add_argument("--good", help="folder dataset: good training images")
    g.add_argument("--defective", nargs="+", help="folder dataset: folders of defective test images")
    g.add_argument("--test-good", help="folder dataset: good test images")
    g.add_argument("--masks", help="folder dataset: mask folder")
    g.add_argument("--name", default="folder", help="folder dataset: category name")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--coreset-ratios", type=float, nargs="+", help="coreset ratios to evaluate (default: --coreset-ratio)")
    g.add_argument("--seeds", type=int, nargs="+",
                   help="fit with each seed (projection, coreset and routing together) and report mean, std and "
                        "intervals over seeds (default: --seed); the first seed writes the scores, maps and ablations")
    g.add_argument("--bootstrap-resamples", type=int, default=2000, metavar="N",
                   help="stratified bootstrap resamples for the AUROC intervals and the paired test (default 2000)")
    g.add_argument("--feature-cache", help="feature cache folder (default <structcore cache>/features)")
    g.add_argument("--no-feature-cache", action="store_true", help="extract features every time, store nothing")
    g.add_argument("--max-maps", type=int, default=8, help="test maps saved per category for figures")
    g.add_argument("--no-report", action="store_true", help="do not write figures and report.html")
    g.add_argument("--compare-thresholds", nargs="+", choices=THRESHOLD_CALIBRATIONS, default=list(THRESHOLD_CALIBRATIONS),
                   help="threshold calibrations whose decisions are compared (default: all)")
    a = p.add_argument_group("ablations (class-separated, primary coreset ratio)")
    a.add_argument("--ablate-components", action="store_true", help="the 7 subsets of phi (Tables 5, 7)")
    a.add_argument("--ablate-distances", action="store_true", help="the 7 structural distances (Table 6)")
    a.add_argument("--ablate-lambda", type=float, nargs="*", metavar="L",
                   help=f"fixed lambda values vs auto (no values: {' '.join(f'{v:g}' for v in DEFAULT_LAMBDAS)})")
    a.add_argument("--ablate-layers", action="store_true", help="single-block sweep -1..-12 (Table 12)")
    a.add_argument("--layer-sets", type=parse_layer_set, nargs="+", default=[], metavar="BLOCKS",
                   help='block sets to compare, e.g. "-1,-3,-6,-9,-12" "-4"')
    a.add_argument("--ablate-calibration", action="store_true", help="in-sample vs leave-one-out vs held-out")
    a.add_argument("--ablate-descriptor-on", action="store_true", help="phi on the final map vs the raw patch grid")
    a.add_argument("--ablate-all", action="store_true", help="every ablation above")
    add_model_options(p)
    add_lock_option(p)
    add_runtime_options(p)
    p.set_defaults(func=run)
    return p


def ablations_from_args(args) -> Ablations:
    every = args.ablate_all
    lambdas: tuple[float, ...] = ()
    if args.ablate_lambda is not None:
        lambdas = tuple(args.ablate_lambda) or DEFAULT_LAMBDAS
    elif every:
        lambdas = DEFAULT_LAMBDAS
    return Ablations(
        components=args.ablate_components or every,
        distances=args.ablate_distances or every,
        lambdas=lambdas,
        layers=args.ablate_layers or every,
        layer_sets=tuple(tuple(s) for s in args.layer_sets),
        calibration=args.ablate_calibration or every,
        descriptor_on=args.ablate_descriptor_on or every,
    )


def run(args):
    categories = load_categories(
        args.dataset, root=args.data, categories=args.categories, split_csv=args.split_csv, good=args.good,
        defective=args.defective, test_good=args.test_good, masks=args.masks, name=args.name,
    )
    options = BenchmarkOptions(
        coreset_ratios=tuple(args.coreset_ratios or ()),
        seeds=tuple(args.seeds or ()),
        bootstrap_resamples=args.bootstrap_resamples,
        ablations=ablations_from_args(args),
        feature_cache=None if args.no_feature_cache else Path(args.feature_cache) if args.feature_cache else "default",
        max_maps=args.max_maps,
        dataset=args.dataset,
        data_root=args.data,
        write_report=not args.no_report,
        threshold_calibrations=tuple(args.compare_thresholds),
    )
    check_writable_folder(args.out, "--out")
    with exclusive(args.out, timeout=args.lock_timeout, log=print):  # one benchmark per --out at a time
        run_benchmark(categories, Path(args.out), config=config_from_args(args), options=options,
                      runtime=Runtime(**runtime_from_args(args)))
