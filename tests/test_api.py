"""The public API: what ``from structcore import ...`` gives, the input forms of predict, streaming,
maps=False, input errors, and the calibration record (kept, consistent with the thresholds, saved)."""

import numpy as np
import pytest
from PIL import Image

import structcore
from structcore import Detector, DetectorConfig, Prediction, StructcoreError, load_model
from structcore.errors import DataError, NotFittedError, UnknownCategoryError

TINY = dict(backbone="tiny", resize=64, crop=56, blocks=(-1, -2), projection_dim=16, coreset_ratio=0.25)
SCORES = ("base", "struct", "hybrid")


def _paths(root, split="test", sub="good"):
    return sorted((root / "widget" / split / sub).glob("*.png"))


@pytest.fixture(scope="module")
def fitted(synthetic_mvtec, tiny_backbone, tmp_path_factory):
    det = Detector(DetectorConfig(**TINY), precision="fp32", progress=False, batch_size=4)
    det.fit("widget", _paths(synthetic_mvtec, "train"))
    folder = tmp_path_factory.mktemp("api") / "model"
    det.save(folder)
    return det, folder


def _close(a: Prediction, b: Prediction):
    return all(a.scores[s] == pytest.approx(b.scores[s], rel=1e-5, abs=1e-7) for s in SCORES)


def test_the_public_names():
    for name in ("Detector", "DetectorConfig", "Prediction", "load_model", "StructcoreError"):
        assert name in structcore.__all__ and getattr(structcore, name) is not None
    for err in ("ConfigError", "DataError", "ModelFileError", "NotFittedError", "UnknownCategoryError", "WeightsError"):
        assert issubclass(getattr(structcore, err), StructcoreError), err
    assert issubclass(DataError, ValueError) and issubclass(UnknownCategoryError, KeyError)


def test_every_input_form_gives_the_path_forms_scores(fitted, synthetic_mvtec, tmp_path):
    det, _ = fitted
    path = _paths(synthetic_mvtec, sub="scratch")[1]
    rgb = np.asarray(Image.open(path).convert("RGB"))
    gray = np.asarray(Image.open(path).convert("L"))
    gray_path = tmp_path / "gray.png"
    Image.fromarray(gray).save(gray_path)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 77, np.uint8)])
    forms = {
        "str": str(path), "Path": path, "PIL": Image.open(path), "uint8": rgb, "uint16": rgb.astype(np.uint16) * 257,
        "uint16-big-endian": (rgb.astype(np.uint16) * 257).astype(">u2"),
        "float64": rgb / 255.0, "float32": (rgb / 255.0).astype(np.float32), "rgba": rgba, "HxWx1": gray[..., None],
        "gray": gray, "gray-uint16": gray.astype(np.uint16) * 257, "gray-float": gray / 255.0, "gray-PIL": Image.fromarray(gray),
    }
    preds = dict(zip(forms, det.predict(forms.values(), "widget")))
    assert preds["str"].path == str(path) and preds["Path"].path == str(path)
    assert [preds[k].path for k in list(forms)[2:]] == [f"<image {i}>" for i in range(2, len(forms))]
    ref, gray_ref = preds["str"], det.predict([gray_path], "widget")[0]
    assert not _close(ref, gray_ref)  # the gray picture really is another input
    for name, p in preds.items():
        want = gray_ref if name.startswith("gray") or name == "HxWx1" else ref
        assert _close(p, want), name
        assert np.allclose(p.anomaly_map, want.anomaly_map, rtol=1e-5, atol=1e-6), name


def test_predict_stream_is_lazy_in_order_and_equals_predict(fitted, synthetic_mvtec):
    det, folder = fitted
    small = load_model(folder, progress=False, batch_size=1)  # chunks of 8 images
    paths = _paths(synthetic_mvtec) + _paths(synthetic_mvtec, sub="scratch") + _paths(synthetic_mvtec, "train")
    pulled = []

    def images():
        for p in paths:
            pulled.append(p)
            yield np.asarray(Image.open(p).convert("RGB"))

    stream = small.predict_stream(images(), "widget")
    first = next(stream)
    assert len(pulled) == 8  # only the first chunk was read
    preds = [first, *stream]
    assert [p.path for p in preds] == [f"<image {i}>" for i in range(len(paths))]
    batch = det.predict(paths, "widget")
    assert all(_close(a, b) for a, b in zip(preds, batch)) and len(preds) == len(batch) == 14
    assert not _close(preds[0], preds[3])


def test_maps_false_keeps_the_scores(fitted, synthetic_mvtec):
    det, _ = fitted
    paths = _paths(synthetic_mvtec) + _paths(synthetic_mvtec, sub="scratch")
    with_maps, without = det.predict(paths, "widget"), det.predict(paths, "widget", maps=False)
    assert all(p.anomaly_map is None for p in without)
    assert all(p.anomaly_map.shape == (56, 56) for p in with_maps)
    assert [p.scores for p in without] == [p.scores for p in with_maps]
    assert [p.decision for p in without] == [p.decision for p in with_maps]


@pytest.mark.parametrize("bad, says", [
    (np.full((64, 64, 3), 1.5), "[0, 1]"),
    (np.full((64, 64, 3), -0.1, np.float32), "[0, 1]"),
    (np.zeros((1, 64, 64, 3), np.uint8), "shape"),
    (np.zeros((64, 64, 3), np.int32), "int32"),
    ([[0, 1], [1, 0]], "list"),
])
def test_unsupported_inputs_name_the_image(fitted, synthetic_mvtec, bad, says):
    det, folder = fitted
    good = np.asarray(Image.open(_paths(synthetic_mvtec)[0]).convert("RGB"))
    with pytest.raises(DataError, match="<image 2>") as e:
        det.predict([good, good, bad], "widget")
    assert says in str(e.value)
    small = load_model(folder, progress=False, batch_size=1)
    with pytest.raises(DataError, match="<image 9>"):  # numbering runs on across chunks
        list(small.predict_stream(iter([good] * 9 + [bad]), "widget"))


def test_fit_on_arrays_matches_fit_on_paths(fitted, synthetic_mvtec):
    det, _ = fitted
    arrays = Detector(DetectorConfig(**TINY), precision="fp32", progress=False, batch_size=4)
    model = arrays.fit("widget", [np.asarray(Image.open(p).convert("RGB")) for p in _paths(synthetic_mvtec, "train")])
    assert model.train_images == [f"<image {i}>" for i in range(8)]
    test = _paths(synthetic_mvtec) + _paths(synthetic_mvtec, sub="scratch")
    assert all(_close(a, b) for a, b in zip(arrays.predict(test, "widget"), det.predict(test, "widget")))
    assert model.thresholds.values == pytest.approx(det.categories_["widget"].thresholds.values, rel=1e-5)


def test_calibration_record_is_what_structcore_was_fitted_on(fitted, synthetic_mvtec):
    det, folder = fitted
    model = det.categories_["widget"]
    record, calib = model.calibration_record, model.calibration
    assert np.array_equal(record.ids, np.arange(8))
    phi = record.phi_map  # all components, in order: mu and sigma are their mean and std
    assert np.allclose(calib.mu, phi.mean(0)) and np.allclose(calib.sigma, phi.std(0))
    assert np.allclose(record.scores["hybrid"], record.base + calib.lam * record.scores["struct"])
    # in-sample calibration: the record holds the scores the train images themselves get
    train = det.predict(_paths(synthetic_mvtec, "train"), "widget")
    for s in SCORES:
        assert np.allclose(record.scores[s], [p.scores[s] for p in train], rtol=1e-5, atol=1e-7), s
    assert record.phi_map.shape == record.phi_grid.shape == (8, 3)
    assert np.allclose(record.phi_map[:, 0], [p.anomaly_map.std() for p in train], rtol=1e-4)
    again = load_model(folder, progress=False).categories_["widget"].calibration_record
    for key in ("ids", "base", "phi_map", "phi_grid"):
        assert np.array_equal(getattr(again, key), getattr(record, key)), key
    for s in SCORES:
        assert np.array_equal(again.scores[s], record.scores[s]), s


def test_library_errors_are_structcore_errors(fitted, synthetic_mvtec, tmp_path):
    det, _ = fitted
    with pytest.raises(NotFittedError):
        Detector(DetectorConfig(**TINY), progress=False).predict(_paths(synthetic_mvtec))
    with pytest.raises(UnknownCategoryError, match="widget"):
        det.predict(_paths(synthetic_mvtec), category="gizmo")
    with pytest.raises(DataError, match="missing.png"):
        det.predict([tmp_path / "missing.png"], "widget")
    with pytest.raises(DataError, match="at least 2"):
        det.fit("one", _paths(synthetic_mvtec, "train")[:1])
    with pytest.raises(DataError):
        det.fit("none", [])
    with pytest.raises(StructcoreError, match="manifest"):
        load_model(tmp_path)


def test_one_image_is_one_prediction(fitted, synthetic_mvtec):
    det, _ = fitted
    path = _paths(synthetic_mvtec, sub="scratch")[0]
    listed = det.predict([path], category="widget")[0]
    array = np.asarray(Image.open(path).convert("RGB"))
    for single in (path, str(path), Image.open(path), array):
        got = det.predict(single, category="widget")
        assert len(got) == 1 and _close(got[0], listed), type(single)
