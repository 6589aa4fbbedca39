#!/usr/bin/env python
"""Stage 1: cache one feature vector per image of the caption file (float16 .npy + manifest).

Resumable: rerun after a kill and it continues where it stopped. Unreadable images are listed in
the manifest and at the end, never dropped silently.
"""
from __future__ import annotations

import argparse
import logging
import sys

import cli
import config
from backbones import IMAGE_VIEWS, BackboneUnavailable, create_image_backbone, first_views, resolve_names
from datasets import DatasetError, missing_images, read_captions
from extract import default_num_workers, extract_image_features
from feature_cache import StaleCacheError

log = logging.getLogger("batch_image_feature_extract")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_data_args(p)
    cli.add_backbone_args(p, text=False)
    cli.add_device_arg(p)
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"default: {config.IMAGE_BATCH_SIZE_CPU} on CPU, {config.IMAGE_BATCH_SIZE_GPU} on GPU")
    p.add_argument("--workers", type=int, default=None,
                   help=f"JPEG-decoding processes (default {config.NUM_WORKERS}); with --decode gpu, file-reading "
                        f"processes (default: up to {config.GPU_READ_WORKERS}, one per CPU core; on an H200 machine 8 beat 16)")
    p.add_argument("--chunk-size", type=int, default=config.CHUNK_SIZE, help="images per resumable chunk")
    p.add_argument("--decode", choices=("cpu", "gpu"), default="cpu",
                   help="where JPEGs are decoded: worker processes (PIL) or the GPU (nvJPEG, "
                        f"{config.GPU_DECODE_THREADS} decode threads beside the model: config.GPU_DECODE_THREADS)")
    p.add_argument("--views", type=int, default=config.IMAGE_VIEWS,
                   help="cache N views of every image (crops, flips, a larger scale; backbones.IMAGE_VIEWS, "
                        f"1-{len(IMAGE_VIEWS)}): training samples one per step, search uses their mean "
                        "(N x the time and disk; Flickr8k dev rsum +26 with 7)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 autocast on a GPU, float32 on a CPU; bf16 also on a CPU (about 3.8x "
                        "faster where it has AMX, e.g. recent Xeons)")
    p.add_argument("--force", action="store_true", help="rebuild even if a finished cache exists")
    p.add_argument("--out", default=None, help="output folder (default: WORK_DIR/image_embeddings)")
    args = p.parse_args(argv)
    cli.setup_logging()
    try:
        captions = read_captions(args.captions)
        names = captions.images
        missing = missing_images(args.images, names)
        if missing:
            log.warning("%d of %d images listed in %s are missing from %s (e.g. %s); they are recorded as "
                        "failures", len(missing), len(names), args.captions, args.images, ", ".join(missing[:3]))
        views = first_views(args.views)
        image_name, _ = resolve_names(args.image_backbone, "auto")
        backbone = create_image_backbone(image_name, args.image_weights)
        out = args.out or cli.layout(args).image_features
        workers = args.workers if args.workers is not None else default_num_workers(args.decode)
        cache = extract_image_features(
            backbone, args.images, names, out, batch_size=args.batch_size, num_workers=workers,
            chunk_size=args.chunk_size, device=args.device, decode=args.decode, views=views,
            precision=args.precision, force=args.force,
            extra={"images_dir": str(args.images.resolve()), "captions_file": str(args.captions.resolve())},
        )
    except (DatasetError, BackboneUnavailable, StaleCacheError, ValueError) as err:
        log.error("%s", err)
        return 2
    failures = cache.manifest["failures"]
    per_view = f" ({len(views)} views of {backbone.dim})" if len(views) > 1 else ""
    print(f"image features: {cache.features.shape[0]} x {cache.dim}{per_view} ({backbone.name}) in {out}")
    if failures:
        print(f"{len(failures)} image(s) could not be read (zero rows, listed in {out}/manifest.json):")
        for f in failures[:20]:
            print(f"  {f['id']}: {f['reason']}")
        if len(failures) > 20:
            print(f"  ... and {len(failures) - 20} more")
    return 0


if __name__ == "__main__":
    sys.exit(main())
