"""Opening a photo: the size check before decoding, what EXIF says, and the upright RGB picture.

``open_photo`` reads only the header (Pillow opens lazily) and refuses a picture of more than
``MAX_PIXELS`` pixels before any pixel is decoded: a small file can declare a huge image (a
decompression bomb) that would exhaust memory. ``photo_info`` reads the date taken (EXIF
DateTimeOriginal, else the file's modification time) and the camera (EXIF Make and Model).
``upright_rgb`` decodes the first frame (GIF, multi-page TIFF), JPEGs at a reduced scale (draft
mode) when the backbone's input is much smaller, and applies the EXIF orientation.
HEIC/HEIF open through pillow-heif, which applies their orientation itself.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import datetime

from PIL import ExifTags, Image, ImageOps

# 100 megapixels: above any camera phone and most DSLRs (a 61 MP full-frame photo passes); an RGB
# decode of this size takes 300 MB, and two decoding workers may hold one each.
MAX_PIXELS = 100_000_000
DATE_TAKEN_TAG = 36867  # DateTimeOriginal, in the Exif IFD
MAKE_TAG, MODEL_TAG, ORIENTATION_TAG = 271, 272, 274  # in IFD0
EXIF_DATE_FORMAT = "%Y:%m:%d %H:%M:%S"


class PhotoRefused(ValueError):
    """A file that is not decoded on purpose (too many pixels); the message says why."""


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


def open_photo(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """The photo opened lazily (header read, nothing decoded); PhotoRefused above ``max_pixels``
    (default ``MAX_PIXELS``). Close it (a ``with`` block) when done."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    with warnings.catch_warnings():
        # Pillow warns above its own smaller limit; ours is checked below, on the same header.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as err:  # Pillow's hard limit (twice its warning limit)
            raise PhotoRefused(f"too large to decode safely ({err})") from err
    w, h = im.size
    if w * h > limit:
        im.close()
        raise PhotoRefused(f"{w} x {h} pixels ({w * h / 1e6:.0f} megapixels) is more than the "
                           f"{limit / 1e6:g} megapixel limit")
    return im


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


def photo_info(im: Image.Image) -> PhotoInfo:
    """Displayed size, date taken and camera of an opened photo (reads only metadata)."""
    try:
        exif = im.getexif()
        taken = exif_date(exif.get_ifd(ExifTags.IFD.Exif).get(DATE_TAKEN_TAG))
        camera = camera_name(exif.get(MAKE_TAG), exif.get(MODEL_TAG))
        orientation = exif.get(ORIENTATION_TAG)
    except Exception:  # noqa: BLE001 - damaged EXIF must not make the photo unreadable
        taken, camera, orientation = None, None, None
    w, h = im.size
    if orientation in (5, 6, 7, 8):  # a quarter turn: displayed width and height swap
        w, h = h, w
    return PhotoInfo(w, h, taken, camera)


def upright_rgb(im: Image.Image, size: int) -> Image.Image:
    """The first frame, decoded (a JPEG at the smallest scale still covering ``size`` x ``size``),
    turned upright by its EXIF orientation, as RGB."""
    if im.format == "JPEG":
        im.draft("RGB", (size, size))
    im.seek(0)
    return ImageOps.exif_transpose(im).convert("RGB")
