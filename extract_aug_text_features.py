#!/usr/bin/env python
"""Stage 4: cache one text vector per keyword sample (never overwritten, never merged).

Reads the keyword file written by sentence_augment.py and encodes every phrase through the same
text encoder as batch_text_feature_extract.py. Row ids are "<image>#<n>::<phrase>".
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cli
from backbones import BackboneUnavailable, create_text_backbone
from data_loader import keyword_row_id
from datasets import DatasetError
from extract import extract_text_features
from feature_cache import StaleCacheError, load_cache
from keywords import read_keyword_samples

log = logging.getLogger("extract_aug_text_features")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_data_args(p, images=False)
    cli.add_device_arg(p)
    p.add_argument("--keywords", type=Path, default=None,
                   help="keyword file (default: the one sentence_augment.py writes for this --work-dir)")
    p.add_argument("--text-weights", type=Path, default=None, help="a local model folder for the text backbone")
    p.add_argument("--force", action="store_true", help="rebuild even if a finished cache exists")
    args = p.parse_args(argv)
    cli.setup_logging()
    lay = cli.layout(args)
    try:
        # The keyword vectors must live in the same space as the caption vectors: use the
        # caption cache's backbone, never an independent choice.
        captions_cache = load_cache(lay.text_features, rerun=f"python batch_text_feature_extract.py {cli.data_flags(args, images=False)}")
        backbone = create_text_backbone(captions_cache.manifest["backbone"], args.text_weights)
        if backbone.weights != captions_cache.manifest["weights"]:
            raise StaleCacheError(f"the caption cache {lay.text_features} was made with weights "
                                  f"{captions_cache.manifest['weights']}, but {backbone.weights} loaded now")
        samples = read_keyword_samples(args.keywords or lay.keywords_file)
        ids = [keyword_row_id(s.caption_key, s.phrase) for s in samples]
        cache = extract_text_features(backbone, [s.phrase for s in samples], ids, lay.aug_text_features,
                                      kind="keyword", device=args.device, force=args.force,
                                      extra={"keywords_file": str(args.keywords or lay.keywords_file)})
    except (DatasetError, BackboneUnavailable, StaleCacheError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    print(f"keyword features: {cache.features.shape[0]} x {cache.dim} ({backbone.name}) in {lay.aug_text_features}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
