#!/usr/bin/env python
"""Stage 2: cache one feature vector per caption (never averaged), with its caption key.

Row ids are caption keys "image.jpg#n", which map every row to its image. Batches are sorted by
length with dynamic padding. Resumable like the image stage. With --text-top-layers N it also caches
each caption's token states before the encoder's last N layers, which training then runs itself.
"""
from __future__ import annotations

import logging
import sys

from crossmodal import cli

cli.prepare_process()

from crossmodal.backbones import BackboneUnavailable, create_text_backbone, resolve_names  # noqa: E402
from crossmodal.captions import DatasetError, read_captions  # noqa: E402
from crossmodal.features.cache import StaleCacheError  # noqa: E402
from crossmodal.features.extract import caption_features_extra, extract_caption_features  # noqa: E402
from crossmodal.features.on_ray import BackboneSpec, RayRunError, extract_texts_on_ray  # noqa: E402
from crossmodal.features.states import extract_text_states, states_dir  # noqa: E402

import config  # noqa: E402

log = logging.getLogger("batch_text_feature_extract")


def main(argv: list[str] | None = None) -> int:
    p = cli.StageParser(__doc__, config)
    p.flags("captions", "work-dir", "text-backbone", "text-weights", "models-dir", "device", "batch-size",
            "text-top-layers", "ray", "shard-rows", "force", "out",
            out_help="output folder (default: WORK_DIR/text_embeddings)")
    args = p.parse(argv)
    try:
        captions = read_captions(args.captions)
        _, text_name = resolve_names("auto", args.text_backbone, args.models_dir)
        backbone = create_text_backbone(text_name, args.text_weights, args.models_dir)
        out = args.out or args.layout.text_features
        kwargs = {"batch_size": args.batch_size} if args.batch_size else {}
        if args.ray:
            cache = extract_texts_on_ray(backbone, BackboneSpec.of(text_name, args.text_weights, args.models_dir),
                                         captions.texts, captions.keys, out, kind="caption", address=args.ray,
                                         shard_rows=args.shard_rows, force=args.force,
                                         extra=caption_features_extra(captions, args.captions), **kwargs)
        else:
            cache = extract_caption_features(backbone, captions, args.captions, out, device=args.device,
                                             force=args.force, **kwargs)
        if args.text_top_layers:
            states = extract_text_states(backbone, captions.texts, captions.keys,
                                         states_dir(out, args.text_top_layers), args.text_top_layers,
                                         kind="caption", device=args.device, force=args.force, **kwargs)
            print(f"caption token states before the last {args.text_top_layers} layer(s) in {states}")
    except (DatasetError, BackboneUnavailable, StaleCacheError, RayRunError, ValueError, OSError) as err:
        log.error("%s", err)
        return 2
    print(f"caption features: {cache.features.shape[0]} x {cache.dim} ({backbone.name}) "
          f"for {len(captions.images)} images in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
