import csv
import json

import numpy as np
from PIL import Image

from structcore.cli import main

TINY = ["--backbone", "tiny", "--resize", "64", "--crop", "56", "--blocks", "-1", "-2", "--projection-dim", "16", "--coreset-ratio", "0.25",
        "--precision", "fp32", "--quiet"]


def test_fit_then_predict_writes_everything(synthetic_mvtec, tiny_backbone, tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["fit", "--data", str(synthetic_mvtec), "--categories", "widget", "gadget", "--out", str(model), *TINY]) == 0
    assert (model / "manifest.json").is_file()
    out = tmp_path / "pred"
    test = synthetic_mvtec / "widget" / "test"
    assert main(["predict", "--model", str(model), str(test / "good"), str(test / "scratch"), "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 6 and json.loads((out / "predictions.json").read_text())[0].keys() == rows[0].keys()
    for r in rows:
        assert r["decision"] == ("reject" if float(r["hybrid_score"]) > float(r["hybrid_threshold"]) else "accept")
        size = Image.open(r["image"]).size
        m = np.load(out / r["map"])  # the original frame: NaN on the border the 56-px crop of 64 drops
        assert m.shape == size[::-1] and Image.open(out / r["overlay"]).size == size
        seen = ~np.isnan(m)
        assert seen[4:60, 4:60].all() and not seen[:4].any() and not seen[:, 60:].any()
        assert float(r["hybrid_score"]) >= float(r["base_score"])
        regions = json.loads(r["regions"])
        above = np.nan_to_num(m, nan=-np.inf) > float(r["pixel_threshold"])
        assert sum(g["area"] for g in regions) == above.sum()
        if r["decision"] == "reject":
            assert np.array_equal(np.asarray(Image.open(out / r["mask"])) > 0, above)
        else:
            assert r["mask"] == ""
    # same stems in two folders must not overwrite each other's outputs
    assert len({r["map"] for r in rows}) == 6


def test_refuses_to_overwrite_and_reports_bad_input(synthetic_mvtec, tiny_backbone, tmp_path, capsys):
    model = tmp_path / "model"
    args = ["fit", "--data", str(synthetic_mvtec), "--categories", "widget", "--out", str(model), *TINY]
    assert main(args) == 0
    before = (model / "manifest.json").read_bytes()
    assert main(args) == 2
    assert "already holds a model" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["predict", "--model", str(model), str(bad), "--out", str(tmp_path / "p"), "--quiet"]) == 2
    assert "bad.png" in capsys.readouterr().err
    assert main(["fit", "--data", str(synthetic_mvtec), "--categories", "nothing", "--out", str(model), "--add", *TINY]) == 2
    assert "nothing" in capsys.readouterr().err
    assert (model / "manifest.json").read_bytes() == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["fit", "--good", str(empty), "--out", str(tmp_path / "m2"), *TINY]) == 2
    assert "empty" in capsys.readouterr().err and not (tmp_path / "m2").exists()


def test_every_config_field_has_an_option_and_defaults_are_the_configs():
    import argparse
    from dataclasses import asdict

    from structcore import DetectorConfig
    from structcore.cli.options import add_model_options, config_from_args

    parser = argparse.ArgumentParser()
    add_model_options(parser)
    assert config_from_args(parser.parse_args([])) == DetectorConfig()
    args = parser.parse_args(["--k", "3", "--heldout-fraction", "0.3", "--descriptor-on", "grid", "--decision-score",
                              "base", "--coreset-size", "100", "--projection-dim", "0", "--blocks", "-1", "-4"])
    got = asdict(config_from_args(args))
    assert {k: got[k] for k in ("k", "heldout_fraction", "descriptor_on", "decision_score", "coreset_size",
                                "coreset_ratio", "projection_dim", "blocks")} == {
        "k": 3, "heldout_fraction": 0.3, "descriptor_on": "grid", "decision_score": "base", "coreset_size": 100,
        "coreset_ratio": None, "projection_dim": None, "blocks": (-1, -4)}
