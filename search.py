#!/usr/bin/env python
"""Search the photos from the command line: rank, score and path of the best matches.

    python search.py "a dog in the snow" --k 5 --work-dir work/demo
    python search.py "a dog in the snow" --collection WORK_DIR/collections/Pictures --json
"""
from __future__ import annotations

import json
import logging
import os
import sys

from crossmodal import cli

cli.prepare_process()

import config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = cli.StageParser(__doc__, config)
    p.add_argument("query", help="a description of the photo")
    p.flags("k", "checkpoint", "collection", "work-dir", "image-features", "models-dir", "text-weights", "device",
            "json")
    p.flags("images", "captions", serving=True)
    args = p.parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger().setLevel(logging.WARNING)  # the hits are the output
    from crossmodal.retrieval import Retriever

    from model import load_checkpoint

    try:
        Retriever.check_query(args.query)  # refused before anything heavy is loaded
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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
