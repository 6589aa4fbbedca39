#!/usr/bin/env python
"""The on-disk IVF-PQ index (crossmodal.ondisk_index) at a scale: build time, disk, memory, recall, latency.

Synthetic clustered unit vectors (``bench_search.clustered``, the shape of the heads' 256-d space)
are written as float16 shards of one memory-mapped ``.npy`` file; the index is trained on a sample,
filled shard by shard in this process, merged into one part, and served from disk. Queries are
held-out rows of the same mixture (another seed) with noise, as text queries fall beside the photos.
Recall@10 is against exact search over all rows (float32, in memory: the bench needs ~4 bytes x
dim x rows of RAM for it), with the PQ ranking alone and re-ranked from the float16 rows.

    python -m bench.bench_ondisk --rows 1000000 --shards 10
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench import _common as C  # first: it sets what torch reads when it loads

# isort: split
import faiss  # noqa: E402
import numpy as np  # noqa: E402

from bench.bench_search import clustered  # noqa: E402
from crossmodal import ondisk_index as O  # noqa: E402


def rss_mb() -> float:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS")) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--shards", type=int, default=10)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--nlist", type=int, default=4096)
    p.add_argument("--pq", type=int, default=32, help="PQ code bytes per vector")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--candidates", type=int, default=100, help="rows re-ranked exactly per query")
    p.add_argument("--work", type=Path, default=None, help="folder for the shards and the index (default: a temp)")
    args = p.parse_args()
    C.print_machine(f"On-disk IVF{args.nlist},PQ{args.pq}: {args.rows:,} x {args.dim} rows in {args.shards} shards")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_ondisk_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows = np.lib.format.open_memmap(work / "rows.npy", mode="w+", dtype=np.float16,
                                         shape=(args.rows, args.dim))
        bounds = np.linspace(0, args.rows, args.shards + 1).astype(int)
        for s, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            rows[a:b] = clustered(int(b - a), args.dim, seed=s, dtype=np.float16)
        rows.flush()
        g = np.random.default_rng(99)
        queries = clustered(args.queries, args.dim, seed=10_000) + 0.7 * g.standard_normal(
            (args.queries, args.dim)).astype(np.float32) / np.sqrt(args.dim)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)

        sample = np.asarray(rows[g.choice(args.rows, min(args.rows, 64 * args.nlist), replace=False)], np.float32)
        folder = work / "index"
        t0 = time.perf_counter()
        O.train_index(sample, folder, args.nlist, args.pq)
        t_train = time.perf_counter() - t0
        del sample
        fill = []
        names = []
        for s, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            seconds, name = C.timed(lambda: O.fill_shards(folder, [(rows[a:b], int(a))], [f"shard-{s}.index"])[0])
            fill.append(seconds)
            names.append(name)
        t_merge, info = C.timed(lambda: O.add_part(folder, names))
        for name in names:
            Path(name).unlink()
        disk = sum(f.stat().st_size for f in folder.iterdir())

        exact = faiss.IndexFlatIP(args.dim)
        for a, b in zip(bounds[:-1], bounds[1:]):
            exact.add(np.asarray(rows[a:b], np.float32))
        truth = exact.search(queries, 10)[1]
        del exact

        before = rss_mb()
        index = O.open_index(folder)
        mapped = np.load(work / "rows.npy", mmap_mode="r")
        out = []
        for nprobe in (16, 32, 64, 128):
            index.nprobe = nprobe
            for rerank in (False, True):
                times, found = [], []
                for q in queries:
                    t0 = time.perf_counter()
                    ids = index.search(q[None], 10, mapped if rerank else None, args.candidates)[1][0]
                    times.append(time.perf_counter() - t0)
                    found.append(ids)
                recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
                out.append((nprobe, f"{args.candidates} from float16 rows" if rerank else "PQ codes",
                            recall, statistics.median(times) * 1000, np.percentile(times, 95) * 1000))
        after = rss_mb()
        n = args.rows / 1e6
        print(C.table(["step", "seconds", "seconds per million rows"], [
            ("train (quantizers, sample of %d)" % min(args.rows, 64 * args.nlist), t_train, "-"),
            ("fill shards (in this process, one after another)", sum(fill), sum(fill) / n),
            ("merge into one on-disk part", t_merge, t_merge / n)]))
        print()
        print(f"disk: {disk / 2**20:,.0f} MB for {info.rows:,} rows = {disk / info.rows:.1f} bytes per row "
              f"(PQ codes {args.pq} + id 8); float16 rows for re-ranking: {args.dim * 2} bytes per row")
        print(f"resident memory of this process: {before:,.0f} MB before opening, {after:,.0f} MB after "
              f"{len(out) * args.queries:,} queries (the mapped pages the queries touched count)")
        print()
        print(C.table(["nprobe", "ranked by", "recall@10", "p50 ms", "p95 ms"], out))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
