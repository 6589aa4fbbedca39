#!/usr/bin/env python
"""Index folders of your own photos (recursively: jpg, png, webp, tiff, gif, heic) for searching.

    python index_folder.py ~/Pictures [MORE_FOLDERS ...] [--checkpoint WORK_DIR/checkpoints/best.pt]
    python search.py "a dog in the snow" --photos ~/Pictures     # then search them (indexing first)
    python app.py --collection ~/.local/share/crossmodal/photo_index
    python index_folder.py ~/Pictures --duplicates                # also list near-duplicate photos
    python index_folder.py ~/Pictures --ocr                       # also read the text in the photos
    python index_folder.py --forget ~/Old                         # drop a folder from the index

One photo index (default: WORK_DIR/photo_index, else ~/.local/share/crossmodal/photo_index; --out
sets another) holds every folder indexed into it. Incremental: a rerun embeds only new or changed
files, drops deleted ones (and indexed folders that are gone), and gives a moved or renamed photo
its vector back without decoding it.
A killed run loses at most about half a minute of work. crossmodal/photos/ says how.
--duplicates reads the stored vectors only, so on an indexed folder it decodes nothing.
"""
from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

from crossmodal import cli

cli.prepare_process()

from crossmodal.backbones import BackboneUnavailable  # noqa: E402
from crossmodal.duplicates import DuplicateGroup, duplicate_groups  # noqa: E402
from crossmodal.engine import EngineError  # noqa: E402
from crossmodal.photos import PhotoCollection, PhotoStore, StoreBusy, StoreError  # noqa: E402
from crossmodal.terminal import printable  # noqa: E402

import config  # noqa: E402
from model import CheckpointError, load_checkpoint  # noqa: E402

log = logging.getLogger("index_folder")


def main(argv: list[str] | None = None) -> int:
    p = cli.StageParser(__doc__, config)
    p.add_argument("folders", type=Path, nargs="*", help="photo folders (searched recursively)")
    p.add_argument("--forget", type=Path, nargs="+", metavar="DIR", default=[],
                   help="drop these folders and the records of their photos from the index (they need not exist)")
    p.flags("work-dir", "checkpoint", "model", "image-weights", "models-dir", "device", "batch-size", "workers",
            "no-progress", "duplicates", "duplicate-threshold", "ocr", "out",
            out_help="the photo index folder (default: WORK_DIR/photo_index, else "
                     "~/.local/share/crossmodal/photo_index)")
    args = p.parse(argv)
    if not args.folders and not args.forget:
        p.error("name the photo folders to index (or --forget DIR)")
    if args.forget:
        try:
            forget(cli.photo_index_dir(args), args.forget)
        except StoreBusy:
            log.error("%s is being indexed by another process; try again when it has finished",
                      cli.photo_index_dir(args))
            return 3
        if not args.folders:
            return 0
    args.photos = args.folders
    try:
        checkpoint = cli.resolve_checkpoint(args)
        model, state = load_checkpoint(checkpoint)
        report = cli.index_photo_folders(args, state, checkpoint)
    except StoreBusy:
        log.error("%s is being indexed by another process; try again when it has finished", cli.photo_index_dir(args))
        return 3
    except (OSError, BackboneUnavailable, EngineError, CheckpointError, StoreError, ValueError) as err:
        log.error("%s", err)
        return 2
    print(report.summary())
    for line in report.problem_lines():
        print(line)
    roots = " ".join(shlex.quote(r) for r in report.roots)
    print(printable(f"index: {cli.photo_index_dir(args)}; search it with: python search.py \"a description\" "
                    f"--photos {roots}"))
    if args.duplicates:
        collection = PhotoCollection.open(cli.photo_index_dir(args), report.roots)
        try:
            groups = duplicate_groups(collection, args.duplicate_threshold)
        except ValueError as err:
            log.error("%s", err)
            return 2
        finally:
            collection.close()
        print(report_duplicates(groups, args.duplicate_threshold))
    return 0


def forget(index: Path, folders: list[Path]) -> None:
    """Drop folders from the index (``--forget``), saying how many photos went with each."""
    with PhotoStore(index, repair=True) as store, store.writing(None):
        for folder in folders:
            root = str(folder.expanduser().resolve())
            known = root in store.roots()
            print(printable(f"forgot {store.forget([root])} photos under {root}"
                            + ("" if known else " (it was not an indexed folder)")))


def report_duplicates(groups: list[DuplicateGroup], threshold: float) -> str:
    """The groups, each photo after the first with its similarity to the most similar one before it."""
    photos = sum(len(g.names) for g in groups)
    lines = [f"{len(groups)} group(s) of near-duplicate photos, {photos} photos (cosine similarity of backbone "
             f"features above {threshold:g})"]
    for n, g in enumerate(groups, start=1):
        lines.append(f"group {n}:")
        lines.append(f"         {printable(g.names[0])}")
        lines += [f"  {sim:.3f}  {printable(name)}  ~ {printable(g.names[j])}"
                  for name, (j, sim) in zip(g.names[1:], g.closest)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
