#!/usr/bin/env python
"""Stage 4: cache one text vector per keyword sample (never overwritten, never merged).

Reads the keyword file written by sentence_augment.py and encodes every phrase through the same
text encoder as batch_text_feature_extract.py. Row ids are "<image>#<n>::<phrase>". With
--text-top-layers N, also their token states before the encoder's last N layers (as stage 2).
"""
from __future__ import annotations

import logging
import sys

from crossmodal import cli

cli.prepare_process()

from crossmodal.backbones import BackboneUnavailable, create_text_backbone  # noqa: E402
from crossmodal.captions import DatasetError, keyword_row_id  # noqa: E402
from crossmodal.features.cache import StaleCacheError, load_cache  # noqa: E402
from crossmodal.features.extract import extract_text_features  # noqa: E402
from crossmodal.features.on_ray import BackboneSpec, RayRunError, extract_texts_on_ray  # noqa: E402
from crossmodal.features.states import extract_text_states, states_dir  # noqa: E402
from crossmodal.keywords import read_keyword_samples  # noqa: E402

import config  # noqa: E402

log = logging.getLogger("extract_aug_text_features")


def main(argv: list[str] | None = None) -> int:
    p = cli.StageParser(__doc__, config)
    p.flags("captions", "work-dir", "keywords", "text-weights", "models-dir", "device", "text-top-layers", "ray",
            "shard-rows", "force")
    args = p.parse(argv)
    lay = args.layout
    keywords_file = args.keywords or lay.keywords_file
    try:
        # The keyword vectors must live in the same space as the caption vectors: use the
        # caption cache's backbone, never an independent choice.
        captions_cache = load_cache(lay.text_features, rerun="python batch_text_feature_extract.py "
                                    + cli.data_flags(args, images=False))
        backbone = create_text_backbone(captions_cache.manifest["backbone"], args.text_weights, args.models_dir)
        if backbone.weights != captions_cache.manifest["weights"]:
            raise StaleCacheError(f"the caption cache {lay.text_features} was made with weights "
                                  f"{captions_cache.manifest['weights']}, but {backbone.weights} loaded now")
        samples = read_keyword_samples(keywords_file)
        ids = [keyword_row_id(s.caption_key, s.phrase) for s in samples]
        phrases = [s.phrase for s in samples]
        if args.ray:
            spec = BackboneSpec.of(captions_cache.manifest["backbone"], args.text_weights, args.models_dir)
            cache = extract_texts_on_ray(backbone, spec, phrases, ids, lay.aug_text_features, kind="keyword",
                                         address=args.ray, shard_rows=args.shard_rows, force=args.force,
                                         extra={"keywords_file": str(keywords_file)})
        else:
            cache = extract_text_features(backbone, phrases, ids, lay.aug_text_features, kind="keyword",
                                          device=args.device, force=args.force,
                                          extra={"keywords_file": str(keywords_file)})
        if args.text_top_layers:
            extract_text_states(backbone, [s.phrase for s in samples], ids,
                                states_dir(lay.aug_text_features, args.text_top_layers), args.text_top_layers,
                                kind="keyword", device=args.device, force=args.force)
    except (DatasetError, BackboneUnavailable, StaleCacheError, RayRunError, OSError) as err:
        log.error("%s", err)
        return 2
    print(f"keyword features: {cache.features.shape[0]} x {cache.dim} ({backbone.name}) in {lay.aug_text_features}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
