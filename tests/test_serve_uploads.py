"""Uploads decode to the same pixels as files (``decode_image`` vs ``load_image``), and the header checks
refuse what they should before any decoding."""

import io

import numpy as np
import pytest
from PIL import Image

from structcore.images import decode_image, load_image
from structcore.service.uploads import UploadError, check_header, decode_upload


def _saved(tmp_path, name, image, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


@pytest.mark.parametrize("name, make, options", [
    ("rgb.png", lambda a: Image.fromarray(a), {}),
    ("gray16.png", lambda a: Image.fromarray((a[..., 0].astype(np.uint16) * 257)), {}),
    ("rgba.png", lambda a: Image.fromarray(np.dstack([a, a[..., :1]])), {}),
    ("photo.jpg", lambda a: Image.fromarray(a), {"quality": 90}),
])
def test_an_upload_decodes_to_the_pixels_of_the_same_file(tmp_path, name, make, options):
    rng = np.random.default_rng(1)
    path = _saved(tmp_path, name, make(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)), **options)
    from_bytes = decode_image(path.read_bytes(), name)
    assert from_bytes.mode == "RGB"
    assert np.array_equal(np.asarray(from_bytes), np.asarray(load_image(path)))


def test_exif_orientation_is_applied_to_uploads_too(tmp_path):
    image = Image.fromarray(np.arange(30 * 40 * 3, dtype=np.uint8).reshape(30, 40, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the viewer shows it 30 wide and 40 high
    path = _saved(tmp_path, "rotated.jpg", image, exif=exif)
    assert decode_image(path.read_bytes(), "rotated.jpg").size == (30, 40)
    assert np.array_equal(np.asarray(decode_image(path.read_bytes())), np.asarray(load_image(path)))


def test_header_checks_name_the_file_and_the_status():
    png = io.BytesIO()
    Image.new("RGB", (100, 50)).save(png, format="PNG")
    assert check_header(png.getvalue(), "a.png", max_pixels=5000) == (100, 50)
    for data, limit, status in ((b"", 10**6, 400), (b"GIF89a but not really", 10**6, 415), (png.getvalue(), 4999, 413)):
        with pytest.raises(UploadError) as caught:
            check_header(data, "a.png", max_pixels=limit)
        assert caught.value.status == status and str(caught.value).startswith("a.png: ")
    with pytest.raises(UploadError) as caught:
        decode_upload(png.getvalue()[:-30], "cut.png")
    assert caught.value.status == 422 and "cut.png" in str(caught.value)
