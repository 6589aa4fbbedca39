#!/usr/bin/env python
"""Stage 1: cache one feature vector per image of the caption file (float16 .npy + manifest).

Resumable: rerun after a kill and it continues where it stopped. Unreadable images are listed in
the manifest and at the end, never dropped silently. With --ray, a Ray cluster computes it into a
sharded cache that every stage reads the same way (docs/scaling.md).
"""
from __future__ import annotations

import logging
import sys

from crossmodal import cli

cli.prepare_process()

from crossmodal.backbones import BackboneUnavailable, create_image_backbone, first_views, resolve_names  # noqa: E402
from crossmodal.captions import DatasetError, missing_images, read_captions  # noqa: E402
from crossmodal.features.cache import StaleCacheError  # noqa: E402
from crossmodal.features.extract import dataset_images_extra, default_num_workers, extract_dataset_images  # noqa: E402
from crossmodal.features.on_ray import BackboneSpec, RayRunError, extract_images_on_ray  # noqa: E402

import config  # noqa: E402

log = logging.getLogger("batch_image_feature_extract")


def main(argv: list[str] | None = None) -> int:
    p = cli.StageParser(__doc__, config)
    p.flags("images", "captions", "splits", "work-dir", "image-backbone", "image-weights", "models-dir", "device",
            "batch-size", "workers", "chunk-size", "decode", "views", "precision", "ray", "shard-rows", "force", "out",
            out_help="output folder (default: WORK_DIR/image_embeddings)")
    args = p.parse(argv)
    try:
        captions = read_captions(args.captions)
        names = captions.images
        missing = missing_images(args.images, names)
        if missing:
            log.warning("%d of %d images listed in %s are missing from %s (e.g. %s); they are recorded as "
                        "failures", len(missing), len(names), args.captions, args.images, ", ".join(missing[:3]))
        views = first_views(args.views)
        image_name, _ = resolve_names(args.image_backbone, "auto", args.models_dir)
        backbone = create_image_backbone(image_name, args.image_weights, args.models_dir)
        out = args.out or args.layout.image_features
        workers = args.workers if args.workers is not None else default_num_workers(args.decode)
        if args.ray:
            cache = extract_images_on_ray(
                backbone, BackboneSpec.of(image_name, args.image_weights, args.models_dir), args.images, names, out,
                address=args.ray, batch_size=args.batch_size, shard_rows=args.shard_rows, views=views,
                precision=args.precision, decode=args.decode, force=args.force,
                extra=dataset_images_extra(args.images, args.captions))
        else:
            cache = extract_dataset_images(
                backbone, args.images, captions, args.captions, out, batch_size=args.batch_size, num_workers=workers,
                chunk_size=args.chunk_size, device=args.device, decode=args.decode, views=views,
                precision=args.precision, force=args.force)
    except (DatasetError, BackboneUnavailable, StaleCacheError, RayRunError, ValueError, OSError) as err:
        log.error("%s", err)
        return 2
    failures = cache.manifest["failures"]
    per_view = f" ({len(views)} views of {backbone.dim})" if len(views) > 1 else ""
    print(f"image features: {cache.features.shape[0]} x {cache.dim}{per_view} ({backbone.name}) in {out}")
    if failures:
        print(f"{len(failures)} image(s) could not be read (zero rows, listed in {out}/manifest.json):")
        cli.print_entries(failures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
