"""Image files from outside the pipeline (crossmodal.images): the content types served, and
decoding an upload within a pixel budget."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageFile

from crossmodal import images
from crossmodal.demo_data import write_blank_png
from crossmodal.images import ImageRefused, image_content_type, load_image


def test_a_huge_png_is_refused_from_its_header_naming_size_and_limit(tmp_path, monkeypatch):
    big = write_blank_png(tmp_path / "big.png", 10_000, 10_000)  # 0.3 MB on disk, 300 MB decoded
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size))
    with pytest.raises(ImageRefused, match=r"10,000 x 10,000 pixels \(100 megapixels\).*up to 25 megapixels"):
        load_image(big, size=224)
    assert decoded == []  # refused before any pixel was decoded


@pytest.mark.parametrize("width, height", [(100_000, 1), (1, 100_000), (65_000, 2)])
def test_a_long_thin_image_is_refused_naming_its_shape_and_the_limit(tmp_path, width, height):
    """Far below the pixel limit, but resized to a 224-pixel shorter side it would be millions of
    pixels long: refused from the header, for uploads and the photo index alike."""
    strip = write_blank_png(tmp_path / "strip.png", width, height)
    message = rf"{width:,} x {height:,} pixels, .* times longer than wide; photos up to 25 to 1 are decoded"
    with pytest.raises(images.ImageTooLarge, match=message):
        load_image(strip, size=224)
    with pytest.raises(images.ImageTooLarge, match=message):
        images.open_image(strip, images.INDEX_BUDGET)
    square = write_blank_png(tmp_path / "wide.png", 2500, 100)  # 25 to 1 passes
    assert load_image(square, size=224).size == (2500, 100)


def test_a_long_thin_image_costs_no_memory_to_refuse(tmp_path):
    """The issue's 471-byte PNG, in a fresh process: refused with a small peak (it asked for 15 GB)."""
    import subprocess
    import sys

    from conftest import ROOT

    Image.new("RGB", (1, 100_000)).save(tmp_path / "tall.png")
    Image.new("RGB", (65_000, 2)).save(tmp_path / "wide.jpg")
    code = ("import sys\nfrom crossmodal.images import ImageRefused, load_image\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n        load_image(path, size=224)\n    except ImageRefused as err:\n        print(err)\n"
            "print(next(int(l.split()[1]) // 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')))\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "tall.png"), str(tmp_path / "wide.jpg")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and len(lines) == 3, out.stderr[-2000:]
    assert "1 x 100,000 pixels" in lines[0] and "65,000 x 2 pixels" in lines[1]
    assert int(lines[2]) < 300  # MB: Python, Pillow and numpy, no pixels


def test_a_large_jpeg_decodes_at_reduced_size(tmp_path):
    photo = Image.merge("RGB", [Image.linear_gradient("L").resize((4000, 3000)),
                                Image.radial_gradient("L").resize((4000, 3000)), Image.new("L", (4000, 3000), 90)])
    photo.save(tmp_path / "big.jpg", quality=90)
    photo.save(tmp_path / "big.png", compress_level=1)
    # 12 megapixels over a 2-megapixel budget: the JPEG decodes at 1/8 scale (500 x 375), the PNG cannot
    img = load_image(tmp_path / "big.jpg", size=224, budget=images.DecodeBudget(2_000_000))
    assert img.mode == "RGB" and img.size == (500, 375)
    with pytest.raises(ImageRefused, match=r"4,000 x 3,000 pixels .*2.0 megapixels"):
        load_image(tmp_path / "big.png", size=224, budget=images.DecodeBudget(2_000_000))
    # within the budget, a PNG decodes and is reduced by a whole factor to a shorter side in [size, 2 size)
    reduced = load_image(tmp_path / "big.png", size=224)
    assert reduced.size == (308, 231)  # 4000 x 3000 reduced 13 times (3000 // 224), rounded up


def test_a_small_image_is_unchanged(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "small.png")
    Image.fromarray(pixels[..., 0]).save(tmp_path / "grey.png")
    img = load_image(tmp_path / "small.png", size=224)
    assert img.size == (96, 72) and np.array_equal(np.asarray(img), pixels)
    grey = load_image(tmp_path / "grey.png", size=224)
    assert grey.mode == "RGB" and np.array_equal(np.asarray(grey)[..., 1], pixels[..., 0])


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (80, 40), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90 degrees clockwise
    img.save(tmp_path / "sideways.jpg", exif=exif)
    assert load_image(tmp_path / "sideways.jpg").size == (40, 80)


@pytest.mark.parametrize("content", [b"<html><script>alert(1)</script></html>", b"", b"\x89PNG\r\n\x1a\ntruncated"])
def test_a_file_that_is_not_an_image_is_refused(tmp_path, content):
    path = tmp_path / "photo.png"
    path.write_bytes(content)
    with pytest.raises(ImageRefused, match="not a readable image|cannot be decoded"):
        load_image(path, size=224)


def test_at_most_a_few_decodes_at_once(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    load = ImageFile.ImageFile.load
    running, most = [0], [0]
    lock = threading.Lock()

    def slow_load(self):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)  # long enough for the other threads to arrive
        with lock:
            running[0] -= 1
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", slow_load)
    threads = [threading.Thread(target=load_image, args=(tmp_path / "a.png", 32)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == images.MAX_CONCURRENT_DECODES


def test_content_type_comes_from_the_bytes_of_a_file_with_a_photo_extension(tmp_path):
    jpeg = tmp_path / "a.jpg"
    Image.new("RGB", (8, 8)).save(jpeg)
    png, webp, gif = tmp_path / "a.png", tmp_path / "a.webp", tmp_path / "a.gif"
    for path in (png, webp, gif):
        Image.new("RGB", (8, 8)).save(path)
    assert [image_content_type(p) for p in (jpeg, png, webp, gif)] == ["image/jpeg", "image/png", "image/webp",
                                                                        "image/gif"]
    (tmp_path / "upper.JPEG").write_bytes(jpeg.read_bytes())
    assert image_content_type(tmp_path / "upper.JPEG") == "image/jpeg"
    (tmp_path / "png.jpg").write_bytes(png.read_bytes())  # a PNG named .jpg: served as what it is
    assert image_content_type(tmp_path / "png.jpg") == "image/png"
    page = b"<html><script>alert(1)</script></html>"
    for name, content in [("page.html", page), ("fake.jpg", page), ("png.txt", png.read_bytes()),
                          ("pic.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>"), ("notes.txt", b"secret"),
                          (".env", b"KEY=1"), ("photo.jpg.html", jpeg.read_bytes())]:
        (tmp_path / name).write_bytes(content)
        assert image_content_type(tmp_path / name) is None, name
    assert image_content_type(tmp_path / "absent.jpg") is None
    assert image_content_type(tmp_path) is None  # a folder
