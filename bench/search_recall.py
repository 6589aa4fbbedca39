#!/usr/bin/env python
"""Text→image recall as search ranks: every caption of a split, through the page's whole query path.

``evaluate.py`` scores the heads over a split's cached features with its own matrix product. This
runs each caption of the split as a query through ``crossmodal.search`` (the engine's projections,
querybank, search index and the query pipeline) over the split's photos alone, and prints
text→image R@1/5/10, to be read beside evaluate.py's "+ querybank normalisation" row.

    python -m bench.search_recall --work-dir work/flickr8k \\
        --captions ../shared/data/flickr8k/flickr8k.token --splits ../shared/data/flickr8k/splits --split dev
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench import _common as C  # first: it sets what torch reads when it loads

# isort: split
import numpy as np  # noqa: E402

from crossmodal.captions import load_splits, read_captions  # noqa: E402
from crossmodal.collection import DatasetCollection  # noqa: E402
from crossmodal.engine import SearchEngine  # noqa: E402
from crossmodal.features.cache import load_cache, write_cache  # noqa: E402
from crossmodal.search import search  # noqa: E402

from model import load_checkpoint  # noqa: E402

KS = (1, 5, 10)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, required=True, help="image_embeddings/ and checkpoints/best.pt")
    p.add_argument("--captions", type=Path, default=C.SHARED_DATA / "flickr8k" / "flickr8k.token")
    p.add_argument("--splits", type=Path, default=C.SHARED_DATA / "flickr8k" / "splits")
    p.add_argument("--split", default="dev", help="a split list's name (default: %(default)s)")
    p.add_argument("--checkpoint", type=Path, help="default: WORK_DIR/checkpoints/best.pt")
    args = p.parse_args(argv)
    C.require(args.captions, "the caption file")
    captions = read_captions(args.captions)
    split = load_splits(captions, args.splits)["val" if args.split == "dev" else args.split]
    cache = load_cache(args.work_dir / "image_embeddings")
    rows = [i for i, name in enumerate(cache.ids) if name in set(split)]
    checkpoint = args.checkpoint or args.work_dir / "checkpoints" / "best.pt"
    model, state = load_checkpoint(checkpoint)
    queries = [c for c in captions.subset(split).captions]
    with tempfile.TemporaryDirectory() as tmp:  # the split's rows alone, as a cache of their own
        identity = {k: cache.manifest[k] for k in ("kind", "backbone", "weights", "preprocess", "dim", "views")
                    if k in cache.manifest}
        write_cache(tmp, [cache.ids[r] for r in rows], np.asarray(cache.features[rows]), identity,
                    [f for f in cache.manifest.get("failures", []) if f["id"] in set(split)])
        root = cache.manifest.get("images_dir") or "."
        engine = SearchEngine(DatasetCollection.open(tmp, root), model, state, checkpoint, device="cpu")
        engine.text_backbone  # noqa: B018 - loaded before the clock starts
        ranks = []
        t0 = time.perf_counter()
        for cap in queries:
            names = [h.name for h in search(engine, cap.text, k=max(KS)).hits]
            ranks.append(names.index(cap.image) + 1 if cap.image in names else max(KS) + 1)
        seconds = time.perf_counter() - t0
    ranks = np.asarray(ranks)
    C.print_machine(f"Text→image recall through crossmodal.search: {len(queries):,} captions over "
                    f"{len(rows):,} photos of split {args.split}")
    print(C.table(["R@1", "R@5", "R@10", "queries", "seconds"],
                  [[f"{100 * np.mean(ranks <= k):.2f}" for k in KS] + [len(queries), f"{seconds:.1f}"]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
