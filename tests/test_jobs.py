"""The fit and predict jobs under concurrency, kills, unreadable images and --add mistakes.

Concurrency and kill tests run the real command line in real processes (tests/tiny_cli.py, the tiny ViT).
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from structcore.cli import main

TESTS = Path(__file__).resolve().parent
TINY = ["--backbone", "tiny", "--resize", "64", "--crop", "56", "--blocks", "-1", "-2", "--projection-dim", "16",
        "--coreset-ratio", "0.25", "--precision", "fp32", "--quiet"]


def _cli(*args, **env):
    """Start ``structcore ARGS`` (tiny ViT registered) in a real process."""
    return subprocess.Popen([sys.executable, str(TESTS / "tiny_cli.py"), *map(str, args)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(TESTS.parent / "src"), "OMP_NUM_THREADS": "1", **env})


def _done(proc) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


def _rows(out: Path) -> list[dict]:
    with open(out / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def model(synthetic_mvtec, tiny_backbone, tmp_path) -> Path:
    folder = tmp_path / "model"
    assert main(["fit", "--good", str(synthetic_mvtec / "widget" / "train" / "good"), "--category", "base",
                 "--out", str(folder), *TINY]) == 0
    return folder


# -- 1: concurrent writers ------------------------------------------------------------------------
def test_two_concurrent_adds_both_land(model, synthetic_mvtec):
    good = synthetic_mvtec / "gadget" / "train" / "good"
    # each waits 2 s between loading the model and writing it: without exclusion the second write loses the first
    procs = [_cli("fit", "--add", "--good", good, "--category", name, "--out", model, "--quiet",
                  STRUCTCORE_DELAY="fit-loaded:2") for name in ("a", "b")]
    results = [_done(p) for p in procs]
    assert [r[0] for r in results] == [0, 0], results
    assert all("model written" in r[1] for r in results)
    categories = json.loads((model / "manifest.json").read_text())["categories"]
    assert set(categories) == {"base", "a", "b"}
    assert any("waiting" in r[1] for r in results)  # the second said why it waited


def test_two_concurrent_predicts_into_one_out_keep_both(model, synthetic_mvtec, tmp_path):
    out = tmp_path / "pred"
    test = synthetic_mvtec / "widget" / "test"
    procs = [_cli("predict", "--model", model, test / sub, "--out", out, "--quiet", "--precision", "fp32",
                  STRUCTCORE_DELAY="predict-row:0.5") for sub in ("good", "scratch")]
    results = [_done(p) for p in procs]
    assert [r[0] for r in results] == [0, 0], results
    rows = _rows(out)
    assert sorted(Path(r["image"]).parent.name for r in rows) == ["good"] * 3 + ["scratch"] * 3
    assert json.loads((out / "predictions.json").read_text()) == [
        {k: (float(v) if k.endswith(("_score", "_threshold", "_normalised")) else json.loads(v) if k == "regions" else v)
         for k, v in r.items()} for r in rows]


# -- 2: fit --add is explicit ---------------------------------------------------------------------
def test_add_refuses_an_existing_category_and_other_model_options(model, synthetic_mvtec, capsys):
    good = str(synthetic_mvtec / "gadget" / "train" / "good")
    before = (model / "manifest.json").read_bytes()
    assert main(["fit", "--add", "--good", good, "--category", "base", "--out", str(model), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already has category base" in err and "--overwrite" in err
    assert main(["fit", "--add", "--good", good, "--category", "new", "--out", str(model), "--quiet", "--k", "3"]) == 2
    err = capsys.readouterr().err
    assert "--k 3 differs" in err and "k 5" in err and "drop --k" in err
    assert (model / "manifest.json").read_bytes() == before  # nothing changed
    # the same value as the model's, and --overwrite for a category it has, are fine
    assert main(["fit", "--add", "--good", good, "--category", "base", "--overwrite", "--out", str(model), *TINY]) == 0
    manifest = json.loads((model / "manifest.json").read_text())
    assert set(manifest["categories"]) == {"base"} and "gadget" in manifest["categories"]["base"]["train_images"][0]


# -- 4: predict scores what it can, incrementally, and resumes ------------------------------------
def test_predict_scores_every_readable_image_and_lists_the_others(model, synthetic_mvtec, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in sorted((synthetic_mvtec / "widget" / "test" / "good").iterdir()):
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "text.png").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    good = (folder / "000.png").read_bytes()
    (folder / "cut.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model), str(folder), "--out", str(out), "--quiet", "--precision", "fp32"]) == 0
    err = capsys.readouterr().err
    rows = _rows(out)
    assert len(rows) == 6
    failed = {Path(r["image"]).name: r["error"] for r in rows if r["decision"] == "error"}
    assert set(failed) == {"text.png", "empty.png", "cut.png"}
    for name, reason in failed.items():
        assert name in reason and f"warning: {folder / name}" in err
    assert all(r["hybrid_score"] for r in rows if r["decision"] != "error")
    assert [r["error"] for r in json.loads((out / "predictions.json").read_text())] == [r["error"] for r in rows]
    out2 = tmp_path / "pred2"
    assert main(["predict", "--model", str(model), str(folder), "--out", str(out2), "--quiet", "--strict"]) == 1
    assert len(_rows(out2)) == 6  # --strict still writes everything
    assert "3 of 6 images could not be scored" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_text("no")
    assert main(["predict", "--model", str(model), str(bad), "--out", str(tmp_path / "p3"), "--quiet"]) == 2
    assert "none of the 1 images could be scored" in capsys.readouterr().err


def test_a_killed_predict_keeps_its_rows_and_a_rerun_resumes(model, synthetic_mvtec, tmp_path, capsys):
    out = tmp_path / "pred"
    test = synthetic_mvtec / "widget" / "test"
    args = ["predict", "--model", model, test / "good", test / "scratch", "--out", out, "--quiet", "--precision", "fp32"]
    code, _, err = _done(_cli(*args, STRUCTCORE_FAULT="predict-row:2"))
    assert code == 86, err  # killed after its second image
    kept = _rows(out)
    assert len(kept) == 2 and all(r["decision"] in ("accept", "reject") for r in kept)
    stamps = {r["map"]: (out / r["map"]).stat().st_mtime_ns for r in kept}
    assert main([str(a) for a in args]) == 0
    assert "resuming: 2 of 6 images already scored" in capsys.readouterr().out
    rows = _rows(out)
    assert len(rows) == 6 and rows[:2] == kept  # the first two were not scored again ...
    assert {m: (out / m).stat().st_mtime_ns for m in stamps} == stamps  # ... nor their maps rewritten
    assert len({r["map"] for r in rows}) == 6
