"""structcore export and the torch-free deployment (structcore.deployed, copied as structcore_infer.py)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from structcore import Detector, DetectorConfig
from structcore import deployed
from structcore.cli import main as cli_main
from structcore.errors import ModelFileError, WeightsError
from structcore.export import FORMATS, export_model, min_cosine
from structcore.maps import anomaly_maps, pool
from structcore.router import route
from structcore.structure import DISTANCES, descriptor, structural_distance

TINY = dict(backbone="tiny", resize=64, crop=56, blocks=(-1, -2, -4), projection_dim=32, coreset_ratio=0.25,
            false_reject_rate=0.2)
SCORE_NAMES = ("base", "struct", "hybrid")

# runs structcore_infer.py with torch and structcore unimportable (an import of either raises ImportError)
NO_TORCH = ("import runpy, sys; sys.modules['torch'] = None; sys.modules['structcore'] = None; "
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def _paths(root, cat, split, sub="good"):
    return sorted((root / cat / split / sub).glob("*.png"))


@pytest.fixture(scope="module")
def detector(synthetic_mvtec, tiny_backbone):
    det = Detector(DetectorConfig(**TINY), precision="fp32", progress=False, batch_size=4)
    for cat in ("widget", "gadget"):
        det.fit(cat, _paths(synthetic_mvtec, cat, "train"))
    return det


@pytest.fixture(scope="module")
def test_images(synthetic_mvtec):
    return [p for c in ("widget", "gadget") for s in ("good", "scratch") for p in _paths(synthetic_mvtec, c, "test", s)]


@pytest.fixture(scope="module", params=FORMATS)
def exported(request, detector, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"deploy_{request.param}") / "deployment"
    result = export_model(detector, folder, request.param, progress=False)
    assert result.min_cosine >= 0.9999
    return folder


def _compare(reference, results):
    """The deployment's results agree with Detector.predict's predictions."""
    assert [r.category for r in results] == [p.category for p in reference]
    for name in SCORE_NAMES:
        np.testing.assert_allclose([r.scores[name] for r in results], [p.scores[name] for p in reference], rtol=1e-3)
        np.testing.assert_allclose([r.normalised_scores[name] for r in results],
                                   [p.normalised_scores[name] for p in reference], rtol=1e-3, atol=1e-3)
    assert [r.thresholds for r in results] == [p.thresholds for p in reference]
    assert [r.decision for r in results] == [p.decision for p in reference]
    assert [r.image_size for r in results] == [p.image_size for p in reference]


def test_preprocessing_and_features_match_the_library(exported, detector, test_images):
    model = deployed.load(exported)
    ours = np.stack([model.preprocess(deployed.load_image(p)) for p in test_images])
    theirs = torch.stack([detector.config.preprocess(Image.open(p)) for p in test_images]).numpy()
    assert np.array_equal(ours, theirs)
    feats = model.features(ours, batch_size=3)  # a batch size the graph was not traced with
    assert feats.shape == (len(test_images), 16, 32)
    assert min_cosine(feats, detector.extract(test_images, precision="fp32").numpy()) >= 0.9999


def test_predictions_match_detector_predict(exported, detector, test_images):
    model = deployed.load(exported)
    reference = detector.predict(test_images)  # routed
    results = model.predict(test_images)
    _compare(reference, results)
    assert {r.category for r in results} == {"widget", "gadget"}
    assert {r.decision for r in results} == {"accept", "reject"}  # the scratches are rejected
    for r, p in zip(results, reference):
        assert r.anomaly_map.shape == p.anomaly_map.shape == (56, 56)
        np.testing.assert_allclose(r.anomaly_map, p.anomaly_map, rtol=1e-3, atol=1e-4 * float(p.anomaly_map.max()))
    # arrays and a fixed category, as Detector.predict takes them
    arrays = [np.asarray(Image.open(p)) for p in test_images[:4]]
    _compare(detector.predict(arrays, category="gadget"), model.predict(arrays, category="gadget"))


def test_maps_descriptor_distances_and_routing_match_the_library():
    rng = np.random.default_rng(0)
    grids = rng.random((3, 4, 5)).astype(np.float32)
    for size, sigma in (((56, 56), 4.0), ((392, 392), 4.0), ((30, 41), 2.5), ((56, 56), 0.0)):
        theirs = anomaly_maps(torch.from_numpy(grids), size, sigma)
        ours = deployed.anomaly_maps(grids, size, sigma)
        assert ours.dtype == np.float32 and ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
        for how in ("max", "mean", "topk"):
            np.testing.assert_allclose(deployed.pool(ours, how), pool(theirs, how), rtol=1e-6)
    maps = anomaly_maps(torch.from_numpy(grids), (56, 56), 4.0)
    phi = deployed.descriptor(maps, ("tv", "std", "topk"), 0.05)
    np.testing.assert_array_equal(phi, descriptor(maps, ("tv", "std", "topk"), 0.05))
    mu, sigma = phi.mean(0) * 1.1, phi.std(0)
    for kind in DISTANCES:
        np.testing.assert_array_equal(deployed.structural_distance(phi, mu, sigma, kind),
                                      structural_distance(phi, mu, sigma, kind))
    feats = rng.normal(size=(6, 16, 8)).astype(np.float32)
    protos = {c: rng.normal(size=(4, 8)).astype(np.float32) for c in ("a", "b", "c")}
    protos = {c: p / np.linalg.norm(p, axis=1, keepdims=True) for c, p in protos.items()}
    model = deployed.Deployment.__new__(deployed.Deployment)
    model.categories = {c: deployed._Category(c, None, p, *[None] * 9) for c, p in protos.items()}
    assert model.route(feats) == route(torch.from_numpy(feats), {c: torch.from_numpy(p) for c, p in protos.items()})


def test_manifest_records_config_weights_and_every_file(exported, detector):
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["weights"] == {"name": "tiny", "sha256": "0" * 64}
    cfg = manifest["config"]
    assert (cfg["resize"], cfg["crop"], cfg["grid"], cfg["k"], cfg["sigma"]) == (64, 56, [4, 4], 5, 4.0)
    assert cfg["feature_dim"] == 32 and cfg["decision_score"] == "hybrid"
    on_disk = {f.name for f in exported.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    assert {"structcore_infer.py", "infer.py", "requirements.txt", "calibration.json", manifest["graph"]} <= on_disk
    for name, digest in manifest["files"].items():
        assert deployed.sha256_file(exported / name) == digest, name
    requirements = (exported / "requirements.txt").read_text().split()
    runtime = "openvino" if manifest["format"] == "openvino" else "onnxruntime"
    assert {r.split(">=")[0] for r in requirements} == {"numpy", "pillow", "faiss-cpu", runtime}
    assert all("<" in r for r in requirements) and not any("torch" in r for r in requirements)
    calibration = json.loads((exported / "calibration.json").read_text())
    for name, m in detector.categories_.items():
        assert calibration[name]["thresholds"] == {s: m.thresholds.values[s] for s in SCORE_NAMES}
        assert calibration[name]["calibration"]["lambda"] == m.calibration.lam
        assert calibration[name]["median_calibration_scores"]["hybrid"] == float(np.median(m.thresholds.scores["hybrid"]))
        assert np.array_equal(np.load(exported / manifest["categories"][name]["bank"]), m.bank.numpy())


def test_a_changed_or_missing_file_is_refused_naming_it(exported, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    bank = copy / "category_000_bank.npy"
    data = bytearray(bank.read_bytes())
    data[-1] ^= 1
    bank.write_bytes(bytes(data))
    with pytest.raises(deployed.DeploymentError, match="category_000_bank.npy: does not match its sha256"):
        deployed.load(copy)
    bank.unlink()
    with pytest.raises(deployed.DeploymentError, match="category_000_bank.npy: listed in manifest.json but missing"):
        deployed.load(copy)
    (copy / "manifest.json").write_text("[1]")
    with pytest.raises(deployed.DeploymentError, match="manifest.json: holds a JSON list"):
        deployed.load(copy)


def test_calibration_json_is_editable_and_checked(exported, detector, test_images, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    path = copy / "calibration.json"
    calibration = json.loads(path.read_text())
    calibration["widget"]["thresholds"]["hybrid"] = -1.0  # every widget image is now rejected
    path.write_text(json.dumps(calibration))
    model = deployed.load(copy)
    assert model.edited == ["calibration.json"]
    results = model.predict(test_images, category="widget", maps=False)
    assert all(r.decision == "reject" and r.anomaly_map is None for r in results)
    assert deployed.load(exported).edited == []
    calibration["widget"]["calibration"]["lambda"] = "0.5"
    path.write_text(json.dumps(calibration))
    with pytest.raises(deployed.DeploymentError, match=r"calibration.json: category 'widget': lambda must be a finite number"):
        deployed.load(copy)


def _run_without_torch(folder: Path, *args, cwd: Path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", NO_TORCH, str(folder / "infer.py"), str(folder), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_infer_script_runs_where_torch_cannot_be_imported(exported, detector, test_images, tmp_path):
    folder = tmp_path / "moved"  # the folder is self-contained: it runs from anywhere
    shutil.copytree(exported, folder)
    out = tmp_path / "predictions.json"
    proc = _run_without_torch(folder, *test_images, "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    reference = detector.predict(test_images)
    assert [r["path"] for r in rows] == [str(p) for p in test_images]
    assert [r["category"] for r in rows] == [p.category for p in reference]
    assert [r["decision"] for r in rows] == [p.decision for p in reference]
    for name in SCORE_NAMES:
        np.testing.assert_allclose([r["scores"][name] for r in rows], [p.scores[name] for p in reference], rtol=1e-3)
    # the wrapper really blocks torch: a script that imports it fails
    probe = tmp_path / "probe.py"
    probe.write_text("import torch\n")
    assert subprocess.run([sys.executable, "-c", NO_TORCH, str(probe)], capture_output=True).returncode != 0


def test_infer_script_reports_an_unreadable_image_in_one_line(exported, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    proc = _run_without_torch(exported, broken, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("structcore_infer: error: ") and str(broken) in lines[0], proc.stderr
    with pytest.raises(deployed.DeploymentError, match="no such image file"):
        deployed.load(exported).predict(tmp_path / "missing.png")


def test_cli_export_writes_a_deployment_and_refuses_other_folders(detector, tmp_path, capsys):
    model = detector.save(tmp_path / "model")
    out = tmp_path / "deploy"
    assert cli_main(["export", "--model", str(model), "--format", "onnx", "--out", str(out)]) == 0
    assert "exported onnx deployment" in capsys.readouterr().err
    assert deployed.load(out).format == "onnx"
    assert cli_main(["export", "--model", str(model), "--format", "openvino", "--out", str(out), "--quiet"]) == 0
    assert (out / "backbone.xml").is_file() and not (out / "backbone.onnx").exists()  # a deployment is replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert cli_main(["export", "--model", str(model), "--out", str(other), "--quiet"]) == 2
    assert "is not a structcore deployment folder" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(ModelFileError):
        export_model(model, other, "onnx", progress=False)


@pytest.mark.real
def test_real_bottle_exports_agree_with_detector_predict(mvtec_root, tmp_path):
    bottle = mvtec_root / "bottle"
    train = sorted((bottle / "train" / "good").glob("*.png"))[:30]
    test = [p for sub, n in (("good", 3), ("broken_large", 2), ("contamination", 1))
            for p in sorted((bottle / "test" / sub).glob("*.png"))[:n]]
    det = Detector(DetectorConfig(false_reject_rate=0.05), precision="fp32", progress=False)
    det.fit("bottle", train)
    reference = det.predict(test)
    features = det.extract(test, precision="fp32").numpy()
    assert {p.decision for p in reference} == {"accept", "reject"}
    for fmt in FORMATS:
        model = deployed.load(export_model(det, tmp_path / fmt, fmt, check=False, progress=False).folder)
        batch = np.stack([model.preprocess(deployed.load_image(p)) for p in test])
        assert min_cosine(model.features(batch), features) >= 0.9999, fmt
        _compare(reference, model.predict(test))


def test_other_weights_than_the_models_are_refused(detector, tmp_path):
    model = detector.save(tmp_path / "model")
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["weights"]["sha256"] = "1" * 64  # as if fitted with other weights
    (model / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="1111111111"):
        export_model(model, tmp_path / "deploy", "onnx", progress=False)
    assert not (tmp_path / "deploy").exists()


def test_infer_cli_takes_folders(synthetic_mvtec):
    folder = synthetic_mvtec / "widget" / "test"
    assert deployed.image_files([folder]) == _paths(synthetic_mvtec, "widget", "test") + \
        _paths(synthetic_mvtec, "widget", "test", "scratch")
