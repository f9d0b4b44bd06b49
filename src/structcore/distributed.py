"""Scale-out on Ray: batch scoring on an actor pool (Ray Data), one fit task per category, and Ray Serve
replicas of an ASGI app.

Ray is the optional extra ``structcore[ray]`` and is imported inside the functions, so the rest of the
library works without it. Workers load the model folder (or the backbone) by path themselves; no live
model is ever pickled. On a multi-node cluster the model folder, the images and ``out`` must be on a
file system every node sees, with structcore installed on every node.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .detector import Detector, Prediction
from .errors import CalibrationWarning, ConfigError, DataError, StructcoreError, WeightsError
from .files import atomic_write, atomic_write_text, check_writable_folder, exclusive, fault_point
from .jobs import (COLUMNS, RESULTS, _NUMBERS, _csv_line, _save_npy, _score_chunk, collect_images, failure_row,
                   fit_model, log_fitted, plan_resume, prediction_row, run_key)

PARQUET = "predictions.parquet"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'structcore[ray]'") from None
    return ray


def connect(address: str | None = None, **init_options):
    """The ``ray`` module, connected: to the cluster at ``address`` (``auto``: the one this machine
    runs), or a new local one (no dashboard); an existing connection is kept as it is."""
    ray = _import_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, **init_options)
    return ray


def _threads(cpus: float) -> int:
    """torch threads for a worker holding ``cpus`` CPUs (at least one)."""
    return max(1, math.floor(cpus))


def apply_run_thresholds(detector: Detector, category: str | None, false_reject_rate: float | None,
                         threshold: float | None):
    """Thresholds for one run, as ``predict --false-reject-rate/--threshold`` set them (the model file is
    unchanged): ``category``'s, or every category's."""
    if false_reject_rate is not None and threshold is not None:
        raise ConfigError("give --false-reject-rate or --threshold, not both")
    if false_reject_rate is None and threshold is None:
        return
    for name in [category] if category else sorted(detector.categories_):
        detector.set_thresholds(name, false_reject_rate=false_reject_rate, value=threshold)


# -- batch scoring ----------------------------------------------------------------------------------
class BatchScorer:
    """One actor of the pool: loads the model folder once, then scores batches of image paths into rows
    with :data:`structcore.jobs.COLUMNS` (a row with its error for an image that cannot be read)."""

    def __init__(self, model_folder: str, category: str | None, out: str, write_maps: bool,
                 run_thresholds: tuple[float | None, float | None], settings: dict, threads: int):
        torch.set_num_threads(threads)
        self.detector = Detector.load(model_folder, **settings)
        apply_run_thresholds(self.detector, category, *run_thresholds)
        self.category = category
        self.out = Path(out)
        self.write_maps = write_maps

    def __call__(self, batch: dict[str, np.ndarray]):
        paths = [Path(str(p)) for p in batch["image"]]
        names = [str(n) for n in batch["name"]]
        rows = [self._row(path, name, result)
                for path, name, result in zip(paths, names, _score_chunk(self.detector, paths, self.category))]
        fault_point("ray-batch")  # kill tests: the batch is scored (and its maps written) but not returned
        return rows_table(rows)

    def _row(self, path: Path, name: str, result: Prediction | DataError) -> dict:
        if isinstance(result, DataError):
            return failure_row(path, result)
        row = {**prediction_row(result, name), "map": "", "overlay": "", "mask": ""}
        if self.write_maps:
            row["map"] = f"maps/{name}.npy"
            original = result.original_map()
            atomic_write(self.out / row["map"], lambda tmp: _save_npy(tmp, original))
        return row


def rows_table(rows: list[dict]):
    """Rows with :data:`~structcore.jobs.COLUMNS` as a pyarrow Table (scores float64, the rest strings;
    missing values are nulls)."""
    import pyarrow as pa

    return pa.table({c: pa.array([r[c] for r in rows], type=pa.float64() if c in _NUMBERS else pa.string())
                     for c in COLUMNS})


def _scored_before(out: Path, row: dict, name: str, write_maps: bool) -> bool:
    """An earlier row this run need not score again: scored, not failed, and with its map on disk under
    this run's name for the image when maps are asked for."""
    if row["error"] or None in (row["base_score"], row["hybrid_score"]):
        return False
    return not write_maps or (row["map"] == f"maps/{name}.npy" and (out / row["map"]).is_file())


def predict_ray(model_folder: str | Path, inputs: list[str | Path], out: str | Path, *, category: str | None = None,
                address: str | None = None, actors: int = 2, cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0,
                batch_size: int = 8, write_maps: bool = False, false_reject_rate: float | None = None,
                threshold: float | None = None, retries: int = 3, runtime_env: dict | None = None,
                progress: bool = True, lock_timeout: float | None = None, log: Callable[[str], None] = print,
                warn: Callable[[str], None] | None = None, **settings) -> list[dict]:
    """Score image files/folders on a Ray Data actor pool; write ``predictions.parquet`` and
    ``predictions.csv`` in ``out`` (and ``maps/*.npy``, original frame, with ``write_maps``).

    ``actors`` actors, each holding ``cpus_per_actor`` CPUs (fractions allowed) and ``gpus_per_actor``
    GPUs, load ``model_folder`` once and score ``batch_size`` images per call; ``settings`` are the
    runtime options of :meth:`Detector.load` (weights, precision, device, num_workers, compile).
    ``retries``: restarts of a dead actor and retries of its batches (Ray's ``max_restarts`` and
    ``max_task_retries``). ``runtime_env``: the actors' Ray runtime environment (e.g. env vars).

    Rows have the columns of local predict (``structcore.jobs.COLUMNS``; no overlays or masks). Every
    image gets exactly one row: rows are collected in this process, keyed by image path, so a batch Ray
    retries after a worker died is counted once; an unreadable image gets a row with decision ``error``
    (also passed to ``warn``). Rows are appended to ``predictions.csv`` as batches arrive, so a rerun into
    the same ``out`` with the same model and settings skips the images already scored (the failed ones
    are tried again). Holds ``out``'s lock throughout, like :func:`structcore.jobs.predict_files`; at the
    end both files hold the rows an earlier run left for other images, then this run's inputs in input
    order. Returns this run's rows.
    """
    warn = warn or (lambda m: print(f"structcore: warning: {m}", file=sys.stderr))
    if actors < 1 or cpus_per_actor <= 0 or gpus_per_actor < 0 or batch_size < 1 or retries < 0:
        raise ConfigError(f"predict on Ray needs actors >= 1, cpus_per_actor > 0, gpus_per_actor >= 0, batch_size >= 1 "
                          f"and retries >= 0; got {actors}, {cpus_per_actor}, {gpus_per_actor}, {batch_size}, {retries}")
    model_folder = Path(model_folder).absolute()
    paths = [p.absolute() for p in collect_images(inputs)]
    detector = Detector.load(model_folder, progress=False, **settings)  # no backbone: checks and the run key
    apply_run_thresholds(detector, category, false_reject_rate, threshold)
    if category is not None:
        detector._require_fitted(category)
    out = check_writable_folder(out, "--out").absolute()
    with exclusive(out, timeout=lock_timeout, log=log):
        kept, names, done = plan_resume(out, run_key(detector, category), paths,
                                        lambda row, name: _scored_before(out, row, name, write_maps), log)
        (out / "predictions.json").unlink(missing_ok=True)  # a local run's, now stale
        todo = [p for p in paths if str(p) not in done]
        started = time.perf_counter()
        new = _score_on_ray(todo, names, out, dict(
            model_folder=str(model_folder), category=category, out=str(out), write_maps=write_maps,
            run_thresholds=(false_reject_rate, threshold),
            settings={**settings, "precision": detector.precision, "batch_size": batch_size, "progress": False},
            threads=_threads(cpus_per_actor)),
            address=address, actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor,
            batch_size=batch_size, retries=retries, runtime_env=runtime_env, progress=progress, warn=warn)
        missing = [str(p) for p in todo if str(p) not in new]
        if missing:
            raise StructcoreError(f"Ray returned no row for {len(missing)} of {len(todo)} images (first: {missing[0]}); "
                                  f"the rows it did return are in {out / RESULTS}: run again to score the rest")
        rows = [done.get(str(p)) or new[str(p)] for p in paths]
        _write_results(out, [*kept, *rows])
    failed = sum(bool(r["error"]) for r in rows)
    scored = len(rows) - failed
    log(f"{len(todo)} images scored on Ray in {time.perf_counter() - started:.1f} s ({actors} actors); "
        f"{sum(r['decision'] == 'reject' for r in rows)} of {scored} rejected"
        + (f"; {failed} could not be scored (decision 'error')" if failed else "") + f"; results in {out}")
    if not scored:
        raise DataError(f"none of the {len(rows)} images could be scored; the reason for each is in {out / RESULTS}")
    return rows


def _score_on_ray(todo: list[Path], names: dict[str, str], out: Path, scorer: dict, *, address, actors, cpus_per_actor,
                  gpus_per_actor, batch_size, retries, runtime_env, progress, warn) -> dict[str, dict]:
    """Rows of ``todo`` by image path, appended to ``out``'s journal as Ray returns them (once each)."""
    new: dict[str, dict] = {}
    if not todo:
        return new
    ray = connect(address)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    items = [{"image": str(p), "name": names[str(p)]} for p in todo]
    dataset = ray.data.from_items(items, override_num_blocks=min(math.ceil(len(items) / batch_size), 4096))
    options = {"runtime_env": runtime_env} if runtime_env else {}
    if gpus_per_actor:
        options["num_gpus"] = gpus_per_actor
    with warnings.catch_warnings():  # Ray 2.60 names no parameter for these yet (structcore[ray] pins < 2.61)
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        scored = dataset.map_batches(
            BatchScorer, fn_constructor_kwargs=scorer, batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor,
            max_restarts=retries, max_task_retries=retries, **options)
    with open(out / RESULTS, "a", newline="", encoding="utf-8") as journal:
        try:
            for table in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
                for row in table.to_pylist():
                    if row["image"] in new:  # a retried batch's second copy
                        continue
                    row = {c: "" if row[c] is None and c not in _NUMBERS else row[c] for c in COLUMNS}
                    if row["error"]:
                        warn(row["error"])
                    new[row["image"]] = row
                    journal.write(_csv_line(row))
                journal.flush()
        except ray.exceptions.RayError as e:
            journal.flush()
            raise StructcoreError(f"the Ray job stopped after {len(new)} of {len(todo)} images ({type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[-1] if str(e).strip() else e!r}); those rows are in "
                                  f"{out / RESULTS}: run again into the same --out to score the rest") from e
    return new


def _write_results(out: Path, rows: list[dict]):
    """``predictions.csv`` and ``predictions.parquet``, each written whole and swapped in."""
    import pyarrow.parquet as pq

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / RESULTS, text.getvalue())
    table = rows_table(rows)
    atomic_write(out / PARQUET, lambda tmp: pq.write_table(table, tmp))


# -- fitting ----------------------------------------------------------------------------------------
def fit_category_task(config, name: str, paths: list[str], settings: dict, projection: torch.Tensor | None,
                      threads: int):
    """Fit one category in a fresh Detector (the backbone loaded here, by name and weights path); the
    fitted category, the weights record and the projection, for the driver to merge."""
    torch.set_num_threads(threads)
    detector = Detector(config, **settings)
    detector.projection_ = projection
    with warnings.catch_warnings():  # the driver repeats them from the model's own record
        warnings.simplefilter("ignore", CalibrationWarning)
        model = detector.fit(name, paths)
    return model, detector.weights_info_, detector.projection_


def fit_ray(sets: dict[str, list[Path]], out: str | Path, config=None, *, address: str | None = None,
            cpus_per_task: float = 1.0, retries: int = 1, runtime_env: dict | None = None, add: bool = False,
            overwrite: bool = False, options: dict | None = None, lock_timeout: float | None = None,
            log: Callable[[str], None] = print, **runtime) -> Detector:
    """:func:`structcore.jobs.fit_model` with one Ray task per category (``cpus_per_task`` CPUs each,
    ``retries`` retries of a task whose worker died): the fitted categories are merged here into one
    Detector and written with the same lock and atomic model write as a local fit. Same seeds, same
    fp32 fit: the same model as a local fit."""
    if cpus_per_task <= 0 or retries < 0:
        raise ConfigError(f"fit on Ray needs cpus_per_task > 0 and retries >= 0; got {cpus_per_task}, {retries}")

    def fit_categories(detector: Detector, sets: dict[str, list[Path]], log: Callable[[str], None]):
        ray = connect(address)
        task = ray.remote(fit_category_task).options(num_cpus=cpus_per_task, max_retries=retries,
                                                     **({"runtime_env": runtime_env} if runtime_env else {}))
        settings = {**runtime, "fit_precision": detector.fit_precision, "progress": False, "feature_cache": None}
        if detector.feature_cache.enabled:
            settings["feature_cache"] = str(detector.feature_cache.folder)
        refs = {name: task.remote(detector.config, name, [str(p) for p in paths], settings, detector.projection_,
                                  _threads(cpus_per_task)) for name, paths in sets.items()}
        for name, ref in refs.items():
            # a deep copy: the numpy arrays Ray hands over are read-only views of its object store
            model, weights, projection = copy.deepcopy(ray.get(ref))
            if detector.weights_info_ is not None and weights.sha256 != detector.weights_info_.sha256:
                raise WeightsError(f"category {name!r} was fitted on a worker with {detector.config.backbone} weights "
                                   f"sha256 {weights.sha256}, the model has {detector.weights_info_.sha256}; give "
                                   "every worker the model's weights file with --weights")
            detector.use_weights(weights)
            if detector.projection_ is None:
                detector.projection_ = projection
            detector.categories_[name] = model
            for note in [*model.calibration.warnings, *model.thresholds.warnings()]:
                warnings.warn(f"category {name!r}: {note}", CalibrationWarning, stacklevel=2)
            log_fitted(model, len(sets[name]), log)

    return fit_model(sets, out, config, add=add, overwrite=overwrite, options=options, lock_timeout=lock_timeout,
                     log=log, fit_categories=fit_categories, **runtime)


# -- serving ----------------------------------------------------------------------------------------
def serve_ray(app_factory: Callable[[], object], *, replicas: int = 2, cpus_per_replica: float = 1.0,
              address: str | None = None, host: str = "127.0.0.1", port: int = 8000, name: str = "structcore"):
    """Host the ASGI app that ``app_factory()`` builds (e.g. a FastAPI app) with Ray Serve: ``replicas``
    copies, each building its own app (and loading its model) in its replica process, behind one HTTP
    endpoint at ``host:port``. Returns the deployment handle; the app runs until ``ray.serve.shutdown()``."""
    if replicas < 1 or cpus_per_replica <= 0:
        raise ConfigError(f"serve on Ray needs replicas >= 1 and cpus_per_replica > 0; got {replicas}, {cpus_per_replica}")
    connect(address)
    from ray import serve

    def build_app():  # Ray Serve calls a plain function in each replica; any other callable is taken as the app
        return app_factory()

    serve.start(http_options={"host": host, "port": port})
    deployment = serve.deployment(serve.ingress(build_app)(), name=name, num_replicas=replicas,
                                  ray_actor_options={"num_cpus": cpus_per_replica})
    return serve.run(deployment.bind(), name=name, route_prefix="/")
