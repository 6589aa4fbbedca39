"""Make a small synthetic captioned image set (Flickr30K layout) so the pipeline runs offline.

    python make_demo_data.py --out demo_data [--num-images 2000] [--seed 0] [--force]

Writes OUT/images/demo_*.jpg, OUT/captions.token, OUT/splits/{train,val,test}.txt and, last,
OUT/demo_manifest.json. Same arguments give byte-identical files; a rerun on a complete output
is a no-op unless --force. Point the stage scripts at it with
``--images OUT/images --captions OUT/captions.token --splits OUT/splits``.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from cli import setup_logging
from demo_data import (DEFAULT_IMAGE_SIZE, DEFAULT_NUM_IMAGES, DEFAULT_SEED, DemoDataError,
                       generate)

log = logging.getLogger("make_demo_data")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo_data"),
                   help="output folder (default: %(default)s)")
    p.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES,
                   help="how many images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default: %(default)s)")
    p.add_argument("--image-size", "--size", type=int, default=DEFAULT_IMAGE_SIZE,
                   help="square image side in pixels (default: %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="remake the output even if it is complete, or write into a non-demo folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    start = time.perf_counter()
    try:
        made = generate(args.out, num_images=args.num_images, seed=args.seed, image_size=args.image_size,
                        force=args.force, progress=not args.no_progress)
    except DemoDataError as e:
        log.error("%s", e)
        return 2
    if made:
        log.info("done in %.1f s; use --images %s --captions %s --splits %s", time.perf_counter() - start,
                 args.out / "images", args.out / "captions.token", args.out / "splits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
