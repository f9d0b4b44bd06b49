"""OpenVINO against torch with the real DINOv2 ViT-S/14 weights on all of bottle: features, scores, metrics."""

import numpy as np
import pytest
import torch

from structcore import Detector, DetectorConfig
from structcore.data import load_mvtec
from structcore.evaluation.protocol import crop_masks
from structcore.metrics import auroc, pixel_metrics

pytestmark = pytest.mark.real
pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def bottle(mvtec_root):
    (cat,) = load_mvtec(mvtec_root, ["bottle"])
    return cat


@pytest.fixture(scope="module")
def runs(bottle):
    """Per runtime: the fp32-fitted detector, its fp32 test features and its predictions."""
    out = {}
    for runtime in ("torch", "openvino"):
        det = Detector(DetectorConfig(), runtime=runtime, precision="fp32", progress=False)
        det.fit("bottle", bottle.train)
        paths = [s.path for s in bottle.test]
        out[runtime] = det, det.extract(paths), det.predict(paths, category="bottle")
    return out


def test_openvino_fp32_features_are_torch_fp32s(runs):
    cos = torch.nn.functional.cosine_similarity(runs["openvino"][1], runs["torch"][1], dim=-1)
    assert float(cos.min()) >= 0.9999


def test_openvino_scores_and_decisions_agree_with_torch(runs):
    for score in ("base", "struct", "hybrid"):
        ov = np.array([p.scores[score] for p in runs["openvino"][2]])
        ref = np.array([p.scores[score] for p in runs["torch"][2]])
        np.testing.assert_allclose(ov, ref, rtol=1e-3, atol=1e-6 if score == "struct" else 0)
    assert [p.decision for p in runs["openvino"][2]] == [p.decision for p in runs["torch"][2]]


def test_openvino_metrics_are_within_0_002_of_torch(runs, bottle):
    labels = np.array([s.label for s in bottle.test])
    masks = crop_masks(bottle, runs["torch"][0].config.preprocess)
    metrics = {}
    for runtime, (_, _, preds) in runs.items():
        maps = np.stack([p.anomaly_map for p in preds])
        metrics[runtime] = [auroc(labels, np.array([p.scores[s] for p in preds])) for s in ("base", "hybrid")]
        metrics[runtime].append(pixel_metrics(masks, maps)["auroc"])
    assert metrics["torch"][2] > 0.85  # a working pipeline (README: 0.924), not two equally broken ones
    np.testing.assert_allclose(metrics["openvino"], metrics["torch"], atol=0.002)


def test_openvino_bf16_is_as_close_to_fp32_as_torch_bf16(runs, bottle):
    paths = [s.path for s in bottle.test][::8]
    ref = runs["torch"][1][::8]
    cos = {}
    for runtime in ("torch", "openvino"):
        got = runs[runtime][0].extract(paths, precision="bf16")
        cos[runtime] = float(torch.nn.functional.cosine_similarity(got, ref, dim=-1).mean())
    assert cos["openvino"] >= 0.9999 and cos["openvino"] >= cos["torch"] - 1e-4
