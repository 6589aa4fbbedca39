#!/usr/bin/env python
"""Stage 5: train the projection heads on cached features; select on the validation split.

Reads the caches written by the extraction stages (and the keyword cache, unless
--no-keywords), trains, and writes best.pt / last.pt, log.csv, log.json and curves.png.

    torchrun --nproc-per-node 2 run_train.py ...    # several processes (or machines) on one global batch

Under torchrun each process embeds its share of every batch and InfoNCE sees the whole batch's
negatives (train.py); rank 0 writes the files, and --resume works with another process count.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

from crossmodal import cli

cli.prepare_process()

from crossmodal.backbones import BackboneUnavailable, TextTop, create_text_backbone  # noqa: E402
from crossmodal.captions import DatasetError, load_splits, read_captions  # noqa: E402
from crossmodal.features.cache import StaleCacheError  # noqa: E402

import config  # noqa: E402
from data_loader import concat_splits, open_caches, open_source, split_data  # noqa: E402
from model import CheckpointError  # noqa: E402
from train import (  # noqa: E402
    CHECKPOINT_SECONDS,
    ResumeError,
    TrainConfig,
    add_calibration,
    add_querybank,
    distributed,
    train_ensemble,
)

log = logging.getLogger("run_train")


def source_name(work_dir: Path, taken: list[str]) -> str:
    """A short name for a further training source: its work dir's name, numbered if taken."""
    name, n = Path(work_dir).resolve().name or "source", 2
    while name in taken:
        name, n = f"{Path(work_dir).resolve().name}{n}", n + 1
    return name


def main(argv: list[str] | None = None) -> int:
    p = cli.StageParser(__doc__, config)
    p.flags("images", "captions", "splits", "work-dir", "ensemble", "querybank-size", "no-keywords", "resume",
            "checkpoint-seconds", "models-dir", "text-weights", "out",
            out_help="checkpoint folder (default: WORK_DIR/checkpoints)",
            defaults={"checkpoint-seconds": CHECKPOINT_SECONDS})
    p.add_argument("--add-source", type=Path, nargs="+", action="extend", default=[], metavar="WORK_DIR",
                   help="train on another dataset too: a work dir its extraction stages (and keyword stages, "
                        "unless --no-keywords) wrote, with split lists in WORK_DIR/splits; features from the same "
                        "backbones. Its validation split is reported, and the best epoch is the best mean rsum")
    p.dataclass_flags(TrainConfig, TrainConfig())
    args = p.parse(argv)
    group = distributed()
    if not group.is_main:  # rank 0 reports
        logging.getLogger().setLevel(logging.WARNING)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    if args.no_keywords:
        cfg.caption_ratio = 0
    lay = args.layout
    try:
        captions = read_captions(args.captions)
        splits = load_splits(captions, cli.splits_dir(args))
        if not splits["train"] or not splits["val"]:
            raise DatasetError(f"{cli.splits_dir(args)}: need non-empty train and val (or dev) splits")
        caches = open_caches(lay.image_features, lay.text_features,
                             None if cfg.caption_ratio == 0 else lay.aug_text_features,
                             rerun_hint=cli.data_flags(args), text_top_layers=cfg.text_top_layers)
        train_data = split_data(caches, splits["train"], use_keywords=cfg.caption_ratio > 0)
        val_data = split_data(caches, splits["val"], use_keywords=False)
        other_val, other_captions = {}, {}
        if args.add_source:
            parts, sources = [train_data], [""]
            for work_dir in args.add_source:
                name = source_name(work_dir, [*sources, *other_val])
                source_train, other_val[name], other_captions[name] = open_source(
                    work_dir, caches.backbones, cfg.caption_ratio > 0, cfg.text_top_layers)
                parts.append(source_train)
                sources.append(name)
            train_data = concat_splits(parts, sources)
        text_backbone = text_top = None
        if cfg.text_top_layers:  # the layers to train start as the text encoder's own
            text_backbone = create_text_backbone(caches.backbones["text"]["backbone"], args.text_weights,
                                                 args.models_dir)
            text_top = TextTop.from_backbone(text_backbone, cfg.text_top_layers)
    except (DatasetError, StaleCacheError, BackboneUnavailable, ValueError) as err:
        log.error("%s", err)
        return 2
    log.info("train: %d images, %d captions, %s keyword samples; val: %d images, %d captions",
             len(train_data.image_names), train_data.n_captions,
             0 if train_data.keyword_features is None else len(train_data.keyword_image),
             len(val_data.image_names), val_data.n_captions)
    for name, data in other_val.items():
        log.info("validation of the source %s: %d images, %d captions", name, len(data.image_names), data.n_captions)
    out = Path(args.out or lay.checkpoints)
    try:
        best = train_ensemble(cfg, train_data, val_data, out, caches.backbones, members=args.ensemble,
                              resume=args.resume, extra={"captions_file": str(args.captions),
                                                         "sources": [str(w) for w in args.add_source]},
                              data_identity=caches.identity, checkpoint_seconds=args.checkpoint_seconds,
                              other_val=other_val, text_top=text_top)
    except (ResumeError, CheckpointError, ValueError) as err:
        log.error("%s", err)
        return 2
    if not group.is_main:  # the querybank and the curves are rank 0's, from its best.pt
        return 0
    qb = add_querybank(out / "best.pt", train_data, val_data, args.querybank_size)
    try:  # short dev queries are encoded by the text backbone the features came from
        if text_backbone is None:
            text_backbone = create_text_backbone(caches.backbones["text"]["backbone"], args.text_weights,
                                                 args.models_dir)
        sets = [(val_data, captions.subset(val_data.image_names))]
        sets += [(other_val[name], other_captions[name]) for name in other_val]
        calibration = add_calibration(out / "best.pt", sets, text_backbone)
    except (ValueError, BackboneUnavailable) as err:  # e.g. a dev split without both matches and misses
        log.warning("no match-confidence calibration in the checkpoint: %s", err)
        calibration = None

    def recalls(m: dict) -> str:
        return (f"val rsum {m['rsum']:.1f}, text→image R@1/5/10 {m['t2i_r1']:.1f}/{m['t2i_r5']:.1f}/"
                f"{m['t2i_r10']:.1f}, image→text R@1/5/10 {m['i2t_r1']:.1f}/{m['i2t_r5']:.1f}/{m['i2t_r10']:.1f}")

    print(f"best epoch {best['epoch']}: {recalls(best['metrics'])}; checkpoint {out}/best.pt")
    for name in other_val:
        print(f"  source {name}: " + recalls({k.removeprefix(f'{name}_'): v for k, v in best["metrics"].items()
                                              if k.startswith(f"{name}_")}))
    if qb is not None:
        print(f"with querybank normalisation: {recalls(qb)}")
    if calibration is not None:
        for kind in ("sentence", "phrase", "short"):
            held = calibration[kind]["held_out"]
            print(f"match confidence, {kind} queries (held-out dev half, top {calibration['top_k']} hits): "
                  f"ECE {held['ece']:.3f}; confidence >= {calibration['threshold']}: precision "
                  f"{held['precision']:.2f}, recall {held['recall']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
