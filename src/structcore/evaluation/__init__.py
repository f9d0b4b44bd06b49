"""The paper's evaluation (Tables 2-3, 5-12) on MVTec AD, VisA or plain folders.

:func:`run_benchmark` fits every category once per coreset ratio, scores the test images with the
category known and routed (:mod:`.protocol`), runs the chosen ablations (:mod:`.ablations`) and writes
a benchmark folder (:mod:`.schema` describes it; :mod:`.artifacts` writes it), then the HTML report.
With several seeds it refits and rescores once per further seed on the cached features and adds the
statistics over seeds (:mod:`.seeds`, :mod:`.statistics`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..backbones import load_backbone
from ..config import DetectorConfig
from ..data import Category, load_folder, load_mvtec, load_visa
from ..detector import FIT_PRECISION, Detector
from ..errors import DataError
from ..feature_cache import FeatureCache, default_folder
from ..features import resolve_precision
from ..runtime import resolve_runtime
from ..images import load_image
from ..scoring import ScoredImages
from ..thresholds import THRESHOLD_CALIBRATIONS
from ..weights import WeightsInfo
from . import artifacts
from .ablations import (
    DEFAULT_LAMBDAS, Ablations, Collected, category_ablations, coreset_summary, layer_sets, layer_sweep, ordered,
    over_seeds,
)
from .decisions import pooled
from .protocol import (
    EvaluatedCategory, FeatureSource, FittedCategory, RatioEvaluation, Setup, Timer, evaluate_category,
    fit_category, log, mean_of, number_text,
)
from .schema import ABLATIONS, SCHEMA, SCORES, SETTINGS, MapFile, ScoreFile, to_json
from .seeds import seed_statistics

__all__ = ["DEFAULT_LAMBDAS", "Ablations", "BenchmarkOptions", "Runtime", "load_categories", "run_benchmark"]
DATASETS = ("mvtec", "visa", "folder")


@dataclass(frozen=True)
class Runtime:
    """How (not what) the benchmark computes: backbone weights file, precisions, device, batching.

    ``precision``: the backbone's for the test images; ``fit_precision``: for the train images
    (default :data:`structcore.detector.FIT_PRECISION`); ``runtime``: the backbone's runtime
    (:func:`structcore.runtime.resolve_runtime`).
    """

    weights: str | Path | None = None
    precision: str = "auto"
    fit_precision: str | None = None
    device: str = "auto"
    batch_size: int = 8
    num_workers: int = 2
    progress: bool = True
    compile: bool = False
    runtime: str | None = None


@dataclass(frozen=True)
class BenchmarkOptions:
    """What the benchmark evaluates and writes.

    ``coreset_ratios``: the ratios to fit (empty: the config's); the first is the primary one (headline,
    score files, maps, ablations). ``seeds``: the seeds to fit with (empty: the config's); the first is
    the primary one, every further seed refits and rescores (projection, coreset and routing seeds
    together). ``bootstrap_resamples``: resamples of the AUROC intervals and the paired bootstrap.
    ``feature_cache``: a folder, ``"default"`` (``<structcore cache>/features``) or None (no cache).
    ``max_maps``: test images kept per category in ``maps/``. ``threshold_calibrations``: the threshold
    calibrations whose decisions are compared (the config's own is always among them).
    """

    coreset_ratios: tuple[float, ...] = ()
    seeds: tuple[int, ...] = ()
    bootstrap_resamples: int = 2000
    ablations: Ablations = field(default_factory=Ablations)
    feature_cache: str | Path | None = "default"
    max_maps: int = 8
    dataset: str = "custom"
    data_root: str | Path | None = None
    write_report: bool = True
    threshold_calibrations: tuple[str, ...] = THRESHOLD_CALIBRATIONS


def load_categories(
    dataset: str,
    *,
    root: str | Path | None = None,
    categories: list[str] | None = None,
    split_csv: str | Path | None = None,
    good: str | Path | None = None,
    defective: list[str | Path] | None = None,
    test_good: str | Path | None = None,
    masks: str | Path | None = None,
    name: str = "folder",
) -> list[Category]:
    """The categories of ``dataset``: "mvtec" or "visa" under ``root``, or "folder" from plain folders
    (``good``, ``defective``, ``test_good``, ``masks``, see :func:`structcore.data.load_folder`)."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset kind {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset == "folder":
        if not good:
            raise DataError("a folder dataset needs a folder of good images (--good FOLDER; and optionally "
                            "--defective, --test-good, --masks)")
        return [load_folder(good, defective, test_good, masks, name)]
    if not root:
        raise DataError(f"the {dataset} dataset needs its root folder (--data ROOT)")
    if dataset == "visa":
        return load_visa(Path(root), categories, split_csv)
    return load_mvtec(Path(root), categories)


def coreset_settings(config: DetectorConfig, ratios: tuple[float, ...]) -> dict[str, DetectorConfig]:
    """The config of each coreset setting by its results key: ``"0.01"``, or ``"size<N>"`` for a fixed size."""
    if config.coreset_size is not None:
        return {f"size{config.coreset_size}": config}
    ratios = ratios or (config.coreset_ratio,)
    return {str(float(r)): replace(config, coreset_ratio=float(r), coreset_size=None) for r in ratios}


def run_benchmark(
    categories: list[Category],
    out: str | Path,
    *,
    config: DetectorConfig | None = None,
    options: BenchmarkOptions | None = None,
    runtime: Runtime | None = None,
    backbone=None,
) -> dict:
    """Run the benchmark on loaded categories and write everything under ``out``; returns results.json's dict.

    ``backbone``: ``(VisionTransformer, WeightsInfo)`` to use instead of loading ``config.backbone``.
    """
    if not categories:
        raise DataError("no categories to benchmark")
    t_wall = time.perf_counter()
    config, options, runtime = config or DetectorConfig(), options or BenchmarkOptions(), runtime or Runtime()
    seeds = tuple(dict.fromkeys(options.seeds)) or (config.seed,)
    if options.bootstrap_resamples < 1:
        raise ValueError(f"bootstrap_resamples must be positive, got {options.bootstrap_resamples}")
    config = replace(config, seed=seeds[0])
    out = Path(out)
    weights_info, setup = _setup(config, options, runtime, backbone)
    features, timer = setup.features, setup.timer
    out.mkdir(parents=True, exist_ok=True)
    log(f"benchmark: {len(categories)} categor{'y' if len(categories) == 1 else 'ies'}, coreset "
        f"{', '.join(setup.detectors)}, {config.backbone} ({weights_info.source}), {features.fit_precision} fit, "
        f"{features.precision} test on {features.device}, feature cache {features.cache.folder or 'off'}")

    fitted = {cat.name: fit_category(setup, cat) for cat in categories}
    blocks = {s: {k: {"categories": {}} for k in setup.detectors} for s in SETTINGS}
    collected = Collected()
    for cat in categories:
        fit = fitted.pop(cat.name)
        ev = evaluate_category(setup, cat, fit)
        if ev is None:
            continue
        for key, r in ev.ratios.items():
            blocks["class_separated"][key]["categories"][cat.name] = r.separated.to_json()
            blocks["routed"][key]["categories"][cat.name] = r.routed.to_json()
        _write_category_files(out, setup, fit, ev, options.max_maps)
        if options.ablations.on_scores:
            with timer("ablations"):
                variants = category_ablations(options.ablations, setup.config, fit, ev, setup.primary, timer)
                for name, v in variants.items():
                    collected.add(name, cat.name, v, ev.labels)
    _add_means(blocks)
    ablations = {}
    if options.ablations.any or len(setup.detectors) > 1:  # several ratios: the coreset table
        with timer("ablations"):
            ablations = _ablation_blocks(setup, categories, options.ablations, collected, blocks["class_separated"])
    per_seed = {seeds[0]: blocks["class_separated"]}
    seed_ablations = [collected]
    for seed in seeds[1:]:
        with timer("seeds"):
            per_seed[seed], more = _seed_blocks(setup, categories, seed, options.ablations)
            seed_ablations.append(more)
    if len(seeds) > 1:
        _add_seed_spread(ablations, seed_ablations, list(seeds))
    results = to_json({
        "schema": SCHEMA,
        "dataset": options.dataset,
        "data_root": None if options.data_root is None else str(options.data_root),
        "category_names": [c.name for c in categories],
        **_headline(blocks, setup.primary),
        "seeds": list(seeds),
        "bootstrap_resamples": options.bootstrap_resamples,
        "statistics": seed_statistics(per_seed),
        "seed_results": {str(k): v for k, v in per_seed.items()},
        "config": asdict(setup.config),
        "coreset_ratios": [d.config.coreset_ratio for d in setup.detectors.values()],
        "primary": setup.primary,
        "weights": {"name": weights_info.name, "sha256": weights_info.sha256, "source": weights_info.source,
                    "origin": getattr(weights_info, "origin", "")},
        "precision": features.precision,
        "fit_precision": features.fit_precision,
        "runtime": features.runtime,
        "device": str(features.device),
        "feature_cache": {"folder": None if features.cache.folder is None else str(features.cache.folder),
                          "enabled": features.cache.enabled, **features.cache.stats.as_dict()},
        "results": blocks,
        "ablations": ablations,
        "timings": _timings(setup, time.perf_counter() - t_wall),
    })
    artifacts.write_results(out, results)
    artifacts.write_tables(out, results)
    print(summary_text(results), flush=True)
    if options.write_report:
        _report(out)
    return results


def _setup(config: DetectorConfig, options: BenchmarkOptions, runtime: Runtime, backbone) -> tuple[WeightsInfo, Setup]:
    """The backbone's weights record, and the detectors (one per coreset setting) and feature source."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if runtime.device == "auto" else runtime.device)
    precision = resolve_precision(runtime.precision, device)
    fit_precision = resolve_precision(runtime.fit_precision or FIT_PRECISION, device)
    backend = resolve_runtime(runtime.runtime, device)
    vit, weights_info = backbone if backbone is not None else load_backbone(config.backbone, runtime.weights)
    config = config.for_weights(weights_info)
    folder = default_folder() if options.feature_cache == "default" else options.feature_cache
    timer = Timer()
    detector_kwargs = dict(weights=runtime.weights, precision=precision, fit_precision=fit_precision,
                           device=str(device), batch_size=runtime.batch_size, num_workers=runtime.num_workers,
                           progress=runtime.progress, runtime=backend)
    setup = Setup(
        detectors={k: Detector(c, **detector_kwargs) for k, c in coreset_settings(config, options.coreset_ratios).items()},
        features=FeatureSource(vit, weights_info.sha256, config, FeatureCache(folder), timer, precision=precision,
                               fit_precision=fit_precision, device=device, batch_size=runtime.batch_size,
                               num_workers=runtime.num_workers, progress=runtime.progress, compile=runtime.compile,
                               runtime=backend),
        timer=timer,
        new_detector=lambda cfg: Detector(cfg, **{**detector_kwargs, "progress": False}),
        calibration_ablation=options.ablations.calibration,
        threshold_calibrations=tuple(dict.fromkeys((config.threshold_calibration, *options.threshold_calibrations))),
        bootstrap_resamples=options.bootstrap_resamples,
    )
    return weights_info, setup


def _seed_blocks(setup: Setup, categories: list[Category], seed: int, options: Ablations) -> tuple[dict, Collected]:
    """Class-separated blocks (with means) of every coreset setting refitted and rescored with ``seed``,
    and the ablations (all but calibration) of its primary setting."""
    detectors = {k: setup.new_detector(replace(d.config, seed=seed)) for k, d in setup.detectors.items()}
    run = replace(setup, detectors=detectors, calibration_ablation=False, category_timings={})
    log(f"seed {seed}: refit and rescore")
    fitted = {cat.name: fit_category(run, cat) for cat in categories}
    blocks = {k: {"categories": {}} for k in detectors}
    collected, options = Collected(), replace(options, calibration=False)
    for cat in categories:
        fit = fitted.pop(cat.name)
        ev = evaluate_category(run, cat, fit)
        if ev is not None:
            for key, r in ev.ratios.items():
                blocks[key]["categories"][cat.name] = r.separated.to_json()
            if options.on_scores:
                for name, v in category_ablations(options, run.config, fit, ev, setup.primary, setup.timer).items():
                    collected.add(name, cat.name, v, ev.labels)
    sets = layer_sets(options, setup.features.depth)
    if sets:
        with setup.timer("ablation:layers"):
            layer_sweep(categories, run.config, sets, setup.features, setup.new_detector, collected)
    for block in blocks.values():
        block["mean"] = mean_of(list(block["categories"].values()))
        _add_pooled_decisions(block)
    return blocks, collected


def _add_seed_spread(ablations: dict, per_seed: list[Collected], seeds: list[int]) -> None:
    """Each score-level ablation variant's I-AUROC over the seeds, as ``variants[label]["seeds"]``."""
    for name, variants in over_seeds(per_seed).items():
        ablations[name]["seeds"] = seeds
        for label, summary in variants.items():
            ablations[name]["variants"][label]["seeds"] = summary


def _write_category_files(out: Path, setup: Setup, fit: FittedCategory, ev: EvaluatedCategory, max_maps: int):
    """``scores/<cat>.json`` and ``maps/<cat>.npz`` of the primary coreset setting."""
    det, r = setup.detectors[setup.primary], ev.ratios[setup.primary]
    artifacts.write_scores(out, _score_file(ev.category, det, fit, r, ev.labels))
    chosen = artifacts.pick_examples(ev.category, max_maps)
    if chosen:
        artifacts.write_maps(out, _map_file(ev.category, det, r.scored, ev.masks, chosen))


def _add_means(blocks: dict) -> None:
    """Every block's ``mean``, and the routed setting's share of all test images routed right."""
    for setting in SETTINGS:
        for block in blocks[setting].values():
            block["mean"] = mean_of(list(block["categories"].values()))
    for block in blocks["class_separated"].values():
        _add_pooled_decisions(block)
    for routed in blocks["routed"].values():
        total = sum(c["n_test"] for c in routed["categories"].values())
        right = sum(c["routed_to"].get(name, 0) for name, c in routed["categories"].items())
        routed["mean"]["routing_accuracy_overall"] = right / total if total else None


def _add_pooled_decisions(block: dict) -> None:
    """A class-separated block's ``mean.decisions``: each threshold calibration's counts pooled over categories."""
    cats = [c for c in block["categories"].values() if c.get("decisions")]
    if cats:
        block["mean"]["decisions"] = {m: pooled([c["decisions"][m] for c in cats]) for m in cats[0]["decisions"]}


def _headline(blocks: dict, primary: str) -> dict:
    """Class-separated results at the primary ratio, with routing accuracy taken from the routed setting."""
    sep, rout = blocks["class_separated"][primary], blocks["routed"][primary]
    return {
        "categories": {n: {**c, "routing_accuracy": rout["categories"][n]["routing_accuracy"]}
                       for n, c in sep["categories"].items()},
        "mean": {**sep["mean"], "routing_accuracy": rout["mean"]["routing_accuracy"],
                 "routing_accuracy_overall": rout["mean"]["routing_accuracy_overall"]},
    }


def _ablation_blocks(setup: Setup, categories: list[Category], options: Ablations, collected: Collected,
                     class_separated: dict) -> dict:
    """results.json's ``ablations``: the layer sweep (run here), the collected ones and the coreset summary."""
    timer = setup.timer
    sets = layer_sets(options, setup.features.depth)
    if sets:
        with timer("ablation:layers"):
            layer_sweep(categories, setup.config, sets, setup.features, setup.new_detector, collected)
    blocks = collected.summary(setup.config.coreset_ratio)
    with timer("ablation:coreset"):
        blocks["coreset"] = coreset_summary(
            class_separated, {k: d.config.coreset_ratio for k, d in setup.detectors.items()},
            {k: timer.get(f"fit[{k}]") for k in setup.detectors},
        )
    return ordered(blocks)


def _score_file(cat: Category, det: Detector, fit: FittedCategory, r: RatioEvaluation, labels) -> ScoreFile:
    cfg, model, record = det.config, det.categories_[cat.name], fit.calibration
    t = model.thresholds
    return ScoreFile(
        category=cat.name, coreset_ratio=cfg.coreset_ratio, calibration=cfg.calibration,
        threshold_calibration=t.method, false_reject_rate=t.false_reject_rate,
        lam=model.calibration.lam, thresholds={s: t.values[s] for s in SCORES},
        threshold_train={s: t.scores[s] for s in SCORES},
        train_paths=[str(cat.train[i]) for i in record.ids], train=record.scores,
        paths=[str(s.path) for s in cat.test], labels=labels, defect_types=[s.defect for s in cat.test],
        test=r.scored.scores, routed_to=r.routing.routes, routed=r.routing.scores,
    )


def _map_file(cat: Category, det: Detector, scored: ScoredImages, masks, chosen: list[int]) -> MapFile:
    pre = det.config.preprocess
    masks = masks[chosen] if masks is not None else np.zeros((len(chosen), *scored.maps.shape[1:]), bool)
    return MapFile(
        category=cat.name, maps=scored.maps[chosen], masks=masks, has_masks=cat.has_masks,
        images=np.stack([np.asarray(pre.view(load_image(cat.test[i].path))) for i in chosen]),
        paths=[str(cat.test[i].path) for i in chosen], labels=np.array([cat.test[i].label for i in chosen]),
        defect_types=[cat.test[i].defect for i in chosen], indices=np.array(chosen),
        scores={s: np.asarray(scored.scores[s])[chosen] for s in SCORES},
        thresholds={s: det.categories_[cat.name].thresholds.values[s] for s in SCORES},
    )


def _timings(setup: Setup, wall: float) -> dict:
    t, stats = setup.timer, setup.features.cache.stats
    return {
        "wall_s": round(wall, 3),
        "feature_extraction_s": t.get("feature_extraction"),
        "backbone_s": round(stats.extract_s, 3),
        "cache_read_s": round(stats.load_s, 3),
        "fit_s": t.get("fit"),
        "fit_s_by_ratio": {k: t.get(f"fit[{k}]") for k in setup.detectors},
        "scoring_s": t.get("scoring"),
        "metrics_s": t.get("metrics"),
        "ablations_s": t.get("ablations"),
        "seeds_s": t.get("seeds"),
        "ablations": {n: t.get(f"ablation:{n}") for n in ABLATIONS if f"ablation:{n}" in t.totals},
        "threshold_calibration_s": {m: t.get(f"threshold_calibration[{m}]") for m in setup.threshold_calibrations},
        "categories": setup.category_timings,
    }


def _report(out: Path):
    from ..report import write_report

    try:
        path = write_report(out)
    except Exception as e:  # the results are written; a broken figure must not lose them
        print(f"structcore: warning: report not written: {type(e).__name__}: {e}", file=sys.stderr)
        return
    log(f"report: {path}")


def summary_text(results: dict) -> str:
    """The headline numbers of a results.json as a fixed-width text table (printed at the end of a run)."""
    key = results["primary"]
    sep = results["results"]["class_separated"][key]
    rout = results["results"]["routed"][key]
    lines = [f"\nStructCore benchmark, coreset {key}, {results['weights']['name']} ({results['weights']['source']}), "
             f"{results['fit_precision']} fit, {results['precision']} test on {results['device']}"]
    head = f"{'category':<16}{'base':>8}{'struct':>8}{'hybrid':>8}{'P-AUROC':>9}{'AUPRO':>8}{'routing':>9}{'routed hyb':>11}"
    lines += ["I-AUROC (%)".rjust(40), head, "-" * len(head)]
    for name in [*sep["categories"], "Mean"]:
        r = sep["mean"] if name == "Mean" else sep["categories"][name]
        q = rout["mean"] if name == "Mean" else rout["categories"][name]
        px = r["pixel"]
        lines.append(
            f"{name:<16}{number_text(r['image']['base']['auroc'], 100, 1):>8}{number_text(r['image']['struct']['auroc'], 100, 1):>8}"
            f"{number_text(r['image']['hybrid']['auroc'], 100, 1):>8}{number_text(px and px['auroc'], 100, 1):>9}"
            f"{number_text(px and px['aupro'], 100, 1):>8}{number_text(q['routing_accuracy'], 100, 1):>9}"
            f"{number_text(q['image']['hybrid']['auroc'], 100, 1):>11}"
        )
    t, fc = results["timings"], results["feature_cache"]
    lines.append(
        f"time: wall {t['wall_s']:.1f} s = features {t['feature_extraction_s']:.1f} s (backbone {t['backbone_s']:.1f} s, "
        f"cache read {t['cache_read_s']:.1f} s; {fc['hits']} hits, {fc['misses']} misses), fit {t['fit_s']:.1f} s, "
        f"scoring {t['scoring_s']:.1f} s, metrics {t['metrics_s']:.1f} s, ablations {t['ablations_s']:.1f} s"
    )
    for name, ab in results["ablations"].items():
        parts = [f"{k}: {number_text(v['mean']['hybrid']['auroc'], 100, 2)}" for k, v in ab["variants"].items()]
        lines.append(f"ablation {name} (mean hybrid I-AUROC %): " + ", ".join(parts))
    return "\n".join(lines)
