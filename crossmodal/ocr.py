"""Text in photos: an offline OCR model read at index time, so that a query's words can match a
sign, a label or a shirt in the photo.

The engine is RapidOCR (PyPI ``rapidocr-onnxruntime``): PP-OCRv4 detection and recognition as
ONNX models inside the wheel, run by onnxruntime on the CPU; nothing is downloaded. It is loaded
on the first ``read_text`` call, once per process, and calls are serialised (the engine keeps
per-call settings on itself, and one call already uses every core).

A photo is decoded by ``crossmodal.images.load_image`` (pixel budget, EXIF orientation) and
reduced to at most ``MAX_SIDE`` pixels on its longest side: detection cost grows with the pixel
count, and text too small to read at that size is rarely what a search names.
"""
from __future__ import annotations

import os
import threading
from typing import Any

from crossmodal.images import INDEX_BUDGET, ImageRefused, load_image

MAX_SIDE = 1600  # longest side fed to the detector, in pixels
# Recognised lines scoring below this are dropped. The engine's own cut is 0.5; the lines between
# 0.5 and 0.6 on the Flickr8k sample were misreadings, while rendered words score well above it.
MIN_CONFIDENCE = 0.6
# Wall seconds per photo on a shared 2-core CPU: the mean over the 200 photos (mostly 500 x 375) of
# the Flickr8k full-resolution sample, from `python -m bench.bench_ocr` (bench/results/ocr_cpu.log,
# which also gives CPU seconds and large photos). Re-measure there when the engine or MAX_SIDE changes.
MEASURED_SECONDS_PER_PHOTO = 1.1
HELP = (f"also read the text in each photo (signs, labels) with an offline OCR model, so a query's words "
        f"can match it; adds about {MEASURED_SECONDS_PER_PHOTO:.1f} s per photo to indexing on a 2-core CPU")

INSTALL_HINT = "OCR needs the rapidocr-onnxruntime package: pip install rapidocr-onnxruntime==1.4.4"

__all__ = ["HELP", "MAX_SIDE", "MEASURED_SECONDS_PER_PHOTO", "MIN_CONFIDENCE", "ImageRefused",
           "OCRUnavailable", "ocr_available", "read_text"]


class OCRUnavailable(RuntimeError):
    """The OCR engine is not installed; the message says what to install."""


_engine: Any = None
_engine_lock = threading.Lock()  # guards loading and every call (see the module docstring)
_loads = 0  # how many times the engine was built in this process (the tests check it stays 1)


def ocr_available() -> bool:
    """Whether the OCR engine can be imported, without loading its models."""
    import importlib.util
    return importlib.util.find_spec("rapidocr_onnxruntime") is not None


def _get_engine() -> Any:
    """The engine, built on first use; the caller holds ``_engine_lock``."""
    global _engine, _loads
    if _engine is None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as err:
            raise OCRUnavailable(INSTALL_HINT) from err
        _engine = RapidOCR()
        _loads += 1
    return _engine


def read_text(path: str | os.PathLike) -> str:
    """The text recognised in the photo at ``path``: one line per detected text box, in reading
    order (top to bottom, then left to right), joined by newlines; "" when none scores at least
    ``MIN_CONFIDENCE``.

    Raises ``ImageRefused`` for a file that is not a readable image or is over the pixel budget
    (the caller decides whether to skip it), and ``OCRUnavailable`` when the engine is not installed.
    """
    # load_image's size is the shorter side it keeps at least: half of MAX_SIDE lets JPEGs decode
    # at reduced scale while leaving a longest side of at least MAX_SIDE for most aspect ratios.
    img = load_image(path, size=MAX_SIDE // 2, budget=INDEX_BUDGET)  # an indexed photo: the index's budget
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE))
    with _engine_lock:
        result, _ = _get_engine()(img)
    if not result:
        return ""
    lines = [str(text).strip() for _box, text, score in result if float(score) >= MIN_CONFIDENCE]
    return "\n".join(line for line in lines if line)
