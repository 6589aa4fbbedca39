#!/usr/bin/env python
"""End-to-end query latency (encode + search) against the bare text-encoder forward, in one process.

What a user waits for after pressing Enter is ``crossmodal.search.search``: the query checked and
parsed, tokenisation, the text backbone's forward pass, pooling, the text head, the index search and
the page of hits.
Per collection size and index kind it prints, over the same real captions used as queries:

* bare      the text backbone's forward pass alone on the query as its tokenizer returns it
            (``model(**tokenizer([query], return_tensors="pt"))``): the standard transformers call;
* query     ``search(engine, query, k=10)``, everything included;
* query / bare  p50 ratio (target at 31,000 images: <= 1.3);
* query / unmasked  p50 ratio against the same forward given only ``input_ids``. A single query has
            no padding, so its attention mask masks nothing; the app drops it, and transformers then
            skips building the attention mask (0.1-0.4 ms of a ~10 ms MiniLM forward). This ratio is the
            overhead of everything else.

The three are timed in turn query by query (the order rotating), each right after an untimed
query for another text, so that all three start from the same cache state and load from other
jobs hits all alike. The projection heads are randomly initialised (latency does not depend on
their values) and the photos' vectors are the clustered synthetic unit vectors of
``bench_search.py``, in a float16 feature cache, passed through an identity image head
(``_common.synthetic_engine``). The index is the app's (``exact``
below ``crossmodal.index.EXACT_SEARCH_MAX``) and, for comparison, the tuned FAISS index, with its recall@10
against exact search.

    python -m bench.bench_query                          # 31,000 and 1,000,000 images (~3 min)
    python -m bench.bench_query --sizes 31000,1000000,10000000   # adds 10M (~25 min, ~9 GB RAM)
    python -m bench.bench_query --sizes 31000 --backbone bert-base-uncased --weights DIR  # a larger encoder
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

from bench import _common as C  # first: it sets what torch reads when it loads

# isort: split
import numpy as np  # noqa: E402
import torch  # noqa: E402

from crossmodal.backbones import create_text_backbone  # noqa: E402
from crossmodal.captions import read_captions  # noqa: E402
from crossmodal.engine import SearchEngine  # noqa: E402
from crossmodal.index import EXACT_SEARCH_MAX, recall_at  # noqa: E402
from crossmodal.search import search  # noqa: E402

FALLBACK_QUERIES = [  # used when the Flickr8k captions are absent
    "a dog running through the snow", "two children playing on the beach",
    "a man riding a bicycle down a city street", "a group of people standing in front of a building",
    "a black and white dog jumps over a log", "a woman in a red dress walks past a shop window",
    "a boy in a blue shirt kicks a soccer ball on a grassy field", "climber on a rock face",
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=C.SHARED_DATA / "flickr8k" / "flickr8k.token",
                   help="caption file whose captions are the queries (default: %(default)s)")
    p.add_argument("--sizes", default="31000,1000000", help="comma-separated collection sizes")
    p.add_argument("--queries", type=int, default=200, help="timed queries per setting")
    p.add_argument("--warmup", type=int, default=10, help="untimed queries first")
    p.add_argument("--backbone", default="minilm", help="text backbone (default: %(default)s)")
    p.add_argument("--weights", type=Path, default=None,
                   help="the backbone's weights (e.g. a bert-base-uncased folder; default: its usual place)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as app.py serves queries)")
    p.add_argument("--no-querybank", action="store_true", help="rank by plain cosine (no querybank bias)")
    return p.parse_args(argv)


def load_queries(path: Path, n: int, seed: int) -> list[str]:
    if path.is_file():
        captions = [c.text for c in read_captions(path).captions]
        rng = np.random.default_rng(seed)
        return [captions[i] for i in rng.choice(len(captions), size=min(n, len(captions)), replace=False)]
    print(f"(captions not found at {path}: using {len(FALLBACK_QUERIES)} built-in queries in a cycle)")
    return [FALLBACK_QUERIES[i % len(FALLBACK_QUERIES)] for i in range(n)]


HEADER = ["images", "index", "bare forward p50 ms", "bare p95 ms", "query p50 ms", "query p95 ms",
          "query / bare (p50)", "query / unmasked (p50)", "recall@10 vs exact"]


def pct_ms(times: list[float], q: float) -> float:
    return float(np.percentile(times, q) * 1e3)


def run_setting(engine: SearchEngine, queries: list[str], warmup: int, k: int):
    """Timings of the bare forward (with and without the attention mask) and the full query, taken
    in turn; returns the three lists and the rows found."""
    backbone = engine.text_backbone
    times = {"bare": [], "unmasked": [], "query": []}
    rows = []
    for i, q in enumerate(queries):
        batch = backbone.tokenizer([q], truncation=True, max_length=backbone.max_length, return_tensors="pt")
        batch = {key: v for key, v in batch.items() if key in ("input_ids", "attention_mask")}
        hits = None

        def bare():
            with torch.inference_mode():
                backbone.model(**batch)

        def unmasked():
            with torch.inference_mode():
                backbone.model(input_ids=batch["input_ids"])

        def query():
            nonlocal hits
            hits = search(engine, q, k=k).hits

        steps = [("bare", bare), ("unmasked", unmasked), ("query", query)]
        for name, step in steps[i % 3:] + steps[: i % 3]:
            # each timed call follows a whole query for another text, as when queries come back to
            # back: all three start from the same cache state
            search(engine, queries[i - 1], k=k)
            t0 = time.perf_counter()
            step()
            t = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(t)
        if i >= warmup:
            rows.append([int(h.name.split(".")[0]) for h in hits])  # names are row numbers
    return times["bare"], times["unmasked"], times["query"], np.asarray(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("crossmodal.index").setLevel(logging.INFO)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    queries = load_queries(args.data, args.queries + args.warmup, args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)

    backbone = create_text_backbone(args.backbone, weights=args.weights)
    backbone.model.eval()
    C.print_machine(f"Query latency: {args.backbone} + heads + search, {len(queries) - args.warmup} queries, "
                    f"k={args.k}")

    rows_out = []
    for n in sizes:
        folder = Path(tempfile.mkdtemp(prefix="bench_query_"))
        C.write_synthetic_cache(folder, n, seed=args.seed)
        # exact first (its results are the truth for recall), then the tuned FAISS index; the app
        # itself ("auto") takes exact up to EXACT_SEARCH_MAX images and FAISS above
        app_kind = "exact" if n <= EXACT_SEARCH_MAX else "faiss"
        setting_rows = {}
        for kind in ("exact", "faiss"):
            engine = C.synthetic_engine(folder, backbone, index_kind=kind, seed=args.seed,
                                        querybank=not args.no_querybank)
            bare, unmasked, query, found = run_setting(engine, queries, args.warmup, args.k)
            if kind == "exact":
                truth = found
            recall = "exact" if kind == "exact" else f"{recall_at(found, truth):.3f}"
            setting_rows[kind] = [f"{n:,}", engine.current().index.describe(), pct_ms(bare, 50), pct_ms(bare, 95),
                                  pct_ms(query, 50), pct_ms(query, 95), pct_ms(query, 50) / pct_ms(bare, 50),
                                  pct_ms(query, 50) / pct_ms(unmasked, 50), recall]
            print(C.table(HEADER, [setting_rows[kind]]), flush=True)
            del engine
        setting_rows[app_kind][1] += " (the app's choice)"
        rows_out += [setting_rows["exact"], setting_rows["faiss"]]
        shutil.rmtree(folder, ignore_errors=True)
    print()
    print(C.table(HEADER, rows_out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
