#!/usr/bin/env python
"""Search the photos from the command line: rank, score and path of the best matches.

    python search.py "a dog in the snow" --photos ~/Pictures [MORE_FOLDERS ...]   # your own photos
    python search.py "a dog in the snow" --k 5 --work-dir work/demo                # a dataset's photos
    python search.py "a dog in the snow" --collection ~/.local/share/crossmodal/photo_index --json

With --photos the folders are first brought up to date in the photo index (new, changed, moved and
deleted files; a progress bar on stderr; nothing to decode when nothing changed), then only photos
under them are searched, with the query language below. Each hit shows its confidence (with a
calibrated checkpoint), date taken and folder. Files that cannot be searched are listed on stderr.

    python search.py "a dog on a beach -snow after:2019 in:Holidays sort:date" --photos ~/Pictures
    python search.py --photos ~/Pictures --like ~/Pictures/rex.jpg          # more like this photo
    python search.py --photos ~/Pictures --image query.jpg -- "at night"    # this photo, but at night
"""
from __future__ import annotations

import json
import logging
import sys

from crossmodal import cli

cli.prepare_process()

from crossmodal.terminal import printable  # noqa: E402

import config  # noqa: E402


def parse(argv: list[str] | None):
    from crossmodal.query import GRAMMAR

    p = cli.StageParser(__doc__ + "\n" + GRAMMAR, config)
    p.add_argument("query", nargs="?", help="a description of the photo (before --photos, or after --)")
    p.add_argument("--query", dest="query_flag", metavar="TEXT", help="the query, anywhere on the line")
    p.flags("k", "photos", "checkpoint", "model", "collection", "work-dir", "image-features", "models-dir",
            "text-weights", "image-weights", "device", "batch-size", "workers", "no-progress", "json", "like", "image",
            "ocr", "index")
    p.flags("images", "captions", serving=True)
    args = p.parse(argv)
    if args.query_flag is not None:
        if args.query is not None:
            p.error("give the query once: as the argument or with --query")
        args.query = args.query_flag
    # Every word after --photos is a folder (a word that happens to name one is never taken for the
    # query): one that is not says where a query goes.
    missing = [str(d) for d in args.photos or () if not d.is_dir()]
    if missing:
        p.error(f"no such folder: {', '.join(missing)} (the words after --photos are folders; a query goes "
                "before --photos, after --, or in --query)")
    if args.ocr and not args.photos:
        p.error("--ocr reads the text in your photos as they are indexed: name their folders with --photos")
    if args.query is None and not (args.like or args.image):
        where = (f" (every word after --photos is a folder, here {', '.join(str(d) for d in args.photos)}; a "
                 "query goes before --photos, after --, or in --query)") if args.photos else ""
        p.error(f"the query is required{where}")
    if args.photos == []:
        p.error("--photos needs at least one folder")
    return args


def print_result(result) -> None:
    """The hits of ``crossmodal.search.search``, one a line: rank, score, confidence, then the date and
    folder where the photo has them, and the path (control characters escaped, as ``ls`` does)."""
    if not result.good_match and result.hits:
        print("no good match — nearest photos shown, marked weak")
    for h in result.hits:
        conf = "    -" if h.confidence is None else f"{h.confidence:5.2f}"
        weak = "" if h.confident or h.confidence is None else "  (weak)"
        where = (f"{(h.taken_at or '')[:10] or '?':<10}  {printable(h.folder or '.')}  "
                 if h.taken_at or h.folder else "")
        print(f"{h.rank:>3}  {h.score:.4f}  {conf}  {where}{printable(h.path)}{weak}")
    shown = f"{result.hits[0].rank}-{result.hits[-1].rank} of " if result.hits else ""
    print(f"{shown}{result.total} photo(s) searched; understood as: {printable(result.understood) or '(a photo)'}",
          file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    cli.hub_offline_unless_model(argv)
    args = parse(argv)
    logging.getLogger().setLevel(logging.WARNING)  # the hits are the output
    from crossmodal import search
    from crossmodal.photos import StoreError

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
    except (ValueError, StoreError) as err:  # a refused query; an index damaged since it was opened
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
