"""Query latency of exact search vs the FAISS index, and FAISS recall@10, at several collection sizes.

    python -m bench.bench_search                         # 31,000 and 1,000,000 images (~4 min)
    python -m bench.bench_search --sizes 31000,1000000,10000000   # adds 10M (~25 min, ~9 GB RAM)

Per size it prints exact and FAISS p50/p95 latency per single query (``time.perf_counter``, after
warm-up queries), FAISS recall@10 against exact search, the speed-up (exact p50 / FAISS p50), the
FAISS build time and its tuned search parameter, then a Markdown table with the machine. With
``--querybank N`` (default 2,000) each size is measured again ranking by ``q·x - bias(x)``, the
querybank normalisation the app applies to text queries (``querybank.py``; the FAISS index carries
the bias, recall is against exact biased search).

Synthetic data (no collection of millions of embeddings ships with the project): isotropic
Gaussian noise has no cluster structure and is unrealistic for an ANN index (every vector is about
equally far from every other), so vectors come from a clustered mixture instead (``clustered``):
64 "topics", 4,096 clusters whose centres lie near a topic, each cluster a Gaussian with a
low-rank (16-d) spread plus small isotropic noise, cluster sizes lognormal (some concepts are far
more common than others), every vector L2-normalised, as real image embeddings are. Queries are
fresh draws from the same mixture, not rows of the data. Above 2,000,000 rows the vectors are stored
as float16 (10M x 256 is 5 GB instead of 10 GB), which exact search reads directly, and
``build_index(kind="faiss")`` picks IVF-SQ8 (8-bit codes, 2.5 GB) over IVF-Flat there.

Timings on a shared 2-core machine are noisy: the load average is printed with the table.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np

import crossmodal.index as si  # noqa: E402
from crossmodal.atomic_io import atomic_write_text  # noqa: E402

log = logging.getLogger("bench_search")

DIM = 256
FLOAT16_ABOVE = 2_000_000  # rows above which vectors are generated and stored as float16


def clustered(n: int, d: int = DIM, seed: int = 0, dtype=np.float32, n_topics: int = 64,
              n_clusters: int = 4096, rank: int = 16, iso: float = 0.25,
              block: int = 1 << 18) -> np.ndarray:
    """``n`` L2-normalised rows from a fixed clustered mixture (the module docstring says how).

    The mixture itself is fixed (seed 1234); ``seed`` only draws the points, so data and queries
    drawn with different seeds come from the same distribution. Generated in blocks, so a float16
    result never needs a float32 copy of the whole matrix.
    """
    mix = np.random.default_rng(1234)
    topics = mix.standard_normal((n_topics, d)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    centers = topics[mix.integers(0, n_topics, n_clusters)]
    centers = centers + mix.standard_normal((n_clusters, d)).astype(np.float32) / np.sqrt(d)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    bases = mix.standard_normal((n_clusters, rank, d)).astype(np.float32) / np.sqrt(d)
    # per-cluster spread 0.3-0.8 along its main direction, decaying over the 16 directions
    scales = (mix.uniform(0.3, 0.8, (n_clusters, 1)) * np.linspace(1.0, 0.3, rank)[None]).astype(np.float32)
    weights = mix.lognormal(0.0, 1.0, n_clusters)
    weights /= weights.sum()

    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=dtype)
    for start in range(0, n, block):
        m = min(block, n - start)
        counts = rng.multinomial(m, weights)
        parts = [centers[c] + (rng.standard_normal((counts[c], rank), dtype=np.float32) * scales[c]) @ bases[c]
                 for c in np.flatnonzero(counts)]
        x = np.concatenate(parts)
        x += rng.standard_normal(x.shape, dtype=np.float32) * (iso / np.sqrt(d))
        x = x[rng.permutation(m)]  # clusters interleaved, as photos arrive
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start:start + m] = x
    return out


def time_queries(index: si.SearchIndex, queries: np.ndarray, k: int, warmup: np.ndarray, bank: str | None = None):
    """Latency of each single query (seconds), after the untimed ``warmup`` ones; and the results."""
    for q in warmup:
        index.search(q[None], k, bank)
    times, rows = [], []
    for q in queries:
        t = time.perf_counter()
        _, r = index.search(q[None], k, bank)
        times.append(time.perf_counter() - t)
        rows.append(r[0])
    return np.asarray(times), np.stack(rows)


def ms(times: np.ndarray, pct: float) -> float:
    return float(np.percentile(times, pct) * 1e3)


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = ""
    try:
        kb = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    import faiss
    import torch
    return (f"{model}, {cores} cores usable{mem}; Python {platform.python_version()}, numpy "
            f"{np.__version__}, torch {torch.__version__}, faiss {faiss.__version__}")


def load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


QUERYBANK_TEMPERATURE = 0.045  # about what training learns (best.pt of the Flickr8k runs)


def bench_size(n: int, args: argparse.Namespace) -> list[dict]:
    dtype = np.float16 if n > FLOAT16_ABOVE else np.float32
    t = time.perf_counter()
    vectors = clustered(n, seed=args.seed, dtype=dtype)
    drawn = clustered(args.queries + args.warmup, seed=args.seed + 1)
    warmup, queries = drawn[:args.warmup], drawn[args.warmup:]
    log.info("%d x %d %s vectors generated in %.1f s", n, DIM, np.dtype(dtype).name, time.perf_counter() - t)

    exact = si.ExactIndex(vectors)
    ex_t, truth = time_queries(exact, queries, args.k, warmup)
    log.info("exact %d: p50 %.2f ms, p95 %.2f ms", n, ms(ex_t, 50), ms(ex_t, 95))

    index = si.build_index(vectors, kind=args.faiss_kind, exact_max=0, target_recall=args.target_recall)
    fa_t, found = time_queries(index, queries, args.k, warmup)
    recall = si.recall_at(found, truth)
    log.info("%s %d: p50 %.3f ms, p95 %.3f ms, recall@10 %.3f (fresh queries), %.3f (build-time)",
             index.describe(), n, ms(fa_t, 50), ms(fa_t, 95), recall, index.recall_at_10)
    out = [{"n": n, "dtype": np.dtype(dtype).name, "ex50": ms(ex_t, 50), "ex95": ms(ex_t, 95),
            "index": index.describe(), "build": index.build_seconds, "fa50": ms(fa_t, 50),
            "fa95": ms(fa_t, 95), "recall": recall, "recall_build": index.recall_at_10}]
    del exact, index
    if args.querybank:  # as served: text queries ranked by q·x - querybank bias (querybank.py)
        import torch

        from crossmodal.querybank import querybank_bias
        bank = torch.from_numpy(clustered(args.querybank, seed=args.seed + 2))  # "training queries"
        biases = {"text": querybank_bias(vectors, bank, beta=1 / QUERYBANK_TEMPERATURE, progress=True)}
        exact = si.ExactIndex(vectors, biases=biases)
        ex_t, truth = time_queries(exact, queries, args.k, warmup, "text")
        index = si.build_index(vectors, kind=args.faiss_kind, exact_max=0, target_recall=args.target_recall,
                               biases=biases)
        fa_t, found = time_queries(index, queries, args.k, warmup, "text")
        recall = si.recall_at(found, truth)
        log.info("with querybank: exact p50 %.2f ms; %s p50 %.3f ms, recall@10 %.3f", ms(ex_t, 50),
                 index.describe(), ms(fa_t, 50), recall)
        out.append({**out[0], "ex50": ms(ex_t, 50), "ex95": ms(ex_t, 95), "index": index.describe(),
                    "build": index.build_seconds, "fa50": ms(fa_t, 50), "fa95": ms(fa_t, 95), "recall": recall,
                    "recall_build": index.recall_at_10, "querybank": True})
    return out
    # (vectors and both indexes are freed on return, before the next, bigger size)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="31000,1000000",
                   help="comma-separated collection sizes (add 10000000 for the 10M case)")
    p.add_argument("--queries", type=int, default=200, help="timed single queries per setting")
    p.add_argument("--warmup", type=int, default=10, help="untimed queries first")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--faiss-kind", default="faiss", choices=["faiss", *si.FAISS_KINDS],
                   help="faiss = IVF-Flat, or IVF-SQ8 above 4 GB of float32 vectors")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--querybank", type=int, default=2000,
                   help="also time search ranked with a querybank bias from this many synthetic bank "
                        "queries, as the app serves text queries (0 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.k != 10:
        log.warning("recall is reported as recall@%d", args.k)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]

    load_before, t0 = load(), time.perf_counter()
    results = [r for n in sizes for r in bench_size(n, args)]
    lines = [
        f"Machine: {machine()}",
        f"Load average (1/5/15 min) at start {load_before}, at end {load()}; total {time.perf_counter() - t0:.0f} s.",
        f"{args.queries} single queries per setting after {args.warmup} warm-up, k={args.k}; "
        f"clustered synthetic 256-d data (see bench/bench_search.py).",
        "",
        "| images | ranking | exact storage | exact p50 ms | exact p95 ms | FAISS index (tuned) | build s "
        "| FAISS p50 ms | FAISS p95 ms | recall@10 (fresh queries) | recall@10 (build-time) | exact p50 / FAISS p50 |",
        "|---:|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['n']:,} | {'querybank bias' if r.get('querybank') else 'cosine'} | {r['dtype']} "
            f"| {r['ex50']:.2f} | {r['ex95']:.2f} | {r['index']} | {r['build']:.0f} "
            f"| {r['fa50']:.3f} | {r['fa95']:.3f} | {r['recall']:.3f} | {r['recall_build']:.3f} "
            f"| {r['ex50'] / r['fa50']:.0f}x |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        atomic_write_text(args.out, table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
