#!/usr/bin/env python
"""Index a folder of your own photos (recursively: jpg, jpeg, png, webp) for searching; no captions needed.

    python index_folder.py ~/Pictures [--checkpoint WORK_DIR/checkpoints/best.pt] [--out DIR]
    python app.py --collection WORK_DIR/collections/Pictures      # then search it
    python search.py "a dog in the snow" --collection WORK_DIR/collections/Pictures
    python index_folder.py ~/Pictures --duplicates                # also list near-duplicate photos

Photos are embedded with the checkpoint's image backbone; the image head is applied when the
collection is served (and once here, so the first start is fast). Incremental: a rerun embeds only
new or changed files and drops deleted ones (crossmodal/collection.py says how), so --duplicates
on an indexed folder only reads its stored features.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from crossmodal import cli

cli.prepare_process()

from crossmodal.backbones import BackboneUnavailable  # noqa: E402
from crossmodal.collection import default_out, index_folder  # noqa: E402
from crossmodal.duplicates import DuplicateGroup, collection_duplicates  # noqa: E402
from crossmodal.features.cache import MANIFEST_FILE, StaleCacheError  # noqa: E402
from crossmodal.retrieval import RetrieverError  # noqa: E402

import config  # noqa: E402
from model import CheckpointError, load_checkpoint  # noqa: E402

log = logging.getLogger("index_folder")


def main(argv: list[str] | None = None) -> int:
    p = cli.StageParser(__doc__, config)
    p.add_argument("folder", type=Path, help="the photo folder (searched recursively)")
    p.flags("work-dir", "checkpoint", "image-weights", "models-dir", "device", "batch-size", "workers", "out",
            "duplicates", "duplicate-threshold", out_help="index folder (default: WORK_DIR/collections/<folder name>)")
    args = p.parse(argv)
    checkpoint = cli.resolve_checkpoint(args)
    out = args.out or default_out(args.layout.collections, args.folder)
    kwargs = {k: v for k, v in (("batch_size", args.batch_size), ("workers", args.workers)) if v is not None}
    try:
        model, state = load_checkpoint(checkpoint)
        result = index_folder(args.folder, checkpoint, model, state, out, device=args.device,
                              image_weights=args.image_weights, models_dir=args.models_dir, **kwargs)
    except (OSError, BackboneUnavailable, StaleCacheError, RetrieverError, CheckpointError) as err:
        log.error("%s", err)
        return 2
    print(result.summary())
    if result.failed:
        print(f"{result.failed} file(s) could not be read (listed in {result.out_dir}/{MANIFEST_FILE})")
    if result.skipped:
        print(f"{len(result.skipped)} entr{'y' if len(result.skipped) == 1 else 'ies'} skipped, not indexed "
              f"(listed under 'skipped' in {result.out_dir}/{MANIFEST_FILE}):")
        cli.print_entries(result.skipped)
    print(f"index: {result.out_dir}; search it with: python app.py --collection {result.out_dir}")
    if args.duplicates:
        try:
            groups = collection_duplicates(result.out_dir, args.duplicate_threshold)
        except ValueError as err:
            log.error("%s", err)
            return 2
        print(report_duplicates(groups, args.duplicate_threshold))
    return 0


def report_duplicates(groups: list[DuplicateGroup], threshold: float) -> str:
    """The groups, each photo after the first with its similarity to the most similar one before it."""
    photos = sum(len(g.paths) for g in groups)
    lines = [f"{len(groups)} group(s) of near-duplicate photos, {photos} photos (cosine similarity of backbone "
             f"features above {threshold:g})"]
    for n, g in enumerate(groups, start=1):
        lines.append(f"group {n}:")
        lines.append(f"         {g.paths[0]}")
        lines += [f"  {sim:.3f}  {path}  ~ {g.paths[j]}" for path, (j, sim) in zip(g.paths[1:], g.closest)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
