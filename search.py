#!/usr/bin/env python
"""Search the photos from the command line: rank, score and path of the best matches.

    python search.py "a dog in the snow" --k 5 --work-dir work/demo
    python search.py "a dog in the snow" --collection WORK_DIR/collections/Pictures --json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("query", help="a description of the photo")
    p.add_argument("--k", type=int, default=config.TOP_K, help="how many results (default: %(default)s)")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: WORK_DIR/checkpoints/best.pt")
    p.add_argument("--work-dir", type=Path, default=config.WORK_DIR, help="where generated files are")
    p.add_argument("--images", type=Path, default=None, help="the photos folder (default: as extracted)")
    p.add_argument("--captions", type=Path, default=None, help="caption file (for --json output; optional)")
    p.add_argument("--image-features", type=Path, default=None, help="default: WORK_DIR/image_embeddings")
    p.add_argument("--collection", type=Path, default=None, help="a folder indexed by index_folder.py")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default: %(default)s)")
    p.add_argument("--text-weights", type=Path, default=None, help="a local model folder for the text backbone")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from app import load_retriever  # the same argument handling as the app

    args.host, args.port, args.image_weights = None, None, None
    from retrieval import Retriever

    try:
        Retriever.check_query(args.query)  # refused before anything heavy is loaded
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    retriever, problem = load_retriever(args)
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
