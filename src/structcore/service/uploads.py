"""What gets in: an uploaded file is checked from its header (empty, not an image, too many pixels)
before it takes a place in the queue; the pixels are decoded later, on the inference thread, by
:func:`structcore.images.decode_image` (the same rules as files given to ``structcore predict``)."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..images import decode_image

#: Default limits: the request body (all files of a request together) and the decoded pixels per image.
#: The pixel limit may not exceed Pillow's own ``Image.MAX_IMAGE_PIXELS`` (checked by the app).
MAX_BODY_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000


class UploadError(Exception):
    """A request that cannot be served as it is: the HTTP status and a message naming what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_header(data: bytes, name: str, max_pixels: int) -> tuple[int, int]:
    """``(width, height)`` of an uploaded image, read from its header only; UploadError when it is empty
    (400), not an image (415) or has more than ``max_pixels`` pixels (413, a decompression bomb)."""
    if not data:
        raise UploadError(400, f"{name}: the file is empty (0 bytes); upload an image file")
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            width, height = im.size
    except Image.DecompressionBombError as e:
        raise UploadError(413, f"{name}: the image is too large to decode safely ({e})") from None
    except UnidentifiedImageError:
        raise UploadError(415, f"{name}: not an image file Pillow can read ({len(data)} bytes; "
                          "send PNG, JPEG, BMP, TIFF or WebP)") from None
    except Exception as e:  # noqa: BLE001 - a header Pillow recognises but cannot parse
        raise UploadError(422, f"{name}: the image header is corrupt ({type(e).__name__}: {e})") from None
    if width * height > max_pixels:
        raise UploadError(413, f"{name}: {width}x{height} is {width * height:,} pixels, more than this server's "
                          f"limit of {max_pixels:,}; downscale it before sending")
    return width, height


def decode_upload(data: bytes, name: str) -> Image.Image:
    """The upload's pixels as 8-bit RGB; UploadError 422 when they are corrupt or truncated."""
    try:
        return decode_image(data, name)
    except DataError as e:
        raise UploadError(422, str(e)) from None
