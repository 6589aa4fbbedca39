"""Image files that come from outside the pipeline: which files are served as images, and
opening a photo safely: within a pixel budget, first frame, orientation applied. Uploads
(``load_image``) and the photo index (``crossmodal.photos.indexer``) both open photos here.

Serving: a file is an image when its extension is a photo's (``PHOTO_EXTENSIONS``) and its first
bytes are an image format's signature (``image_content_type``); the content type sent is the one its
bytes show, whatever the extension says (a PNG saved as ".jpg" is served as a PNG).

Decoding: a file can claim any size, and a 315 KB PNG can hold 100 million pixels (300 MB once
decoded, more on the way to a tensor). A ``DecodeBudget`` bounds what a file may cost, read from
its header (PIL opens lazily) before anything is decoded: the pixels it decodes to (JPEGs decode at
1/2, 1/4 or 1/8 scale, draft mode, when the result stays larger than the caller needs), and its
shape: a backbone resizes the shorter side to its input size, so a 100000 x 1 strip would grow to
22 million pixels wide; no photo wider or taller than ``MAX_ASPECT`` to 1 is decoded, which bounds
the resized image at ``size`` x ``size`` x ``MAX_ASPECT`` pixels. What is refused gets a message
naming its size and the one limit it passes. Uploads have ``UPLOAD_BUDGET``; the photo index (its
embedding and its OCR) ``INDEX_BUDGET``, larger: its photos are the owner's, decoded by at most a
few workers, and a camera's full-size photo must not be refused. At most
``MAX_CONCURRENT_DECODES`` files decode at once in ``load_image``.

``open_image`` reads the header only and refuses before any pixel is decoded; ``photo_info``
reads EXIF (date taken, camera) and the displayed size; ``upright_rgb`` decodes the first frame
(GIF, multi-page TIFF) as upright RGB. HEIC/HEIF open through pillow-heif (``register_heif``).
"""
from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from datetime import datetime

from PIL import ExifTags, Image, UnidentifiedImageError

from crossmodal import webdataset

MAX_DECODE_PIXELS = 25_000_000  # uploads: a 6000 x 4000 photo; 75-100 MB decoded
# The photo index: above any camera phone and most DSLRs (a 61 MP full-frame photo passes); an RGB
# decode of this size takes 300 MB, and two decoding workers may hold one each.
INDEX_MAX_PIXELS = 100_000_000
# Wider or taller than this is no photo a caption describes (a 360-degree panorama is about 8 to 1):
# at a 224-pixel input, the resized image is at most 224 x 5,600 pixels (3.8 MB).
MAX_ASPECT = 25
DATE_TAKEN_TAG = 36867  # DateTimeOriginal, in the Exif IFD
MAKE_TAG, MODEL_TAG, ORIENTATION_TAG = 271, 272, 274  # in IFD0
EXIF_DATE_FORMAT = "%Y:%m:%d %H:%M:%S"
MAX_CONCURRENT_DECODES = 2  # per process: bounds the memory of simultaneous uploads
_decode_slots = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)

# the only files ever served as photos: these extensions, with an image's first bytes
PHOTO_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp", ".heic", ".heif"})
_SIGNATURES = {  # content type -> the first bytes a file of that type starts with
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/tiff": (b"II*\x00", b"MM\x00*"),
    "image/bmp": (b"BM",),
}
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1")  # an ISO media file's brand: HEIC/HEIF
# EXIF orientation -> the transpose that shows the photo upright (what ImageOps.exif_transpose does)
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


class ImageRefused(ValueError):
    """A file that is not decoded: not a readable image, or too large. The message says which."""


class ImageTooLarge(ImageRefused):
    """A file over the decode budget: too many pixels (a decompression bomb, or a huge photo), or too
    long and thin a shape."""


@dataclass(frozen=True)
class DecodeBudget:
    """What decoding one file may cost: at most ``max_pixels`` decoded pixels, and no side longer
    than ``max_aspect`` times the other (which bounds the image a backbone resizes it to)."""
    max_pixels: int
    max_aspect: float = MAX_ASPECT

    def check(self, width: int, height: int, decoded: int | None = None) -> None:
        """ImageTooLarge, naming the size and the limit passed, for a ``width`` x ``height`` image that
        decodes to ``decoded`` pixels (default: all of them)."""
        long, short = max(width, height), max(min(width, height), 1)
        if long > self.max_aspect * short:
            raise ImageTooLarge(f"the photo is {width:,} x {height:,} pixels, {long / short:,.0f} times longer than "
                                f"wide; photos up to {self.max_aspect:g} to 1 are decoded: crop it to search it")
        if (width * height if decoded is None else decoded) > self.max_pixels:
            raise ImageTooLarge(f"the photo is {width:,} x {height:,} pixels ({megapixels(width * height)}); "
                                f"photos up to {megapixels(self.max_pixels)} are decoded: resize it to search it")


UPLOAD_BUDGET = DecodeBudget(MAX_DECODE_PIXELS)
INDEX_BUDGET = DecodeBudget(INDEX_MAX_PIXELS)


def sniff_content_type(head: bytes) -> str | None:
    """The image content type a file's first 16 bytes show, None for anything else."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "image/heic"
    return next((t for t, signatures in _SIGNATURES.items() if head.startswith(signatures)), None)


def image_content_type(path: str | os.PathLike) -> str | None:
    """The content type of a photo file, from its first bytes, for a file with a photo's extension;
    None for anything else (another extension, other content, a missing or unreadable file)."""
    if os.path.splitext(os.fspath(path))[1].lower() not in PHOTO_EXTENSIONS:
        return None
    try:
        with open(path, "rb") as f:
            return sniff_content_type(f.read(16))
    except OSError:
        return None


def megapixels(n: int) -> str:
    return f"{n / 1e6:,.0f} megapixels" if n >= 1e7 else f"{n / 1e6:,.1f} megapixels"


def open_image(path: str | os.PathLike, budget: DecodeBudget, size: int | None = None) -> Image.Image:
    """The image opened lazily (header read, nothing decoded); with ``size`` (the shorter side the
    caller needs) a JPEG is set to decode at reduced scale (draft mode). ImageTooLarge when it is
    over ``budget``; Pillow's own errors (not an image, a missing file) pass through. Close it (a
    ``with`` block) when done."""
    with warnings.catch_warnings():
        # PIL warns above 89 million pixels and refuses above 179 million; the budget here is checked below
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(webdataset.open_source(path))  # reads the header only (or a shard member)
        except Image.DecompressionBombError as err:
            raise ImageTooLarge(f"the photo has more than {megapixels(2 * Image.MAX_IMAGE_PIXELS)}; photos up to "
                                f"{megapixels(budget.max_pixels)} are decoded: resize it to search it") from err
    width, height = img.size
    if size:
        img.draft("RGB", (size, size))  # JPEG: decode at reduced scale; other formats ignore it
    try:
        budget.check(width, height, img.width * img.height)
    except ImageTooLarge:
        img.close()
        raise
    return img


def upright_rgb(img: Image.Image, size: int | None = None) -> Image.Image:
    """The first frame of an opened image decoded as RGB (a JPEG at the smallest scale still
    covering ``size`` x ``size``), turned upright by its EXIF orientation."""
    if size:
        img.draft("RGB", (size, size))
    img.seek(0)
    orientation = img.getexif().get(ORIENTATION_TAG, 1)
    img.load()
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    return rgb.transpose(_ORIENTATION[orientation]) if orientation in _ORIENTATION else rgb


def load_image(path: str | os.PathLike, size: int | None = None, budget: DecodeBudget = UPLOAD_BUDGET) -> Image.Image:
    """An RGB image from a file that may be hostile, decoded within ``budget``.

    ``size``: the shorter side the caller needs (a backbone's input). JPEGs then decode in draft
    mode, and the decoded image is reduced (box filter, by a whole factor) to a shorter side
    between ``size`` and ``2 * size``, so that little stays in memory. EXIF orientation is applied.
    Raises ImageRefused for a file that is not a readable image, and ImageTooLarge (an ImageRefused)
    for one over the budget (the message names its size and the limit).
    """
    with _decode_slots:
        try:
            img = open_image(path, budget, size)
        except ImageTooLarge:  # (a ValueError: passed on as it is, not wrapped below)
            raise
        except FileNotFoundError as err:
            raise ImageRefused("the photo's file is gone") from err
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise ImageRefused("not a readable image file (JPEG, PNG, WebP, GIF, TIFF or BMP)") from err
        with img:
            orientation = img.getexif().get(ORIENTATION_TAG, 1)
            try:
                img.load()
                rgb = img if img.mode == "RGB" else img.convert("RGB")
            except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt data
                raise ImageRefused(f"the image data cannot be decoded ({err})") from err
        if size and min(rgb.size) >= 2 * size:  # reduced before turning: the turn then copies less
            rgb = rgb.reduce(min(rgb.size) // size)
        if orientation in _ORIENTATION:
            rgb = rgb.transpose(_ORIENTATION[orientation])
        return rgb


_heif: bool | None = None  # whether this process has pillow-heif registered (None: not tried yet)


def register_heif() -> bool:
    """Let Pillow open HEIC/HEIF (pillow-heif), once per process; False when it is not installed
    (such files are then recorded as undecodable)."""
    global _heif
    if _heif is None:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
            _heif = True
        except ImportError:
            _heif = False
    return _heif


@dataclass(frozen=True)
class PhotoInfo:
    width: int  # as displayed (after the EXIF orientation)
    height: int
    taken_at: str | None  # ISO 8601 local time from EXIF DateTimeOriginal, None when absent or invalid
    camera: str | None  # "Make Model" from EXIF


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if value is None:
        return None
    text = str(value).replace("\x00", "").strip()
    return text or None


def camera_name(make: object, model: object) -> str | None:
    """"Make Model", without repeating the make when the model already starts with it."""
    make, model = _text(make), _text(model)
    if make and model and model.lower().startswith(make.lower()):
        return model
    return " ".join(p for p in (make, model) if p) or None


def exif_date(value: object) -> str | None:
    """An EXIF date ("2019:07:14 10:20:30") as ISO 8601, None when it is not a real date."""
    text = _text(value)
    try:
        return datetime.strptime(text[:19], EXIF_DATE_FORMAT).isoformat() if text else None
    except ValueError:  # "0000:00:00 00:00:00", blanks, other formats
        return None


def photo_info(img: Image.Image) -> PhotoInfo:
    """Displayed size, date taken and camera of an opened photo (reads only metadata)."""
    try:
        exif = img.getexif()
        taken = exif_date(exif.get_ifd(ExifTags.IFD.Exif).get(DATE_TAKEN_TAG))
        camera = camera_name(exif.get(MAKE_TAG), exif.get(MODEL_TAG))
        orientation = exif.get(ORIENTATION_TAG)
    except Exception:  # noqa: BLE001 - damaged EXIF must not make the photo unreadable
        taken, camera, orientation = None, None, None
    w, h = img.size
    if orientation in (5, 6, 7, 8):  # a quarter turn: displayed width and height swap
        w, h = h, w
    return PhotoInfo(w, h, taken, camera)
