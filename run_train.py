#!/usr/bin/env python
"""Stage 5: train the projection heads on cached features; select on the validation split.

Reads the caches written by the extraction stages (and the keyword cache, unless
--no-keywords), trains, and writes best.pt / last.pt, log.csv, log.json and curves.png.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

import cli
from datasets import DatasetError, load_splits, read_captions
from data_loader import open_caches, split_data
from feature_cache import StaleCacheError
import config
from train import TrainConfig, add_querybank, train_ensemble

log = logging.getLogger("run_train")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_data_args(p)
    defaults = TrainConfig()
    for f in fields(TrainConfig):  # every TrainConfig field is a flag, with config.py's default
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name), help=f"(default: %(default)s)")
    p.add_argument("--no-keywords", action="store_true", help="train on captions only (no keyword samples)")
    p.add_argument("--ensemble", type=int, default=config.ENSEMBLE,
                   help="independently trained head pairs used as one (seeds seed, seed+1, ...; "
                        "N x the training time) (default: %(default)s)")
    p.add_argument("--querybank-size", type=int, default=config.QUERYBANK_SIZE,
                   help="training captions and images stored for querybank normalisation (querybank.py); "
                        "0 = none (default: %(default)s)")
    p.add_argument("--out", default=None, help="checkpoint folder (default: WORK_DIR/checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    args = p.parse_args(argv)
    cli.setup_logging()
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    if args.no_keywords:
        cfg.caption_ratio = 0
    lay = cli.layout(args)
    try:
        captions = read_captions(args.captions)
        splits = load_splits(captions, cli.splits_dir(args))
        if not splits["train"] or not splits["val"]:
            raise DatasetError(f"{cli.splits_dir(args)}: need non-empty train and val (or dev) splits")
        caches = open_caches(lay.image_features, lay.text_features,
                             None if cfg.caption_ratio == 0 else lay.aug_text_features,
                             rerun_hint=cli.data_flags(args))
        train_data = split_data(caches, splits["train"], use_keywords=cfg.caption_ratio > 0)
        val_data = split_data(caches, splits["val"], use_keywords=False)
    except (DatasetError, StaleCacheError) as err:
        log.error("%s", err)
        return 2
    log.info("train: %d images, %d captions, %s keyword samples; val: %d images, %d captions",
             len(train_data.image_names), train_data.n_captions,
             0 if train_data.keyword_features is None else len(train_data.keyword_image),
             len(val_data.image_names), val_data.n_captions)
    out = args.out or lay.checkpoints
    best = train_ensemble(cfg, train_data, val_data, out, caches.backbones, members=args.ensemble,
                          resume=args.resume, extra={"captions_file": str(args.captions),
                                                     "image_ids_sha256": caches.images.manifest["ids_sha256"]})
    qb = add_querybank(Path(out) / "best.pt", train_data, val_data, args.querybank_size)

    def recalls(m: dict) -> str:
        return (f"val rsum {m['rsum']:.1f}, text→image R@1/5/10 {m['t2i_r1']:.1f}/{m['t2i_r5']:.1f}/"
                f"{m['t2i_r10']:.1f}, image→text R@1/5/10 {m['i2t_r1']:.1f}/{m['i2t_r5']:.1f}/{m['i2t_r10']:.1f}")

    print(f"best epoch {best['epoch']}: {recalls(best['metrics'])}; checkpoint {out}/best.pt")
    if qb is not None:
        print(f"with querybank normalisation: {recalls(qb)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
