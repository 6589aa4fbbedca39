#!/usr/bin/env python
"""Stage 2: cache one feature vector per caption (never averaged), with its caption key.

Row ids are caption keys "image.jpg#n", which map every row to its image. Batches are sorted by
length with dynamic padding. Resumable like the image stage.
"""
from __future__ import annotations

import argparse
import logging
import sys

import cli
import config
from backbones import BackboneUnavailable, create_text_backbone, resolve_names
from datasets import DatasetError, list_hash, read_captions
from extract import extract_text_features
from feature_cache import StaleCacheError

log = logging.getLogger("batch_text_feature_extract")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_data_args(p, images=False)
    cli.add_backbone_args(p, image=False)
    cli.add_device_arg(p)
    p.add_argument("--batch-size", type=int, default=config.TEXT_BATCH_SIZE)
    p.add_argument("--force", action="store_true", help="rebuild even if a finished cache exists")
    p.add_argument("--out", default=None, help="output folder (default: WORK_DIR/text_embeddings)")
    args = p.parse_args(argv)
    cli.setup_logging()
    try:
        captions = read_captions(args.captions)
        _, text_name = resolve_names("auto", args.text_backbone)
        backbone = create_text_backbone(text_name, args.text_weights)
        out = args.out or cli.layout(args).text_features
        keys = [f"{c.image}#{c.number}" for c in captions.captions]
        cache = extract_text_features(
            backbone, captions.texts, keys, out, kind="caption", batch_size=args.batch_size,
            device=args.device, force=args.force,
            extra={"captions_file": str(args.captions.resolve()),
                   "image_ids_sha256": list_hash(captions.images)},
        )
    except (DatasetError, BackboneUnavailable, StaleCacheError, ValueError) as err:
        log.error("%s", err)
        return 2
    print(f"caption features: {cache.features.shape[0]} x {cache.dim} ({backbone.name}) "
          f"for {len(captions.images)} images in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
