#!/usr/bin/env python
"""Index a folder of your own photos (recursively: jpg, jpeg, png, webp) for searching; no captions needed.

    python index_folder.py ~/Pictures [--checkpoint WORK_DIR/checkpoints/best.pt] [--out DIR]
    python app.py --collection WORK_DIR/collections/Pictures      # then search it
    python search.py "a dog in the snow" --collection WORK_DIR/collections/Pictures

Photos are embedded with the checkpoint's image backbone; the image head is applied when the
collection is served (and once here, so the first start is fast). Incremental: a rerun embeds only
new or changed files and drops deleted ones (crossmodal/collection.py says how).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from crossmodal import cli

cli.prepare_process()

from crossmodal.backbones import BackboneUnavailable  # noqa: E402
from crossmodal.collection import default_out, index_folder  # noqa: E402
from crossmodal.features.cache import MANIFEST_FILE, StaleCacheError  # noqa: E402
from crossmodal.retrieval import RetrieverError  # noqa: E402

import config  # noqa: E402
from model import CheckpointError, load_checkpoint  # noqa: E402

log = logging.getLogger("index_folder")


def main(argv: list[str] | None = None) -> int:
    p = cli.StageParser(__doc__, config)
    p.add_argument("folder", type=Path, help="the photo folder (searched recursively)")
    p.flags("work-dir", "checkpoint", "image-weights", "models-dir", "device", "batch-size", "workers", "out",
            out_help="index folder (default: WORK_DIR/collections/<folder name>)")
    args = p.parse(argv)
    checkpoint = cli.resolve_checkpoint(args)
    out = args.out or default_out(args.layout.collections, args.folder)
    kwargs = {k: v for k, v in (("batch_size", args.batch_size), ("workers", args.workers)) if v is not None}
    try:
        model, state = load_checkpoint(checkpoint)
        result = index_folder(args.folder, checkpoint, model, state, out, device=args.device,
                              image_weights=args.image_weights, models_dir=args.models_dir, **kwargs)
    except (FileNotFoundError, BackboneUnavailable, StaleCacheError, RetrieverError, CheckpointError) as err:
        log.error("%s", err)
        return 2
    print(result.summary())
    if result.failed:
        print(f"{result.failed} file(s) could not be read (listed in {result.out_dir}/{MANIFEST_FILE})")
    print(f"index: {result.out_dir}; search it with: python app.py --collection {result.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
