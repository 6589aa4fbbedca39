"""crossmodal.ocr: rendered words are read back, a photo without text reads as "", files that are
not images are refused, and the engine loads once per process, lazily."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

pytest.importorskip("rapidocr_onnxruntime")

from crossmodal import ocr  # noqa: E402
from crossmodal.images import ImageRefused  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if FONT.exists():
        return ImageFont.truetype(str(FONT), size)
    return ImageFont.load_default(size)  # PIL's bundled scalable font


def _sign() -> Image.Image:
    img = Image.new("RGB", (720, 360), "white")
    draw = ImageDraw.Draw(img)
    draw.text((40, 40), "STOP", fill="black", font=_font(90))
    draw.text((40, 200), "COFFEE 2019", fill="black", font=_font(90))
    return img


def test_rendered_words_are_read_back(tmp_path):
    path = tmp_path / "sign.png"
    _sign().save(path)
    text = ocr.read_text(path)
    assert text.splitlines() == ["STOP", "COFFEE 2019"]  # one line per box, in reading order


def test_exif_orientation_is_applied_before_reading(tmp_path):
    # Stored turned a quarter-turn anticlockwise; EXIF orientation 6 says "turn clockwise to view".
    stored = _sign().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sign_rotated.jpg"
    stored.save(path, quality=95, exif=exif)
    # The engine reads sideways lines too, but then in the wrong order (COFFEE 2019 first): the
    # order shows the photo was turned upright first.
    assert ocr.read_text(path).splitlines() == ["STOP", "COFFEE 2019"]


def test_a_photo_without_text_reads_as_empty(tmp_path):
    # A smooth sky-to-grass gradient with a sun and a hill: shapes and edges, no letters.
    img = Image.linear_gradient("L").resize((640, 480)).convert("RGB")
    img = Image.merge("RGB", (img.getchannel(0).point(lambda v: 90 + v // 3),
                              img.getchannel(0).point(lambda v: 150 + v // 4),
                              img.getchannel(0).point(lambda v: 230 - v // 2)))
    draw = ImageDraw.Draw(img)
    draw.ellipse((460, 40, 560, 140), fill=(250, 220, 80))
    draw.ellipse((-200, 330, 500, 700), fill=(60, 130, 50))
    path = tmp_path / "landscape.jpg"
    img.save(path, quality=90)
    assert ocr.read_text(path) == ""


def test_a_file_that_is_not_an_image_is_refused(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a photo at all\n")
    with pytest.raises(ImageRefused, match="not a readable image"):
        ocr.read_text(path)


def test_the_engine_loads_once_even_when_threads_race(tmp_path, monkeypatch):
    monkeypatch.setattr(ocr, "_engine", None)
    monkeypatch.setattr(ocr, "_loads", 0)
    path = tmp_path / "sign.png"
    _sign().resize((360, 180)).save(path)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(ocr.read_text(path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ocr._loads == 1
    assert len(results) == 3 and all("STOP" in r for r in results)


def test_importing_the_module_loads_no_engine():
    code = "import sys, crossmodal.ocr; print('rapidocr_onnxruntime' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]


def test_a_missing_engine_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(ocr, "_engine", None)
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # makes the import fail
    path = tmp_path / "sign.png"
    _sign().save(path)
    with pytest.raises(ocr.OCRUnavailable) as err:
        ocr.read_text(path)
    assert str(err.value) == ocr.INSTALL_HINT and "\n" not in str(err.value)


def test_help_states_the_measured_cost():
    assert f"{ocr.MEASURED_SECONDS_PER_PHOTO:.1f} s per photo" in ocr.HELP
