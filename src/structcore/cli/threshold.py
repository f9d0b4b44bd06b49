"""``structcore threshold``: change a fitted model's decision thresholds without refitting."""

from __future__ import annotations

from ..jobs import set_thresholds
from ..scoring import SCORES
from ..thresholds import PIXEL
from .options import add_lock_option, finite_float, open_fraction


def register(sub):
    p = sub.add_parser("threshold", help="set a model's thresholds by false-reject rate or by value (no refit)")
    p.add_argument("--model", required=True, help="model folder (changed in place, atomically)")
    p.add_argument("--category", nargs="+", help="categories to change (default: all)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--false-reject-rate", type=open_fraction,
                     help="re-derive every threshold for this share of good images rejected")
    how.add_argument("--value", type=finite_float, help="set one threshold (--score) to this value")
    p.add_argument("--score", choices=[*SCORES, PIXEL], help="the threshold --value sets (default: the decision score's)")
    add_lock_option(p)
    p.set_defaults(func=run)


def run(args):
    set_thresholds(args.model, args.category, false_reject_rate=args.false_reject_rate, value=args.value,
                   score=args.score, lock_timeout=args.lock_timeout)
