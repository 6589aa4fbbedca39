#!/usr/bin/env python
"""Indexing speed of the offline image backbones: full-size photos embedded per second.

What a user waits for when indexing a folder: decode (JPEG draft mode), resize, and the
backbone's forward pass, through the same extraction code as stage 1 and folder indexing, on
the 200 full-resolution Flickr8k photos. The backbones run in interleaved rounds so a busy
machine slows them alike; the table gives each one's median rate and its ratio to Lite0's,
the quantity the shipped model's card trades against dev rsum.

    python -m bench.bench_backbones [--rounds 2] [--data DIR]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from bench import _common as C  # noqa: E402  # isort: split
from crossmodal.backbones import create_image_backbone  # noqa: E402
from crossmodal.features.extract import extract_image_features  # noqa: E402

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=C.default_images_dir())
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    C.require(args.data, "the full-resolution sample")
    names = sorted(f.name for f in args.data.glob("*.jpg"))
    C.print_machine(f"Indexing speed of the image backbones ({len(names)} full-size photos, CPU)")
    backbones = {name: create_image_backbone(name) for name in BACKBONES}
    rates: dict[str, list[float]] = {name: [] for name in BACKBONES}
    for _ in range(args.rounds):
        for name, backbone in backbones.items():
            out = Path(tempfile.mkdtemp(prefix="bench_backbones_"))
            try:
                seconds, _ = C.timed(lambda: extract_image_features(backbone, args.data, names, out, device="cpu"))
            finally:
                shutil.rmtree(out, ignore_errors=True)
            rates[name].append(len(names) / seconds)
    base = statistics.median(rates[BACKBONES[0]])
    rows = [(name, backbones[name].image_size, statistics.median(r), statistics.median(r) / base,
             " ".join(f"{x:.2f}" for x in r)) for name, r in rates.items()]
    print(C.table(["backbone", "input px", "photos/s (median)", "vs lite0", "each round"], rows))


if __name__ == "__main__":
    main()
