"""Property tests of the image and mask loaders (hypothesis) and a bounded coverage-guided fuzz run of the
image loader (atheris, skipped where it is not installed): any input gives an 8-bit RGB image (a boolean
mask) or a DataError naming it, never another exception."""

import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from structcore.errors import DataError
from structcore.images import as_image, load_image, load_mask

MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK", "YCbCr"]
FORMATS = ["PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def image_files(draw):
    """(bytes, suffix, size, damaged): a small image in some mode and format, maybe truncated or with flipped bytes."""
    mode, fmt = draw(st.sampled_from(MODES)), draw(st.sampled_from(FORMATS))
    w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if mode in ("I", "F"):
        im = Image.fromarray(rng.integers(0, 70000, (h, w)).astype(np.int32 if mode == "I" else np.float32))
    elif mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt)
    except (OSError, ValueError, KeyError, TypeError):
        assume(False)  # a combination the format cannot store
    data = buf.getvalue()
    damage = draw(st.sampled_from(["none", "truncate", "flip"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "flip":
        data = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        data = bytes(data)
    return data, "." + fmt.lower().replace("jpeg", "jpg"), (w, h), damage != "none"


@FUZZ
@given(image_files())
def test_any_image_file_loads_as_rgb_or_a_data_error(tmp_path, case):
    data, suffix, size, damaged = case
    path = tmp_path / f"x{suffix}"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            im = load_image(path)
        except DataError as e:
            assert str(path) in str(e)
            return
    assert im.mode == "RGB" and min(im.size) > 0
    if not damaged:
        assert im.size == size


@FUZZ
@given(image_files(), st.booleans())
def test_any_mask_file_loads_as_a_boolean_map_or_a_data_error(tmp_path, case, wrong_size):
    data, suffix, size, damaged = case
    path = tmp_path / f"m{suffix}"
    path.write_bytes(data)
    want = (size[0] + 1, size[1]) if wrong_size else size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            mask = load_mask(path, size=want)
        except DataError as e:
            assert str(path) in str(e)
            return
    assert mask.dtype == np.bool_ and mask.shape == (want[1], want[0]) and not wrong_size


_DTYPES = st.sampled_from([np.uint8, np.uint16, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64,
                           np.bool_, np.complex64, ">u2", "<f4"])


@FUZZ
@given(hnp.arrays(_DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)))
def test_any_array_becomes_rgb_or_a_data_error(array):
    try:
        im = as_image(array, "arr")
    except DataError as e:
        assert "arr" in str(e)
        return
    assert im.mode == "RGB" and im.size == (array.shape[1], array.shape[0])


def test_atheris_fuzz_of_the_image_loader(tmp_path):
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    script = Path(__file__).with_name("fuzz_images.py")
    env = {**os.environ, "PYTHONPATH": str(script.parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    seconds = os.environ.get("STRUCTCORE_FUZZ_SECONDS", "8")
    proc = subprocess.run([sys.executable, str(script), str(corpus), f"-max_total_time={seconds}", "-timeout=20",
                           "-rss_limit_mb=3000", f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True,
                          env=env, timeout=int(seconds) + 240)
    crashes = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-"))]
    assert proc.returncode == 0 and not crashes, (crashes, proc.stderr[-3000:])
    assert "Done" in proc.stderr and "#" in proc.stderr  # it ran inputs, not just started
