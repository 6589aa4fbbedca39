#!/usr/bin/env python
"""Search the photos from the command line: rank, score and path of the best matches.

    python search.py --photos ~/Pictures [MORE_FOLDERS ...] "a dog in the snow"   # your own photos
    python search.py "a dog in the snow" --k 5 --work-dir work/demo                # a dataset's photos
    python search.py "a dog in the snow" --collection ~/.local/share/crossmodal/photo_index --json

With --photos the folders are first brought up to date in the photo index (new, changed, moved and
deleted files; a progress bar on stderr; nothing to decode when nothing changed), then only photos
under them are searched, with the query language below. Each hit shows its confidence (with a
calibrated checkpoint), date taken and folder. Files that cannot be searched are listed on stderr.

    python search.py --photos ~/Pictures "a dog on a beach -snow after:2019 in:Holidays sort:date"
    python search.py --photos ~/Pictures --like ~/Pictures/rex.jpg          # more like this photo
    python search.py --photos ~/Pictures --image query.jpg "at night"       # this photo, but at night
"""
from __future__ import annotations

import json
import logging
import os
import sys

from crossmodal import cli

cli.prepare_process()

import config  # noqa: E402


def parse(argv: list[str] | None):
    from crossmodal.query import GRAMMAR

    p = cli.StageParser(__doc__ + "\n" + GRAMMAR, config)
    p.add_argument("query", nargs="?", help="a description of the photo")
    p.flags("k", "photos", "checkpoint", "collection", "work-dir", "image-features", "models-dir", "text-weights",
            "image-weights", "device", "batch-size", "workers", "no-progress", "json", "like", "image", "ocr")
    p.flags("images", "captions", serving=True)
    args = p.parse(argv)
    # `--photos DIR [DIR ...] "query"`: the greedy folder list took the query as its last folder.
    if args.query is None and args.photos and not args.photos[-1].is_dir():
        args.query = str(args.photos.pop())
    if args.ocr and not args.photos:
        p.error("--ocr reads the text in your photos as they are indexed: name their folders with --photos")
    if args.query is None and not (args.like or args.image):
        p.error("the query is required")
    if args.photos == []:
        p.error("--photos needs at least one folder")
    return args


def print_result(result) -> None:
    """The hits of ``crossmodal.search.search``, one a line: rank, score, confidence, then the date and
    folder where the photo has them, and the path."""
    if not result.good_match and result.hits:
        print("no good match — nearest photos shown, marked weak")
    for h in result.hits:
        conf = "    -" if h.confidence is None else f"{h.confidence:5.2f}"
        weak = "" if h.confident or h.confidence is None else "  (weak)"
        where = f"{(h.taken_at or '')[:10] or '?':<10}  {h.folder or '.'}  " if h.taken_at or h.folder else ""
        print(f"{h.rank:>3}  {h.score:.4f}  {conf}  {where}{h.path}{weak}")
    shown = f"{result.hits[0].rank}-{result.hits[-1].rank} of " if result.hits else ""
    print(f"{shown}{result.total} photo(s); understood as: {result.understood or '(a photo)'}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger().setLevel(logging.WARNING)  # the hits are the output
    from crossmodal import search

    from model import load_checkpoint

    like = str(args.like) if args.like else None
    try:  # refused before anything heavy is loaded
        search.parse(args.query or "", args.k, 0, like, args.image)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        opened = cli.open_engine(args, config, load_checkpoint, load_text=bool(args.query))
    except cli.NotServable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = opened.indexing
    if report is not None:
        if report.embedded or report.reused or report.removed:
            print(f"photo index: {report.summary()}", file=sys.stderr)
        for line in report.problem_lines():
            print(line, file=sys.stderr)
    try:
        result = search.search(opened.engine, args.query or "", k=args.k, like=like, photo=args.image)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        opened.engine.close()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
