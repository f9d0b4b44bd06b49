"""The benchmark folder's schema: what the writers write, the readers read back; files get the umask's mode."""

import json
import os
import stat

import numpy as np
import pytest

from structcore.data import Category, Sample
from structcore.errors import StructcoreError
from structcore.evaluation import artifacts
from structcore.evaluation.schema import (
    SCHEMA, MapFile, ReportError, ScoreFile, maps_file, read_maps, read_results, read_scores, scores_file,
)


def _score_file() -> ScoreFile:
    rng = np.random.default_rng(0)
    test = {s: rng.random(5) for s in ("base", "struct", "hybrid")}
    test["struct"][2] = np.nan  # non-finite values are written as null and read back as NaN
    return ScoreFile(
        category="widget", coreset_ratio=0.01, calibration="in-sample", threshold_calibration="k-fold",
        false_reject_rate=0.01, lam=0.25, threshold_train={s: rng.random(3) for s in ("base", "struct", "hybrid")},
        thresholds={"base": 1.0, "struct": 2.0, "hybrid": 1.5},
        train_paths=["t0.png", "t1.png", "t2.png"], train={s: rng.random(3) for s in ("base", "struct", "hybrid")},
        paths=[f"x{i}.png" for i in range(5)], labels=np.array([0, 0, 1, 1, 1]),
        defect_types=["good", "good", "crack", "crack", "hole"], test=test,
        routed_to=["widget"] * 4 + ["gadget"], routed={s: v + 1 for s, v in test.items()},
    )


def _map_file() -> MapFile:
    rng = np.random.default_rng(1)
    return MapFile(
        category="widget", maps=rng.random((2, 8, 8)).astype(np.float32), masks=rng.random((2, 8, 8)) > 0.5,
        has_masks=True, images=rng.integers(0, 255, (2, 8, 8, 3), dtype=np.uint8), paths=["a.png", "b.png"],
        labels=np.array([0, 1]), defect_types=["good", "crack"], indices=np.array([3, 7]),
        scores={s: rng.random(2) for s in ("base", "struct", "hybrid")},
        thresholds={"base": 1.0, "struct": 2.0, "hybrid": 1.5},
    )


def _same(a, b):
    assert type(a) is type(b)
    for name in vars(a):
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, dict):
            assert x.keys() == y.keys(), name
            for k in x:
                np.testing.assert_array_equal(x[k], y[k], err_msg=f"{name}[{k}]")
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_score_file_round_trip(tmp_path):
    written = _score_file()
    path = artifacts.write_scores(tmp_path, written)
    assert path == scores_file(tmp_path, "widget") == tmp_path / "scores" / "widget.json"
    doc = json.loads(path.read_text())
    assert doc["test"]["struct"][2] is None and doc["lambda"] == 0.25 and doc["train"]["paths"][0] == "t0.png"
    read = read_scores(path)
    _same(read, written)
    assert read.labels.dtype == np.int64 and np.isnan(read.test["struct"][2])


def test_map_file_round_trip(tmp_path):
    written = _map_file()
    path = artifacts.write_maps(tmp_path, written)
    assert path == maps_file(tmp_path, "widget")
    with np.load(path) as z:
        assert set(z.files) == {"maps", "masks", "has_masks", "has_mask", "images", "paths", "labels", "defect_types",
                                "indices", "base", "struct", "hybrid", "threshold_base", "threshold_struct",
                                "threshold_hybrid"}
        assert z["has_mask"].tolist() == [True, True] and z["maps"].dtype == np.float32
    _same(read_maps(path), written)


def test_readers_refuse_what_the_writer_does_not_write(tmp_path):
    with pytest.raises(ReportError, match="not found"):
        read_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"schema": SCHEMA + 1}))
    with pytest.raises(ReportError, match=f"reads schema {SCHEMA}"):
        read_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"schema": SCHEMA, "dataset": "mvtec"}))
    assert read_results(tmp_path)["dataset"] == "mvtec"
    doc = _score_file().to_json()
    doc["test"]["labels"] = doc["test"]["labels"][:-1]
    with pytest.raises(ReportError, match="labels has 4 entries for 5"):
        ScoreFile.from_json(doc)
    del doc["thresholds"]
    with pytest.raises(ReportError, match="thresholds"):
        ScoreFile.from_json(doc)
    arrays = _map_file().arrays()
    del arrays["images"]
    with pytest.raises(ReportError, match="images"):
        MapFile.from_arrays("widget", arrays)
    assert issubclass(ReportError, StructcoreError)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_output_files_get_the_mode_of_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        results = {"schema": SCHEMA, "results": {"class_separated": {}, "routed": {}}, "ablations": {},
                   "category_names": []}
        files = [artifacts.write_results(tmp_path, results), artifacts.write_scores(tmp_path, _score_file()),
                 artifacts.write_maps(tmp_path, _map_file()), *artifacts.write_tables(tmp_path, results)]
    finally:
        os.umask(old)
    assert tmp_path / "tables.md" in files
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_pick_examples_mixes_good_and_defect_types(tmp_path):
    test = [Sample(tmp_path / f"g{i}.png", 0, "good") for i in range(10)]
    test += [Sample(tmp_path / f"a{i}.png", 1, "crack") for i in range(5)]
    test += [Sample(tmp_path / f"b{i}.png", 1, "hole") for i in range(1)]
    cat = Category("c", [], test)
    chosen = artifacts.pick_examples(cat, 8)
    assert chosen == artifacts.pick_examples(cat, 8) and len(chosen) == 8
    defects = [test[i].defect for i in chosen]
    assert defects.count("good") == 2 and "hole" in defects and defects.count("crack") == 5
    only_good = Category("c", [], test[:3])
    assert artifacts.pick_examples(only_good, 8) == [0, 1, 2]
