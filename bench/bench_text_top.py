#!/usr/bin/env python
"""What training a text top costs at extraction: the states cache against today's pooled cache, in one
process, on N real captions (default 5,000 from Flickr8k's caption file).

* pooled   ``extract_text_features``: one pooled vector per caption (what the frozen design caches)
* states   ``extract_text_states``: the token states before the last --top-layers layers (what
           ``run_train.py --text-top-layers`` trains on)

Each is built --rounds times into a fresh folder, interleaved; the fastest counts. Prints seconds,
captions/s, the states/pooled time ratio (target <= 1.5) and the bytes each cache takes per caption.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import _common as C  # first: it sets what torch reads when it loads

# isort: split
from bench.bench_text import read_captions  # noqa: E402
from crossmodal.backbones import create_text_backbone  # noqa: E402
from crossmodal.features.extract import extract_text_features  # noqa: E402
from crossmodal.features.states import extract_text_states  # noqa: E402


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=C.SHARED_DATA / "flickr8k" / "flickr8k.token",
                   help="caption file (default: %(default)s)")
    p.add_argument("-n", "--captions", type=int, default=5000, help="captions encoded (default: %(default)s)")
    p.add_argument("--backbone", default="minilm", help="text backbone (default: %(default)s)")
    p.add_argument("--top-layers", type=int, default=1, help="layers of the top (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the fastest counts")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not args.data.is_file():
        print(f"no caption file at {args.data}; pass --data")
        return 2
    texts = read_captions(args.data, args.captions)
    ids = [f"{i}.jpg#0" for i in range(len(texts))]
    backbone = create_text_backbone(args.backbone)
    runs = {"pooled": lambda out: extract_text_features(backbone, texts, ids, out, device="cpu"),
            "states": lambda out: extract_text_states(backbone, texts, ids, out, args.top_layers, device="cpu")}
    best, size = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, run in runs.items():
                out = Path(tmp) / name
                shutil.rmtree(out, ignore_errors=True)
                t0 = time.perf_counter()
                run(out)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
                size[name] = folder_bytes(out)
    print("\n".join(C.machine_lines()))
    print(f"{len(texts)} captions, {backbone.name}, top {args.top_layers} layer(s)")
    for name in runs:
        print(f"{name:7s} {best[name]:7.1f} s  {len(texts) / best[name]:7.0f} captions/s  "
              f"{size[name] / len(texts) / 1024:6.1f} KiB per caption")
    print(f"states / pooled: time {best['states'] / best['pooled']:.2f}x, disk {size['states'] / size['pooled']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
