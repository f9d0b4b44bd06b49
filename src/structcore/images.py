"""Decoding images and masks: files, PIL images and numpy arrays all become 8-bit RGB (masks boolean).

Everything that can go wrong raises :class:`~structcore.errors.DataError` naming the file (or the
in-memory image) and what is wrong.

Decoding decisions made by :func:`load_image` (all images become 8-bit RGB):

* **Alpha** (LA, RGBA, PA, palette transparency) is dropped: the stored colour values are kept as they
  are. In inspection imagery an alpha channel is almost always an export artefact (fully opaque); the
  camera's pixel values are the signal, and compositing over a matte colour would invent pixels that the
  camera never recorded (and make results depend on an arbitrary matte colour).
* **16-bit** grayscale (``I;16*``, and ``I`` as 16-bit PNGs load in older Pillow) is scaled by the bit depth
  of the container, ``round(v * 255 / 65535)``, never clipped and never stretched per image: per-image
  min/max stretching would make the same gray level look different in different images, which is exactly
  what an anomaly detector must not see. (Data that uses only 12 of the 16 bits comes out dark, but
  consistently so across the data set.) 16-bit RGB files are reduced to 8 bits by Pillow itself.
* **32-bit integer** (``I``) data outside 0..65535 and **32-bit float** (``F``) images are rejected: their
  value range is not defined by the format (a float image may hold 0..1, 0..255, depths in millimetres...),
  so any mapping to 8 bits would be a guess. Convert such files to 8- or 16-bit first.
* **EXIF orientation** is applied (``ImageOps.exif_transpose``), so images appear the way viewers show them;
  masks get the same treatment. A malformed EXIF block only gives a warning.
* CMYK, YCbCr, HSV, 1-bit and palette images are converted with Pillow's ``convert("RGB")``.
* Truncated or corrupt files are errors (the pixels are decoded inside the check), never half-gray images.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import DataError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}

#: Mask formats whose compression is lossy: their masks are thresholded at half range, not at 0.
_LOSSY_EXTENSIONS = {".jpg", ".jpeg", ".webp"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def is_image_file(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()


def _open_decoded(path: Path, what: str) -> Image.Image:
    """Open ``path``, decode every pixel and apply the EXIF orientation; errors become DataError."""
    if not path.exists():
        raise DataError(f"{path}: no such {what} file")
    if not path.is_file():
        raise DataError(f"{path}: is a folder, not an {what} file")
    return _decode(path, path, what)


def _decode(source, name, what: str) -> Image.Image:
    """Open ``source`` (a path or a binary file object), decode every pixel and apply the EXIF
    orientation; errors become DataError naming ``name``."""
    try:
        with Image.open(source) as im:
            im.load()  # decode now, so truncated / corrupt data fails here and not later
            try:
                out = ImageOps.exif_transpose(im)
            except Exception as e:  # a broken EXIF block should not make an image unusable
                warnings.warn(f"{name}: ignoring unreadable EXIF orientation ({e})", stacklevel=4)
                out = im.copy()
            if out is im:  # older Pillow may return the same object; detach from the file
                out = im.copy()
    except Image.DecompressionBombError as e:
        raise DataError(f"{name}: image is too large to decode safely ({e})") from e
    except Exception as e:
        raise DataError(
            f"{name}: cannot read this {what} file ({type(e).__name__}: {e}); "
            "it is corrupt, truncated or not an image - replace or remove it"
        ) from e
    return out


def _scale_16bit(path: Path, im: Image.Image) -> Image.Image:
    a = np.asarray(im)
    if im.mode == "I":  # 32-bit signed container (how Pillow < 10.? loads 16-bit PNGs)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise DataError(
                f"{path}: 32-bit integer image with values {lo}..{hi}, outside the 16-bit range; "
                "there is no defined way to map it to 8 bits - convert it to an 8- or 16-bit image"
            )
    a8 = np.rint(a.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    return Image.fromarray(a8)  # 2-D uint8 -> mode "L"


def load_image(path: str | Path) -> Image.Image:
    """Load an image file as an 8-bit ``"RGB"`` PIL image.

    Handles 1-bit, L, LA, P/PA (palette), RGB, RGBA, CMYK, YCbCr, 16-bit grayscale PNG/TIFF, any of the
    formats in :data:`IMAGE_EXTENSIONS`, and EXIF orientation. See the module docstring for the decisions:
    alpha is dropped (not composited), 16-bit data is scaled by 255/65535, float images are rejected.
    Raises :class:`DataError` naming the file if it is missing, corrupt, truncated or not an image.
    """
    path = Path(path)
    return _to_rgb(_open_decoded(path, "image"), path)


def decode_image(data: bytes, name: str = "image") -> Image.Image:
    """An image file's bytes (an upload, say) as 8-bit ``"RGB"``, by the same rules as :func:`load_image`,
    so the same file gives the same pixels either way. ``name`` is for messages."""
    if not data:
        raise DataError(f"{name}: the file is empty (0 bytes)")
    return _to_rgb(_decode(io.BytesIO(data), name, "image"), name)


def _to_rgb(im: Image.Image, name) -> Image.Image:
    """A decoded PIL image of any mode as 8-bit RGB, by the module's rules; ``name`` is for messages."""
    mode = im.mode
    if mode == "F":
        raise DataError(
            f"{name}: 32-bit floating point image; its value range is not defined by the format, so it "
            "cannot be mapped to 8 bits without guessing - convert it to an 8- or 16-bit image"
        )
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        im = _scale_16bit(name, im)
    elif mode in ("P", "PA"):
        # via RGBA so that palette transparency is handled without warnings; the alpha is then dropped
        im = im.convert("RGBA")
    if im.mode == "RGB":
        return im
    try:
        return im.convert("RGB")  # RGBA/LA -> RGB drops the alpha channel (no compositing)
    except Exception as e:
        raise DataError(f"{name}: unsupported image mode {mode!r} ({e}); convert it to RGB") from e


def _array_image(a: np.ndarray, name: str) -> Image.Image:
    """An ``[H, W]``, ``[H, W, 1|3|4]`` array as a PIL image: uint8 as is, uint16 scaled by 255/65535,
    bool as 0/255, floats only in [0, 1] (times 255, rounded)."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not a.dtype.isnative:  # e.g. big-endian uint16 from a TIFF reader: same values, native byte order
        a = a.astype(a.dtype.newbyteorder("="))
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or 0 in a.shape:
        raise DataError(f"{name}: an image array must be [H, W] or [H, W, 3|4], got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = np.rint(a.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise DataError(f"{name}: a float image array must hold values in [0, 1]; scale it or pass uint8")
        a = np.rint(a.astype(np.float64) * 255.0).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise DataError(f"{name}: image arrays must be uint8, uint16, bool or float in [0, 1], got {a.dtype}")
    return Image.fromarray(np.ascontiguousarray(a))


def as_image(source, name: str = "image") -> Image.Image:
    """An image file path, a PIL image or a numpy array as 8-bit RGB (see :func:`load_image`)."""
    if isinstance(source, (str, Path)):
        return load_image(source)
    if isinstance(source, Image.Image):
        return _to_rgb(source, name)
    if isinstance(source, np.ndarray):
        return _to_rgb(_array_image(source, name), name)
    raise DataError(f"{name}: expected an image path, a PIL image or a numpy array, got {type(source).__name__}")


def source_size(source) -> tuple[int, int]:
    """``(width, height)`` of an image path (read from its header), PIL image or array."""
    if isinstance(source, (str, Path)):
        return image_size(source)
    if isinstance(source, Image.Image):
        return source.size
    return int(source.shape[1]), int(source.shape[0])


def source_name(source, index: int) -> str:
    """How results and messages name an image: its path, or ``<image N>`` for an in-memory one."""
    return str(source) if isinstance(source, (str, Path)) else f"<image {index}>"


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`load_image` returns it, read from the header only.

    Accounts for EXIF orientations that swap width and height. Raises :class:`DataError` if unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            w, h = im.size
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:
                orientation = 1
    except Exception as e:
        raise DataError(f"{path}: cannot read this image file ({type(e).__name__}: {e})") from e
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Load a ground-truth mask as a boolean ``[H, W]`` array: ``True`` (defect) where the pixel is > 0.

    Any mode is accepted: colour masks count a pixel as defect if any colour channel is > 0 (an alpha
    channel is ignored, as for images); 16-bit and label-index masks (0/1/2...) work as they are.
    Masks stored in a lossy format (JPEG, WebP) are thresholded at half range instead of 0, because
    compression leaves small nonzero values around every edge.
    ``size`` is the ``(width, height)`` of the image the mask belongs to; a mask of another size raises
    :class:`DataError` naming the mask and both sizes.
    """
    path = Path(path)
    im = _open_decoded(path, "mask")
    if size is not None and tuple(im.size) != tuple(size):
        raise DataError(
            f"{path}: mask is {im.size[0]}x{im.size[1]} (width x height) but its image is "
            f"{size[0]}x{size[1]}; masks must have exactly the size of their image"
        )
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    elif im.mode == "CMYK" or im.mode == "YCbCr":
        im = im.convert("RGB")
    a = np.asarray(im)
    if a.ndim == 3:
        if im.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
            a = a[..., :-1]  # ignore alpha
        a = a.max(axis=-1)
    if path.suffix.lower() in _LOSSY_EXTENSIONS:
        return a >= 128
    return a > 0
