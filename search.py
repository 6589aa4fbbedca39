#!/usr/bin/env python
"""Search the photos from the command line: rank, score and path of the best matches.

    python search.py --photos ~/Pictures [MORE_FOLDERS ...] "a dog in the snow"   # your own photos
    python search.py "a dog in the snow" --k 5 --work-dir work/demo                # a dataset's photos
    python search.py "a dog in the snow" --collection ~/.local/share/crossmodal/photo_index --json

With --photos the folders are first brought up to date in the photo index (new, changed, moved and
deleted files; a progress bar on stderr; nothing to decode when nothing changed), then only photos
under them are searched. Files that cannot be searched are listed on stderr.
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
    p = cli.StageParser(__doc__, config)
    p.add_argument("query", nargs="?", help="a description of the photo")
    p.flags("k", "photos", "checkpoint", "collection", "work-dir", "image-features", "models-dir", "text-weights",
            "image-weights", "device", "batch-size", "workers", "no-progress", "json")
    p.flags("images", "captions", serving=True)
    args = p.parse(argv)
    # `--photos DIR [DIR ...] "query"`: the greedy folder list took the query as its last folder.
    if args.query is None and args.photos and not args.photos[-1].is_dir():
        args.query = str(args.photos.pop())
    if args.query is None:
        p.error("the query is required")
    if args.photos == []:
        p.error("--photos needs at least one folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger().setLevel(logging.WARNING)  # the hits are the output
    from crossmodal.retrieval import Retriever

    from model import load_checkpoint

    try:
        Retriever.check_query(args.query)  # refused before anything heavy is loaded
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.photos:
        retriever, report, problem = cli.load_photo_search(args, load_checkpoint)
        if report is not None:
            if report.embedded or report.reused or report.removed:
                print(f"photo index: {report.summary()}", file=sys.stderr)
            for line in report.problem_lines():
                print(line, file=sys.stderr)
    else:
        retriever, problem = cli.load_retriever(args, config, load_checkpoint)
    if retriever is None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        hits = retriever.search_text(args.query, args.k)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=2, ensure_ascii=False))
    else:
        for h in hits:
            print(f"{h.rank:>3}  {h.score:.4f}  {h.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
