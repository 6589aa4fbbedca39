"""Image files that come from outside the pipeline: which files are served as images, and
decoding an uploaded photo within a pixel budget.

Serving: a file is an image when its extension is one of ``IMAGE_TYPES`` and its first bytes are
that format's signature (``image_content_type``); the content type sent is the one both agree on.

Decoding (``load_image``): an uploaded file can claim any size, and a 315 KB PNG can hold 100
million pixels (300 MB once decoded, more on the way to a tensor). The size is read from the
file header (PIL opens lazily) before anything is decoded; JPEGs decode at 1/2, 1/4 or 1/8 scale
(draft mode) when the result stays larger than the caller needs; what would still decode to more
than ``MAX_DECODE_PIXELS`` is refused with a message naming the size and the limit; and at most
``MAX_CONCURRENT_DECODES`` files decode at once in the process.
"""
from __future__ import annotations

import os
import threading
import warnings

from PIL import Image, UnidentifiedImageError

MAX_DECODE_PIXELS = 25_000_000  # a 6000 x 4000 photo; 75-100 MB decoded
MAX_CONCURRENT_DECODES = 2  # per process: bounds the memory of simultaneous uploads
_decode_slots = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)

# extension -> content type; the only files ever served as photos
IMAGE_TYPES = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
    ".gif": "image/gif", ".tif": "image/tiff", ".tiff": "image/tiff", ".bmp": "image/bmp",
}
_SIGNATURES = {  # content type -> the first bytes a file of that type starts with
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/tiff": (b"II*\x00", b"MM\x00*"),
    "image/bmp": (b"BM",),
}
# EXIF orientation -> the transpose that shows the photo upright (what ImageOps.exif_transpose does)
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


class ImageRefused(ValueError):
    """A file that is not decoded: not a readable image, or too large. The message says which."""


def _starts_as(head: bytes, content_type: str) -> bool:
    if content_type == "image/webp":
        return head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    return any(head.startswith(s) for s in _SIGNATURES[content_type])


def image_content_type(path: str | os.PathLike) -> str | None:
    """The content type of an image file, from its extension and confirmed by its first bytes;
    None for anything else (another extension, other content, a missing or unreadable file)."""
    content_type = IMAGE_TYPES.get(os.path.splitext(os.fspath(path))[1].lower())
    if content_type is None:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    return content_type if _starts_as(head, content_type) else None


def megapixels(n: int) -> str:
    return f"{n / 1e6:,.0f} megapixels" if n >= 1e7 else f"{n / 1e6:,.1f} megapixels"


def load_image(path: str | os.PathLike, size: int | None = None, max_pixels: int = MAX_DECODE_PIXELS) -> Image.Image:
    """An RGB image from a file that may be hostile, decoded within ``max_pixels``.

    ``size``: the shorter side the caller needs (a backbone's input). JPEGs then decode in draft
    mode, and the decoded image is reduced (box filter, by a whole factor) to a shorter side
    between ``size`` and ``2 * size``, so that little stays in memory. EXIF orientation is applied.
    Raises ImageRefused for a file that is not a readable image, or that would decode to more
    than ``max_pixels`` pixels (the message names its size and the limit).
    """
    with _decode_slots:
        try:
            with warnings.catch_warnings():
                # PIL warns above 89 million pixels and refuses above 179 million; the budget here is lower
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(path)  # reads the header only
        except Image.DecompressionBombError as err:
            raise ImageRefused(f"the photo is too large: {err}; at most {megapixels(max_pixels)} are "
                               "decoded, send a smaller version") from err
        except FileNotFoundError as err:
            raise ImageRefused("the photo's file is gone") from err
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise ImageRefused("not a readable image file (JPEG, PNG, WebP, GIF, TIFF or BMP)") from err
        with img:
            width, height = img.size
            if size:
                img.draft("RGB", (size, size))  # JPEG: decode at reduced scale; other formats ignore it
            if img.width * img.height > max_pixels:
                raise ImageRefused(
                    f"the photo is {width:,} x {height:,} pixels ({megapixels(width * height)}); photos up to "
                    f"{megapixels(max_pixels)} are accepted (JPEGs larger, as they decode at reduced size); "
                    "send a smaller version")
            orientation = img.getexif().get(0x0112, 1)
            try:
                img.load()
                rgb = img if img.mode == "RGB" else img.convert("RGB")
            except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt data
                raise ImageRefused(f"the image data cannot be decoded ({err})") from err
        if size and min(rgb.size) >= 2 * size:
            rgb = rgb.reduce(min(rgb.size) // size)
        if orientation in _ORIENTATION:
            rgb = rgb.transpose(_ORIENTATION[orientation])
        return rgb
