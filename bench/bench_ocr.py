#!/usr/bin/env python
"""OCR cost and recall (crossmodal.ocr.read_text) on this CPU.

Two sets, each photo read once through ``read_text`` (decode, downscale, detect, recognise), after
one warm-up call that loads the engine:

* real       the first ``--limit`` photos (default all 200) of the Flickr8k full-resolution
             sample (mostly 500 x 375 JPEGs; few contain text): seconds per photo (wall clock, and
             CPU seconds over all threads), and the fraction with any text.
* synthetic  ``--synthetic`` photos made from the same Flickr photos, enlarged to 2000 x 1500 (so
             the decode-and-downscale path runs), with a sign of one to three upper-case words
             drawn on a pale panel in DejaVu Sans Bold at a seeded size and position: seconds per
             photo, and exact-word recall (a drawn word counts when it is a whole token of the
             text read, ignoring case).

The mean seconds per photo over the real set is what ``crossmodal.ocr.MEASURED_SECONDS_PER_PHOTO``
states in ``--help``.

    nice -n 10 python -m bench.bench_ocr | tee bench/results/ocr_cpu.log
"""
from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

from bench import _common as C  # first: it sets what torch reads when it loads

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
WORDS = ["STOP", "COFFEE", "EXIT", "BAKERY", "PARKING", "OPEN", "HOTEL", "PIZZA", "SALE", "MARKET",
         "POLICE", "TAXI", "BEACH", "GARDEN", "MUSEUM", "STATION", "2019", "1984", "BUS", "CAFE"]


def make_synthetic(sources: list[Path], n: int, out_dir: Path, seed: int = 0) -> list[tuple[Path, list[str]]]:
    from PIL import Image, ImageDraw, ImageFont
    rng = random.Random(seed)
    made = []
    for i in range(n):
        with Image.open(sources[i % len(sources)]) as src:
            img = src.convert("RGB").resize((2000, 1500))
        words = rng.sample(WORDS, rng.randint(1, 3))
        font = ImageFont.truetype(str(FONT), rng.choice([60, 90, 130]))
        draw = ImageDraw.Draw(img)
        text = " ".join(words)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left + 60, bottom - top + 60
        x, y = rng.randint(0, max(0, 2000 - w)), rng.randint(0, max(0, 1500 - h))
        draw.rectangle((x, y, x + w, y + h), fill=(rng.randint(200, 255),) * 3)
        draw.text((x + 30 - left, y + 30 - top), text, fill=(rng.randint(0, 60),) * 3, font=font)
        path = out_dir / f"sign_{i:02d}.jpg"
        img.save(path, quality=90)
        made.append((path, words))
    return made


def run(paths: list[Path]) -> tuple[list[float], float, list[str]]:
    """Wall seconds of each photo, CPU seconds per photo (all threads; less sensitive to other
    jobs on a shared machine than wall time), and the texts read."""
    from crossmodal.ocr import read_text
    seconds, texts = [], []
    cpu0 = C.cpu_seconds()
    for p in paths:
        t0 = time.perf_counter()
        texts.append(read_text(p))
        seconds.append(time.perf_counter() - t0)
    return seconds, (C.cpu_seconds() - cpu0) / max(1, len(paths)), texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=C.default_images_dir())
    ap.add_argument("--limit", type=int, default=200, help="real photos read (default: all 200 of the sample)")
    ap.add_argument("--synthetic", type=int, default=10, help="synthetic sign photos read")
    args = ap.parse_args()
    C.require(args.data, "the Flickr8k full-resolution sample")
    from crossmodal import ocr

    photos = sorted(args.data.glob("*.jpg"))[: args.limit]
    C.print_machine("OCR (rapidocr-onnxruntime) seconds per photo")
    print(f"- real photos: the first {len(photos)} of {args.data} (sorted by name)")
    print(f"- MAX_SIDE {ocr.MAX_SIDE}, MIN_CONFIDENCE {ocr.MIN_CONFIDENCE}; one warm-up call loads the engine\n")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = make_synthetic(photos, args.synthetic, Path(tmp))
        t0 = time.perf_counter()
        ocr.read_text(synthetic[0][0] if synthetic else photos[0])
        print(f"engine load + first call: {time.perf_counter() - t0:.2f} s\n")

        sec, cpu, texts = run(photos)
        rows.append(["real (Flickr8k)", len(photos), statistics.mean(sec), statistics.median(sec), cpu,
                     sum(bool(t) for t in texts) / len(texts), "-"])
        sec_s, cpu_s, texts_s = run([p for p, _ in synthetic])
        found = total = 0
        for (_, words), text in zip(synthetic, texts_s):
            tokens = set(re.findall(r"[A-Z0-9]+", text.upper()))
            found += sum(w in tokens for w in words)
            total += len(words)
        if synthetic:
            rows.append(["synthetic signs 2000x1500", len(synthetic), statistics.mean(sec_s),
                         statistics.median(sec_s), cpu_s, sum(bool(t) for t in texts_s) / len(texts_s),
                         f"{found}/{total} = {found / total:.2f}"])
    print(C.table(["photos", "n", "mean s/photo", "median s/photo", "CPU s/photo",
                   "with any text", "exact-word recall"], rows))
    print("\ntext found in real photos:")
    for p, t in zip(photos, texts):
        if t:
            print(f"- {p.name}: {t!r}")
    print("\nsynthetic misses (drawn -> read):")
    for (p, words), t in zip(synthetic, texts_s):
        if not set(words) <= set(re.findall(r"[A-Z0-9]+", t.upper())):
            print(f"- {p.name}: {' '.join(words)} -> {t!r}")
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
