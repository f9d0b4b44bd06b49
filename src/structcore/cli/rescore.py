"""``structcore rescore``: StructCore over another detector's anomaly maps (.npy files)."""

from __future__ import annotations

from ..maps import POOLINGS
from ..rescore import StructCoreScorer, rescore_folders
from ..structure import COMPONENTS, DISTANCES


def register(sub):
    p = sub.add_parser("rescore", help="rescore another detector's anomaly maps (.npy) with StructCore")
    p.add_argument("--train-maps", required=True, help="folder of train-good maps (*.npy, searched recursively)")
    p.add_argument("--test-maps", required=True, help="folder of test maps; subfolders good/ and others label them")
    p.add_argument("--out", required=True, help="output folder: rescored.csv, scores/NAME.json, figure2_NAME.png")
    p.add_argument("--name", default="rescored", help="name of the set in the outputs (default %(default)s)")
    p.add_argument("--components", nargs="+", choices=COMPONENTS, default=list(COMPONENTS))
    p.add_argument("--top-ratio", type=float, default=0.01)
    p.add_argument("--distance", choices=DISTANCES, default="mahalanobis")
    p.add_argument("--lam", type=float, default=None, help="fixed hybrid weight (default: lambda_auto)")
    p.add_argument("--false-reject-rate", type=float, default=0.01,
                   help="share of good images you accept to see rejected (thresholds from the train maps)")
    p.add_argument("--pooling", choices=POOLINGS, default="max", help="base score of a map")
    p.set_defaults(func=run)


def run(args):
    scorer = StructCoreScorer(args.components, args.top_ratio, args.distance, args.lam, args.false_reject_rate, args.pooling)
    s = rescore_folders(args.train_maps, args.test_maps, args.out, args.name, scorer)
    t = s["thresholds"]
    print(f"{args.name}: fitted on {s['n_train']} train-good maps, lambda {s['lambda']:.4g}, "
          f"thresholds base {t['base']:.4g} hybrid {t['hybrid']:.4g}")
    print(f"{s['n_test']} test maps: rejected base {s['rejected']['base']}, hybrid {s['rejected']['hybrid']}")
    if "auroc" in s:
        print("I-AUROC " + ", ".join(f"{k} {v:.4f}" for k, v in s["auroc"].items()))
    if s["figure"]:
        print(f"Figure 2: {s['figure']}")
    print(f"results in {args.out}")
