"""Coverage-guided fuzzing of the image loader with atheris: any bytes in a file must give an 8-bit RGB
image or a DataError, never another exception (a crash found is a test: add its bytes to test_images_fuzz).

    python tests/fuzz_images.py CORPUS_DIR -max_total_time=10

Pillow (all its format plugins) is instrumented for coverage; structcore.images' functions too.
"""

import io
import sys
import tempfile
import warnings
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["PIL"]):
    from PIL import Image

    Image.init()  # import every format plugin inside the instrumented block

from structcore import images  # noqa: E402
from structcore.errors import DataError  # noqa: E402

for f in (images.load_image, images._open_decoded, images._to_rgb, images._scale_16bit, images.load_mask):
    atheris.instrument_func(f)

Image.MAX_IMAGE_PIXELS = 4_000_000  # keep each input cheap: larger declared sizes are DataErrors
warnings.simplefilter("ignore")
_file = Path(tempfile.mkdtemp(prefix="structcore-fuzz-")) / "input.png"


def one_input(data: bytes):
    _file.write_bytes(data)
    try:
        im = images.load_image(_file)
    except DataError:
        return
    assert im.mode == "RGB" and im.size[0] > 0 and im.size[1] > 0, (im.mode, im.size)


def seeds(folder: Path):
    """A few small valid files of each format, for the corpus."""
    for i, (mode, fmt) in enumerate([("RGB", "PNG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "GIF"), ("RGB", "JPEG"),
                                     ("RGB", "BMP"), ("I;16", "TIFF"), ("CMYK", "TIFF"), ("RGB", "WEBP"), ("1", "PNG")]):
        buf = io.BytesIO()
        Image.new(mode, (5, 4), 3).save(buf, format=fmt)
        (folder / f"seed{i}").write_bytes(buf.getvalue())


if __name__ == "__main__":
    if len(sys.argv) > 1 and Path(sys.argv[1]).is_dir() and not any(Path(sys.argv[1]).iterdir()):
        seeds(Path(sys.argv[1]))
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
