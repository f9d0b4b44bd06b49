"""Tests of image loading, data set layouts and background decoding (synthetic files + the real data)."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from structcore.data import Category, Sample, iter_batches, list_images, load_folder, load_mvtec, load_visa
from structcore.errors import DataError
from structcore.features import Preprocess
from structcore.images import IMAGE_EXTENSIONS, image_size, load_image, load_mask


def rgb_array(h=12, w=16, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, im: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def make_image(path: Path, size=(16, 12), value=100) -> Path:
    w, h = size
    return save(path, Image.fromarray(np.full((h, w, 3), value, np.uint8)))


def make_mask(path: Path, size=(16, 12)) -> Path:
    w, h = size
    a = np.zeros((h, w), np.uint8)
    a[2:5, 3:7] = 255
    return save(path, Image.fromarray(a))


# -- load_image ---------------------------------------------------------------------------------
def test_extensions():
    assert IMAGE_EXTENSIONS == {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def test_rgb_png_roundtrip(tmp_path):
    a = rgb_array()
    im = load_image(save(tmp_path / "a.png", Image.fromarray(a)))
    assert im.mode == "RGB" and im.size == (16, 12)
    np.testing.assert_array_equal(np.asarray(im), a)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    g = rgb_array()[..., 0]
    out = np.asarray(load_image(save(tmp_path / "g.png", Image.fromarray(g))))
    assert out.shape == (12, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)


def test_rgba_drops_alpha(tmp_path):
    a = rgb_array()
    rgba = np.dstack([a, np.zeros((12, 16), np.uint8)])  # fully transparent: colours must survive
    out = load_image(save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA")))
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), a)


def test_la_drops_alpha(tmp_path):
    g = rgb_array()[..., 1]
    la = Image.merge("LA", [Image.fromarray(g), Image.fromarray(np.zeros_like(g))])
    out = np.asarray(load_image(save(tmp_path / "la.png", la)))
    np.testing.assert_array_equal(out[..., 2], g)


def test_palette_image(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    p = Image.fromarray(idx, "P")
    p.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * (256 * 3 - 9))
    out = np.asarray(load_image(save(tmp_path / "p.png", p)))
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 1], [200, 100, 50])
    np.testing.assert_array_equal(out[1, 0], [0, 255, 0])


def test_palette_with_transparency_keeps_colours(tmp_path):
    p = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    p.putpalette([10, 20, 30, 40, 50, 60] + [0] * (256 * 3 - 6))
    p.info["transparency"] = 0
    out = np.asarray(load_image(save(tmp_path / "pt.png", p, transparency=0)))
    np.testing.assert_array_equal(out[0], [[10, 20, 30], [40, 50, 60]])


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_grayscale_is_scaled_not_clipped(tmp_path, ext):
    a = np.array([[0, 257, 32768, 65535]], np.uint16)
    path = save(tmp_path / f"g16{ext}", Image.fromarray(a))
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")  # really stored as 16-bit
    out = np.asarray(load_image(path))[0, :, 0]
    np.testing.assert_array_equal(out, [0, 1, 128, 255])


def test_32bit_integer_out_of_16bit_range_rejected(tmp_path):
    a = np.array([[0, 70000]], np.int32)
    path = save(tmp_path / "i32.tif", Image.fromarray(a))
    with pytest.raises(DataError, match="i32.tif"):
        load_image(path)


def test_float_image_rejected(tmp_path):
    path = save(tmp_path / "f.tif", Image.fromarray(np.full((4, 4), 0.5, np.float32)))
    with Image.open(path) as im:
        assert im.mode == "F"
    with pytest.raises(DataError, match=r"f\.tif.*floating point"):
        load_image(path)


def test_jpeg(tmp_path):
    a = np.full((16, 16, 3), (200, 40, 90), np.uint8)
    out = np.asarray(load_image(save(tmp_path / "a.jpg", Image.fromarray(a), quality=95))).astype(int)
    assert out.shape == (16, 16, 3)
    assert np.abs(out - a).max() <= 4


def test_cmyk_jpeg(tmp_path):
    im = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red
    out = np.asarray(load_image(save(tmp_path / "c.jpg", im, quality=95))).astype(int)
    assert out[4, 4, 0] > 230 and out[4, 4, 1] < 30 and out[4, 4, 2] < 30


@pytest.mark.parametrize("name", ["UPPER.PNG", "b.bmp", "t.tiff", "w.webp", "j.JPEG"])
def test_other_formats_and_uppercase(tmp_path, name):
    a = rgb_array()
    lossless = name.lower().endswith((".png", ".bmp", ".tiff"))
    kw = {"lossless": True} if name.endswith(".webp") else {}
    fmt = "JPEG" if name.lower().endswith(".jpeg") else None
    path = save(tmp_path / name, Image.fromarray(a), format=fmt, **kw)
    out = np.asarray(load_image(path))
    assert out.shape == a.shape
    if lossless or kw:
        np.testing.assert_array_equal(out, a)
    assert list_images(tmp_path) == [path]


def test_exif_orientation_applied(tmp_path):
    a = np.zeros((10, 20, 3), np.uint8)  # 20 wide, 10 high; one marked corner
    a[0, 0] = 255
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = save(tmp_path / "r.jpg", im, exif=exif.tobytes(), quality=100)
    out = load_image(path)
    assert out.size == (10, 20)
    assert image_size(path) == (10, 20)
    assert np.asarray(out)[0, -1].min() > 200  # top-left moved to top-right


def test_truncated_png_raises_naming_file(tmp_path):
    path = save(tmp_path / "trunc.png", Image.fromarray(rgb_array(64, 64)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="trunc.png"):
        load_image(path)


def test_text_file_named_png_raises(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(DataError, match="notes.png"):
        load_image(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(DataError, match="nothere.png"):
        load_image(tmp_path / "nothere.png")


# -- masks --------------------------------------------------------------------------------------
def test_load_mask_values_and_size(tmp_path):
    path = make_mask(tmp_path / "m.png")
    m = load_mask(path, size=(16, 12))
    assert m.dtype == bool and m.shape == (12, 16)
    assert m.sum() == 12 and m[2:5, 3:7].all()


def test_mask_label_values_and_rgb(tmp_path):
    a = np.zeros((4, 4), np.uint8)
    a[0, 0] = 1  # label-index masks: 1 is a defect
    assert load_mask(save(tmp_path / "l.png", Image.fromarray(a))).sum() == 1
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 255  # opaque black background must not count
    rgba[1, 2, 0] = 255
    m = load_mask(save(tmp_path / "c.png", Image.fromarray(rgba, "RGBA")))
    assert m.sum() == 1 and m[1, 2]


def test_jpeg_mask_ignores_compression_noise(tmp_path):
    a = np.zeros((32, 32), np.uint8)
    a[5:21, 7:19] = 255  # not aligned to JPEG's 8x8 blocks
    m = load_mask(save(tmp_path / "m.jpg", Image.fromarray(a), quality=50))
    with Image.open(tmp_path / "m.jpg") as raw:
        assert np.asarray(raw).astype(bool).sum() > 16 * 12 + 20  # noise is there
    assert abs(int(m.sum()) - 16 * 12) <= 8


def test_mask_wrong_size_raises_naming_it(tmp_path):
    path = make_mask(tmp_path / "bad_mask.png", size=(16, 12))
    with pytest.raises(DataError, match=r"bad_mask\.png.*16x12.*20x12"):
        load_mask(path, size=(20, 12))


def test_preprocess_mask_direct():
    rng = np.random.default_rng(1)
    for h, w, resize, crop in [(900, 900, 448, 392), (512, 512, 448, 392), (768, 1024, 448, 392), (7, 5, 16, 14)]:
        m = rng.random((h, w)) > 0.5
        got = Preprocess(resize=resize, crop=crop, patch_size=1).mask(m)
        assert got.shape == (crop, crop) and got.dtype == bool
        # direct: destination pixel centre -> source pixel, then torchvision's crop offset
        top = int(round((resize - crop) / 2.0))
        rows = [min(int((top + i + 0.5) * h / resize), h - 1) for i in range(crop)]
        cols = [min(int((top + j + 0.5) * w / resize), w - 1) for j in range(crop)]
        np.testing.assert_array_equal(got, m[np.ix_(rows, cols)])
        # and the same as torch's pixel-centre nearest interpolation
        t = F.interpolate(torch.from_numpy(m).float()[None, None], size=(resize, resize), mode="nearest-exact")
        np.testing.assert_array_equal(got, t[0, 0, top : top + crop, top : top + crop].numpy() > 0)


def test_preprocess_mask_small_example():
    m = np.zeros((4, 4), bool)
    m[0, 0] = True
    # 4 -> 8 doubles each pixel; crop 6 starts at 1: the top-left 2x2 block becomes 1x1 at (0, 0)
    got = Preprocess(resize=8, crop=6, patch_size=1).mask(m)
    expected = np.zeros((6, 6), bool)
    expected[0, 0] = True
    np.testing.assert_array_equal(got, expected)


# -- list_images --------------------------------------------------------------------------------
def test_list_images_sorted_filtered(tmp_path):
    for n in ["b.png", "a.JPG", "c.tif", ".hidden.png", "._a.png", "notes.txt"]:
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.tif"]


def test_list_images_recursive_skips_hidden_folders(tmp_path):
    for rel in ["good/000.png", "crack/000.png", "crack/deep/001.jpg", ".cache/x.png", "top.bmp"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)]
    assert got == ["crack/000.png", "crack/deep/001.jpg", "good/000.png", "top.bmp"]
    assert [p.name for p in list_images(tmp_path)] == ["top.bmp"]
    (tmp_path / "top.bmp").unlink()
    with pytest.raises(DataError, match="did you mean"):
        list_images(tmp_path)


def test_list_images_empty_and_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        list_images(tmp_path / "empty")
    with pytest.raises(DataError, match="missing"):
        list_images(tmp_path / "missing")


# -- MVTec layout -------------------------------------------------------------------------------
def make_mvtec(root: Path, cat="widget", masks=True) -> Path:
    c = root / cat
    for i in range(5):
        make_image(c / "train" / "good" / f"{i:03d}.png")
    for i in range(3):
        make_image(c / "test" / "good" / f"{i:03d}.png")
    for i in range(2):
        make_image(c / "test" / "scratch" / f"{i:03d}.png")
        if masks:
            make_mask(c / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    make_image(c / "test" / "dent" / "000.jpg")
    if masks:
        make_mask(c / "ground_truth" / "dent" / "000.png")  # plain-stem mask naming is accepted too
    return root


def test_mvtec_synthetic(tmp_path):
    make_mvtec(tmp_path)
    make_mvtec(tmp_path, "other", masks=False)
    (tmp_path / "not_a_category").mkdir()
    cats = load_mvtec(tmp_path)
    assert [c.name for c in cats] == ["other", "widget"]
    w = cats[1]
    assert isinstance(w, Category) and w.has_masks and not cats[0].has_masks
    assert len(w.train) == 5 and len(w.test) == 6
    assert sum(s.label for s in w.test) == 3
    assert {s.defect for s in w.test} == {"good", "scratch", "dent"}
    for s in w.test:
        assert isinstance(s, Sample)
        assert (s.label == 0) == (s.defect == "good")
        assert (s.mask_path is not None) == (s.label == 1)
    dent = next(s for s in w.test if s.defect == "dent")
    assert dent.mask_path.name == "000.png" and dent.mask_path.parent.name == "dent"
    scratch = [s for s in w.test if s.defect == "scratch"]
    assert all(s.mask_path.name == f"{s.path.stem}_mask.png" for s in scratch)
    assert all(s.mask_path is None for s in cats[0].test)
    assert [c.name for c in load_mvtec(tmp_path, ["widget"])] == ["widget"]


def test_mvtec_unknown_category_lists_available(tmp_path):
    make_mvtec(tmp_path)
    with pytest.raises(DataError, match="nope.*widget"):
        load_mvtec(tmp_path, ["nope"])


def test_mvtec_root_is_category_hint(tmp_path):
    make_mvtec(tmp_path)
    with pytest.raises(DataError, match="category folder itself"):
        load_mvtec(tmp_path / "widget")


def test_mvtec_defective_without_mask(tmp_path):
    make_mvtec(tmp_path)
    make_image(tmp_path / "widget" / "test" / "scratch" / "007.png")
    with pytest.raises(DataError, match=r"007\.png.*no mask"):
        load_mvtec(tmp_path)


def test_mvtec_mask_without_image(tmp_path):
    make_mvtec(tmp_path)
    make_mask(tmp_path / "widget" / "ground_truth" / "scratch" / "009_mask.png")
    with pytest.raises(DataError, match=r"009_mask\.png.*without an image"):
        load_mvtec(tmp_path)


def test_mvtec_mask_folder_without_test_folder(tmp_path):
    make_mvtec(tmp_path)
    make_mask(tmp_path / "widget" / "ground_truth" / "crack" / "000_mask.png")
    with pytest.raises(DataError, match=r"crack.*000_mask\.png"):
        load_mvtec(tmp_path)


def test_mvtec_train_only(tmp_path):
    make_image(tmp_path / "plain" / "train" / "good" / "a.png")
    (c,) = load_mvtec(tmp_path)
    assert c.train and c.test == [] and not c.has_masks


# -- VisA layout --------------------------------------------------------------------------------
def test_visa_csv(tmp_path):
    rows = ["object,split,label,image,mask"]
    for cat in ["candle", "pcb1"]:
        for i in range(3):
            rel = f"{cat}/Data/Images/Normal/{i:03d}.JPG"
            make_image(tmp_path / rel)
            rows.append(f"{cat},{'train' if i < 2 else 'test'},normal,{rel},")
        for i in range(2):
            rel, mrel = f"{cat}/Data/Images/Anomaly/{i:03d}.JPG", f"{cat}/Data/Masks/Anomaly/{i:03d}.png"
            make_image(tmp_path / rel)
            make_mask(tmp_path / mrel)
            rows.append(f"{cat},test,anomaly,{rel},{mrel}")
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    cats = load_visa(tmp_path)
    assert [c.name for c in cats] == ["candle", "pcb1"]
    c = cats[0]
    assert len(c.train) == 2 and len(c.test) == 3 and c.has_masks
    assert [s.label for s in c.test] == [0, 1, 1]
    assert c.test[1].mask_path == tmp_path / "candle/Data/Masks/Anomaly/000.png"
    assert c.test[0].mask_path is None and c.test[0].defect == "good"
    assert [c.name for c in load_visa(tmp_path, ["pcb1"])] == ["pcb1"]
    with pytest.raises(DataError, match="nope.*candle"):
        load_visa(tmp_path, ["nope"])
    # a listed file that does not exist is named
    (tmp_path / "candle/Data/Images/Anomaly/001.JPG").unlink()
    with pytest.raises(DataError, match="001.JPG"):
        load_visa(tmp_path)


def test_visa_without_csv(tmp_path):
    make_image(tmp_path / "candle" / "Data" / "Images" / "Normal" / "000.JPG")
    with pytest.raises(DataError, match="1cls.csv.*raw VisA layout"):
        load_visa(tmp_path)


# -- plain folders ------------------------------------------------------------------------------
def test_load_folder(tmp_path):
    for i in range(4):
        make_image(tmp_path / "ok" / f"{i}.png")
    for i in range(2):
        make_image(tmp_path / "ok_test" / f"g{i}.png")
    make_image(tmp_path / "bad" / "scratch" / "s0.png")
    make_image(tmp_path / "bad" / "scratch" / "s1.bmp")
    make_image(tmp_path / "bad" / "dent" / "d0.png")
    make_mask(tmp_path / "masks" / "s0_mask.png")
    make_mask(tmp_path / "masks" / "s1.png")
    make_mask(tmp_path / "masks" / "d0_mask.tif")
    cat = load_folder(
        tmp_path / "ok",
        [tmp_path / "bad" / "scratch", tmp_path / "bad" / "dent"],
        test_good=tmp_path / "ok_test",
        masks=tmp_path / "masks",
        name="parts",
    )
    assert cat.name == "parts" and len(cat.train) == 4 and cat.has_masks
    assert [(s.label, s.defect) for s in cat.test] == [(0, "good")] * 2 + [(1, "scratch")] * 2 + [(1, "dent")]
    assert [s.mask_path.name if s.mask_path else None for s in cat.test] == [
        None, None, "s0_mask.png", "s1.png", "d0_mask.tif"
    ]
    plain = load_folder(tmp_path / "ok")
    assert plain.test == [] and not plain.has_masks
    make_image(tmp_path / "bad" / "dent" / "d9.png")
    with pytest.raises(DataError, match="d9.png"):
        load_folder(tmp_path / "ok", [tmp_path / "bad" / "dent"], masks=tmp_path / "masks")


# -- background decoding ------------------------------------------------------------------------
def to_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)


@pytest.mark.parametrize("workers", [0, 3])
def test_iter_batches_in_order(tmp_path, workers):
    paths = [make_image(tmp_path / f"{i:02d}.png", size=(6, 5), value=i * 10) for i in range(11)]
    seen = []
    for idx, batch in iter_batches(paths, to_tensor, batch_size=4, num_workers=workers):
        assert batch.shape == (len(idx), 3, 5, 6)
        for i, t in zip(idx, batch):
            assert t[0, 0, 0].item() == i * 10
        seen += idx
    assert seen == list(range(11))
    assert [len(i) for i, _ in iter_batches(paths, to_tensor, 4, workers)] == [4, 4, 3]


def test_iter_batches_bounded_prefetch_and_errors(tmp_path):
    paths = [make_image(tmp_path / f"{i:02d}.png", size=(4, 4)) for i in range(40)]
    started = []
    lock = threading.Lock()

    def slow(im):
        with lock:
            started.append(1)
        return to_tensor(im)

    it = iter_batches(paths, slow, batch_size=4, num_workers=4)
    next(it)
    time.sleep(0.3)  # give the workers time to run ahead as far as they are allowed
    assert len(started) <= 4 * 3  # the yielded batch + at most 2 prefetched
    it.close()
    (tmp_path / "05.png").write_text("garbage")
    with pytest.raises(DataError, match="05.png"):
        list(iter_batches(paths, to_tensor, batch_size=4, num_workers=2))


# -- real data ----------------------------------------------------------------------------------
def test_real_bottle(mvtec_root):
    (c,) = load_mvtec(mvtec_root, ["bottle"])
    assert c.has_masks
    assert len(c.train) == 209 and len(c.test) == 83
    bad = [s for s in c.test if s.label == 1]
    assert len(bad) == 63
    assert {s.defect for s in bad} == {"broken_large", "broken_small", "contamination"}
    assert all(s.mask_path is not None for s in bad)
    for s in bad:
        m = load_mask(s.mask_path, size=image_size(s.path))
        assert m.any()
    im = load_image(c.train[0])
    assert im.mode == "RGB" and im.size == (900, 900)


def test_real_screw(mvtec_root):
    if not (mvtec_root / "screw").is_dir():
        pytest.skip("screw not present")
    (c,) = load_mvtec(mvtec_root, ["screw"])
    assert not c.has_masks
    assert len(c.train) == 320 and len(c.test) == 160
    assert sum(s.label for s in c.test) == 119
    assert all(s.mask_path is None for s in c.test)
    im = load_image(c.test[0].path)
    assert im.mode == "RGB" and im.size == (512, 512)
    a = np.asarray(im)
    assert (a[..., 0] == a[..., 2]).all()  # grayscale source
