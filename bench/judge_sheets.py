#!/usr/bin/env python
"""Contact sheets for judging search hits by eye: each query's top hits over a split's photos.

For every query of a query file (one a line) it runs
the query through ``crossmodal.search`` over the split's photos alone, as the page would, and
draws the top ``--k`` hits numbered 1..k into one PNG. ``pairs.tsv`` lists the pairs to judge
(sheet, kind, query, rank, photo, score; kind ``short`` or ``sentence`` as search calibrates it); a
person judges them from the sheets (``bench/judgments/README.md``).

    python -m bench.judge_sheets --work-dir work/kw/default --queries bench/judgments/flickr8k_queries.txt \\
        --captions ../shared/data/flickr8k/flickr8k.token --splits ../shared/data/flickr8k/splits --out sheets/
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import textwrap
from pathlib import Path

from bench import _common  # noqa: F401 - first: it sets what torch reads when it loads

# isort: split
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from crossmodal.captions import load_splits, read_captions  # noqa: E402
from crossmodal.collection import DatasetCollection  # noqa: E402
from crossmodal.engine import SearchEngine  # noqa: E402
from crossmodal.features.cache import load_cache, write_cache  # noqa: E402
from crossmodal.images import load_image  # noqa: E402
from crossmodal.querybank import is_short_query  # noqa: E402
from crossmodal.search import search  # noqa: E402

from model import load_checkpoint  # noqa: E402

THUMB = 220


def read_queries(path: Path) -> list[tuple[str, str]]:
    """(kind, query) per line of the file; kind as search calibrates the query."""
    queries = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [("short" if is_short_query(q) else "sentence", q) for q in queries if q and not q.startswith("#")]


def split_engine(work_dir: Path, captions: Path, splits: Path, split: str, checkpoint: Path,
                 tmp: str) -> SearchEngine:
    """The engine over the split's photos alone (their rows as a cache of their own in ``tmp``)."""
    names = set(load_splits(read_captions(captions), splits)["val" if split == "dev" else split])
    cache = load_cache(work_dir / "image_embeddings")
    rows = [i for i, name in enumerate(cache.ids) if name in names]
    identity = {k: cache.manifest[k] for k in ("kind", "backbone", "weights", "preprocess", "dim", "views")
                if k in cache.manifest}
    write_cache(tmp, [cache.ids[r] for r in rows], np.asarray(cache.features[rows]), identity,
                [f for f in cache.manifest.get("failures", []) if f["id"] in names],
                extra={"images_dir": cache.manifest["images_dir"], "captions_file": str(captions)})
    model, state = load_checkpoint(checkpoint)
    return SearchEngine(DatasetCollection.open(tmp), model, state, checkpoint, device="cpu")


def sheet(query: str, photos: list[str], k: int) -> Image.Image:
    cols = 5
    rows = (k + cols - 1) // cols
    title = "\n".join(textwrap.wrap(query, 110))
    top = 20 + 16 * title.count("\n")
    out = Image.new("RGB", (cols * (THUMB + 6), top + rows * (THUMB + 6)), "white")
    draw = ImageDraw.Draw(out)
    draw.text((6, 4), title, fill="black")
    for i, path in enumerate(photos):
        img = load_image(path, THUMB)
        img.thumbnail((THUMB, THUMB))
        x, y = (i % cols) * (THUMB + 6), top + (i // cols) * (THUMB + 6)
        out.paste(img, (x, y))
        draw.rectangle((x, y, x + 26, y + 18), fill="yellow")
        draw.text((x + 4, y + 3), str(i + 1), fill="black")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, required=True, help="holds image_embeddings/ (and checkpoints/best.pt)")
    p.add_argument("--captions", type=Path, required=True)
    p.add_argument("--splits", type=Path, required=True)
    p.add_argument("--split", default="dev")
    p.add_argument("--checkpoint", type=Path, help="default: WORK_DIR/checkpoints/best.pt")
    p.add_argument("--queries", type=Path, required=True, help="one query a line")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--prefix", default="q", help="sheet names: PREFIX01.png, ...")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    queries = read_queries(args.queries)
    with tempfile.TemporaryDirectory() as tmp:
        engine = split_engine(args.work_dir, args.captions, args.splits, args.split,
                              args.checkpoint or args.work_dir / "checkpoints" / "best.pt", tmp)
        with open(args.out / "pairs.tsv", "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f, delimiter="\t", lineterminator="\n")
            out.writerow(["sheet", "kind", "query", "rank", "photo", "score"])
            for n, (kind, query) in enumerate(queries, start=1):
                hits = search(engine, query, k=args.k).hits
                name = f"{args.prefix}{n:02d}"
                sheet(query, [h.path for h in hits],
                      args.k).save(args.out / f"{name}.png")
                for h in hits:
                    out.writerow([name, kind, query, h.rank, h.name, f"{h.score:.4f}"])
    print(f"{len(queries)} sheets and pairs.tsv in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
