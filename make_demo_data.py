#!/usr/bin/env python
"""Make a small synthetic captioned image set (Flickr30K layout) so the pipeline runs offline.

    python make_demo_data.py --out demo_data [--num-images 2000] [--seed 0] [--force]

Writes OUT/images/demo_*.jpg, OUT/captions.token, OUT/splits/{train,val,test}.txt and, last,
OUT/demo_manifest.json. Same arguments give byte-identical files; a rerun on a complete output
is a no-op unless --force. Point the stage scripts at it with
``--images OUT/images --captions OUT/captions.token --splits OUT/splits``.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from crossmodal import cli

cli.prepare_process()

from crossmodal.demo_data import DemoDataError, generate  # noqa: E402

import config  # noqa: E402

log = logging.getLogger("make_demo_data")


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.StageParser(__doc__, config)
    p.flags("out", "num-images", "seed", "image-size", "force", "no-progress", "verbose",
            out_help="output folder (default: demo_data)")
    args = p.parse(argv)
    out = args.out or Path("demo_data")
    start = time.perf_counter()
    try:
        made = generate(out, num_images=args.num_images, seed=args.seed, image_size=args.image_size,
                        force=args.force, progress=not args.no_progress)
    except (DemoDataError, OSError) as e:
        log.error("%s", e)
        return 2
    if made:
        log.info("done in %.1f s; use --images %s --captions %s --splits %s", time.perf_counter() - start,
                 out / "images", out / "captions.token", out / "splits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
