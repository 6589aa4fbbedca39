"""Top-K inner-product search over the image embedding matrix: exact, or a FAISS index.

Images and text queries live in one L2-normalised space, so the best images for a query are the
rows with the largest inner product. Two kinds of index answer that:

* ``ExactIndex``: a matrix product plus a top-k selection. Exact, no build, and fast enough for
  the demo and Flickr30K (about 10 ms per query at 31,000 rows on 2 cores); results are
  deterministic (ties go to the lower row). Float16 storage halves memory for big collections.
* ``FaissIndex``: an approximate index for collections above ``EXACT_SEARCH_MAX``:
  IVF-Flat by default, IVF-SQ8 where float32 copies would not fit comfortably, HNSW on request.
  Its search parameter (``nprobe`` / ``efSearch``) is tuned at build time upward until the
  measured recall@10 against exact search reaches the target, and the measured figure is kept.

``build_index`` chooses between them and logs the choice; ``save_index`` / ``load_index`` store an
index in a folder (atomic writes; ``index.json`` is written last, so it marks a complete save).
"""
from __future__ import annotations

import functools
import json
import logging
import math
import mmap
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from crossmodal.atomic_io import atomic_save_npy, atomic_write_json
from crossmodal.int8_scan import Int8Rows, padded_width

log = logging.getLogger(__name__)

EXACT_SEARCH_MAX = 200_000  # above this many images "auto" builds a FAISS index
KINDS = ("auto", "exact", "faiss", "faiss-ivf", "faiss-ivf-sq8", "faiss-hnsw")
FAISS_KINDS = ("faiss-ivf", "faiss-ivf-sq8", "faiss-hnsw")

META_FILE = "index.json"
FAISS_FILE = "index.faiss"
VECTORS_FILE = "vectors.npy"
BIASES_FILE = "biases.npy"  # an exact index's querybank biases, one row per bank (index.json names them)
FORMAT_VERSION = 1

RECALL_QUERIES = 200  # sampled rows used to measure recall@10 at build time
RECALL_K = 10
QUERY_NOISE = 0.7  # noise norm added to a sampled row (cosine to it ~0.82); see recall_queries
# Above this many bytes of float32 vectors, "faiss" picks IVF-SQ8 (1 byte a dimension) over
# IVF-Flat (4 bytes): 10M x 256 is 10 GB as float32 but 2.5 GB as SQ8.
IVF_FLAT_MAX_BYTES = 4 << 30
MAX_NLIST = 4096  # assigning n vectors costs n * nlist * d multiply-adds: keeps builds in minutes
# Above n * nlist of this, vectors are assigned to lists in two levels (CoarseAssigner): ~2x
# faster at 4,096 lists, at the price of a few vectors landing in a near-best list.
TWO_LEVEL_MIN_WORK = 10**10
SCORE_BLOCK = 1 << 24  # score entries computed at once by exact search (64 MB of float32)

NPROBE_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
                1536, 2048, 3072, 4096)
EF_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


# --------------------------------------------------------------------------------------------------
# input checks

def _check_vectors(vectors: Any, finite: bool = True) -> np.ndarray:
    """The matrix to index as float32 or float16 (kept as given: no copy where possible)."""
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().cpu().numpy()
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be a 2-D (n, d) array, got shape {vectors.shape}")
    n, d = vectors.shape
    if n == 0 or d == 0:
        raise ValueError(f"no vectors to index (shape {vectors.shape})")
    if vectors.dtype not in (np.float32, np.float16):
        if not np.issubdtype(vectors.dtype, np.number):
            raise ValueError(f"vectors must be numeric, got dtype {vectors.dtype}")
        vectors = vectors.astype(np.float32)
    vectors = np.ascontiguousarray(vectors)
    # Checked in blocks: a whole-matrix isfinite would allocate n*d bools (2.5 GB at 10M x 256).
    for start in range(0, n if finite else 0, 1 << 18):
        if not np.isfinite(vectors[start:start + (1 << 18)]).all():
            raise ValueError("vectors contain NaN or infinity")
    return vectors


def _check_queries(queries: Any, dim: int) -> np.ndarray:
    usual = (type(queries) is np.ndarray and queries.dtype == np.float32 and queries.ndim == 2
             and queries.shape[1] == dim and queries.flags.c_contiguous)  # needs no conversion
    if not usual:
        if isinstance(queries, torch.Tensor):
            queries = queries.detach().cpu().numpy()
        queries = np.asarray(queries)
        if queries.ndim != 2:
            raise ValueError(f"queries must be a 2-D (q, d) array (use q[None] for one query), "
                             f"got shape {queries.shape}")
        if queries.shape[1] != dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, the index holds {dim}-d vectors")
        if not np.issubdtype(queries.dtype, np.number):
            raise ValueError(f"queries must be numeric, got dtype {queries.dtype}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
    if not np.isfinite(queries).all():
        raise ValueError("queries contain NaN or infinity")
    return queries


def _check_biases(biases: dict[str, Any] | None, size: int) -> dict[str, np.ndarray]:
    """bank name -> (size,) finite float32 querybank bias (``querybank.py``)."""
    out = {}
    for bank, bias in (biases or {}).items():
        bias = np.asarray(bias, dtype=np.float32)
        if bias.shape != (size,) or not np.isfinite(bias).all():
            raise ValueError(f"querybank bias {bank!r} must be {size} finite values, got shape {bias.shape}")
        out[str(bank)] = bias
    return out


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


# --------------------------------------------------------------------------------------------------
# the interface

class SearchIndex:
    """Top-k inner-product search. ``search`` returns (scores, rows), best first.

    ``k`` above ``size`` returns ``size`` columns (never padding rows such as -1, which would
    silently index the last image). ``recall_at_10`` is measured at build time against exact
    search (None for the exact index itself). ``banks`` names the querybank biases the index was
    built with; ``search(..., bank=name)`` ranks by ``q·x - bias[x]``.
    """

    kind: str = "base"

    def __init__(self, size: int, dim: int, recall_at_10: float | None, build_seconds: float,
                 params: dict[str, Any] | None = None, banks: Sequence[str] = ()):
        self.size = int(size)
        self.dim = int(dim)
        self.recall_at_10 = recall_at_10
        self.build_seconds = float(build_seconds)
        self.params: dict[str, Any] = dict(params or {})
        self.banks = list(banks)

    def search(self, queries: np.ndarray, k: int, bank: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(q, d) float32 queries -> scores (q, k') float32 and rows (q, k') int64, k' = min(k, size).

        ``bank``: ranks by ``q·x - bias[x]`` with that querybank bias of the index (querybank
        normalisation, ``querybank.py``) and returns those scores. Exact search stays exact; a
        FAISS index searches vectors that carry the biases as extra coordinates.
        """
        queries = _check_queries(queries, self.dim)
        k = min(_check_k(k), self.size)
        if bank is not None and bank not in self.banks:
            raise ValueError(f"no querybank bias {bank!r} in this index (it has: {', '.join(self.banks) or 'none'})")
        if len(queries) == 0:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        scores, rows = self._search(queries, k, bank)
        return np.ascontiguousarray(scores, np.float32), np.ascontiguousarray(rows, np.int64)

    def _search(self, queries: np.ndarray, k: int, bank: str | None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def describe(self) -> str:
        shown = {**self.params, "banks": "+".join(self.banks)} if self.banks else self.params
        extra = ", ".join(f"{key}={value}" for key, value in sorted(shown.items()) if key != "bias_offsets")
        return f"{self.kind}({extra})" if extra else self.kind

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.describe()} size={self.size} dim={self.dim} "
                f"recall@10={self.recall_at_10}>")


# --------------------------------------------------------------------------------------------------
# exact search

def _select_topk(scores: np.ndarray, cols: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best (score desc, then col asc) of a dense (q, m) candidate set."""
    order = np.lexsort((cols, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(cols, order, 1)


def _release_mapped_pages(array: np.ndarray) -> None:
    """Let the kernel drop the resident pages of a memory-mapped array (re-read on access): keeps
    resident memory to one copy of a matrix whose other copy does the work."""
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is not None and hasattr(base, "madvise"):
        try:
            base.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # pragma: no cover - best effort only (e.g. a closed map)
            pass


class ExactIndex(SearchIndex):
    """Exact top-k by matrix product, in blocks so that memory stays bounded for any size.

    Ties are broken by the lower row, so results are reproducible. Returned scores are float32 dot
    products with the stored vectors (minus the bank's bias). Float16 vectors are scanned from an
    int8 copy (``int8_scan.Int8Rows``: half the bytes of bf16, and a single query's scan reads the
    whole matrix cold, right after a forward pass); every row whose pre-score is within twice the
    proven pre-score error of the k-th best is then re-scored in float32, so the result is exact.
    """

    kind = "exact"

    def __init__(self, vectors: np.ndarray, build_seconds: float = 0.0, *,
                 biases: dict[str, np.ndarray] | None = None, _checked: bool = False):
        vectors = _check_vectors(vectors, finite=not _checked)  # (a 10M-row check takes seconds)
        self.biases = _check_biases(biases, len(vectors))  # bank -> (n,) bias, subtracted exactly
        super().__init__(len(vectors), vectors.shape[1], None, build_seconds,
                         {"dtype": str(vectors.dtype)}, banks=list(self.biases))
        self.vectors = vectors
        self._int8: Int8Rows | None = None
        if vectors.dtype == np.float16:
            self._int8 = Int8Rows(vectors)
            self.params["scan"] = f"int8-{self._int8.kernel}"
            self._neg_biases = {bank: torch.from_numpy(-b) for bank, b in self.biases.items()}
            self._max_abs_bias = {bank: float(np.abs(b).max()) for bank, b in self.biases.items()}
            _release_mapped_pages(vectors)  # the scan reads the int8 copy; float16 rows only for re-scoring

    def _search(self, queries: np.ndarray, k: int, bank: str | None) -> tuple[np.ndarray, np.ndarray]:
        nq = len(queries)
        if self._int8 is not None:
            block, chunk = self._int8.block_rows(nq, SCORE_BLOCK)
        else:
            block, chunk = max(4096, SCORE_BLOCK // nq), nq
        if chunk >= nq:
            return self._search_chunk(queries, k, bank, block)
        parts = [self._search_chunk(queries[i : i + chunk], k, bank, block) for i in range(0, nq, chunk)]
        return np.vstack([s for s, _ in parts]), np.vstack([c for _, c in parts])

    def _search_chunk(self, queries: np.ndarray, k: int, bank: str | None,
                      block: int) -> tuple[np.ndarray, np.ndarray]:
        bias = self.biases[bank] if bank is not None else None
        int8 = self._int8
        nq = len(queries)
        if int8 is not None:  # per query: twice the bound on |pre-score - float32 score|
            prep = int8.prepare(queries, self._max_abs_bias[bank] if bank is not None else 0.0)
            margin = 2 * prep.bounds[:, None]
            neg_bias = self._neg_biases[bank] if bank is not None else None
        best_s = best_c = None
        for start in range(0, self.size, block):
            stop = min(start + block, self.size)
            m = stop - start
            if int8 is not None:  # float32 pre-scores, the bias subtracted in the same call
                s = int8.scores(prep, start, stop, None if neg_bias is None else neg_bias[start:stop])
            else:
                # numpy (OpenBLAS) rather than torch: equal at 1M rows, and it keeps small products
                # single-threaded, where torch's 2-thread pool measured 10x slower on a busy box.
                s = queries @ self.vectors[start:stop].T
                if bias is not None:
                    s -= bias[None, start:stop]
            kk = min(k, m)
            # Threshold = kk-th best score per row; every entry at or above it is a candidate, so
            # ties at the boundary are all kept and then broken by row below. One query, the app's
            # case, takes 1-D calls: each numpy call costs tens of microseconds once a forward pass
            # has pushed numpy itself out of cache.
            if nq == 1:
                s1, slack = s[0], (margin[0, 0] if int8 is not None else 0.0)
                if m >= 64 * kk:  # the kk-th best of every 16th entry is at most the kk-th best of
                    # all: a cheap, lower threshold, then the exact one among the few rows above it
                    ci = np.flatnonzero(s1 >= np.partition(s1[::16], -kk)[-kk] - slack)
                    sub = s1[ci]
                    ci = ci[sub >= np.partition(sub, -kk)[-kk] - slack]
                else:
                    ci = np.flatnonzero(s1 >= np.partition(s1, m - kk)[m - kk] - slack)
                qi = np.zeros(len(ci), np.intp)
            else:
                thr = np.partition(s, m - kk, axis=1)[:, m - kk:m - kk + 1]
                if int8 is not None:  # and every row whose pre-score could be rounding away from the top k
                    thr = thr - margin
                qi, ci = np.nonzero(s >= thr)
            if int8 is not None:  # re-score the candidates exactly (float32 dot products of upcast
                # rows; torch upcasts float16 6x faster than numpy)
                cand = torch.from_numpy(self.vectors[start + ci]).float().numpy()
                sc = np.einsum("md,md->m", cand, queries[qi])
                if bias is not None:
                    sc -= bias[start + ci]
            else:
                sc = s[qi, ci]
            ci = ci.astype(np.int64) + start
            if nq == 1:
                order = np.lexsort((ci, -sc))[:kk]
                blk_s, blk_c = sc[order][None], ci[order][None]
            else:
                order = np.lexsort((ci, -sc, qi))
                qi, ci, sc = qi[order], ci[order], sc[order]
                starts = np.searchsorted(qi, np.arange(nq))
                take = starts[:, None] + np.arange(kk)[None, :]
                blk_s, blk_c = sc[take], ci[take]
            if best_s is None:
                best_s, best_c = blk_s, blk_c
            else:
                best_s, best_c = _select_topk(np.concatenate([best_s, blk_s], 1),
                                              np.concatenate([best_c, blk_c], 1), k)
        return best_s, best_c


# --------------------------------------------------------------------------------------------------
# FAISS

def _import_faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a listed dependency
        raise ImportError("an approximate index needs faiss: pip install faiss-cpu") from e
    return faiss


def _blocks(n: int, size: int) -> Sequence[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid (largest inner product) per row: numpy matmul in blocks.

    faiss-cpu's own assignment (its bundled BLAS) measured ~5x slower than numpy/torch here.
    """
    nlist = centroids.shape[0]
    out = np.empty(len(x), np.int64)
    for s, e in _blocks(len(x), max(1024, (1 << 26) // nlist)):  # <= 256 MB of scores a block
        out[s:e] = (np.asarray(x[s:e], np.float32) @ centroids.T).argmax(axis=1)
    return out


class CoarseAssigner:
    """Approximate nearest-centroid assignment in two levels, for adding very many vectors.

    The centroids are grouped by k-means into ~sqrt(nlist) groups; a vector is compared with the
    group centres, then only with the centroids of its ``probe`` best groups. Exactly which list a
    vector lands in only matters for how fast it is found; the recall measured after the build
    covers any effect on results.
    """

    def __init__(self, centroids: np.ndarray, probe: int | None = None, seed: int = 0):
        nlist = len(centroids)
        n_groups = max(2, int(round(math.sqrt(nlist))))
        self.centroids = centroids
        self.group_centres = spherical_kmeans(centroids, n_groups, niter=10, seed=seed)
        groups = _assign(centroids, self.group_centres)
        self.members = [np.flatnonzero(groups == g) for g in range(n_groups)]
        # 6 of 64 groups at 4,096 lists. On the bench's clustered data 4 groups already put 99.6%
        # of vectors in their exact list (2.6x faster than exact assignment); on flatter data
        # (tests) fewer do, so a little margin. Recall is measured after the build regardless.
        self.probe = min(n_groups, probe or max(4, n_groups // 10))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        n, p = len(x), self.probe
        g_scores = x @ self.group_centres.T
        top = np.argpartition(-g_scores, p - 1, axis=1)[:, :p].ravel()
        rows = np.repeat(np.arange(n), p)
        order = np.argsort(top, kind="stable")
        top, rows = top[order], rows[order]
        bounds = np.searchsorted(top, np.arange(len(self.members) + 1))
        best_s = np.full(n, -np.inf, np.float32)
        best_a = np.zeros(n, np.int64)
        for g, members in enumerate(self.members):
            r = rows[bounds[g]:bounds[g + 1]]
            if len(r) == 0 or len(members) == 0:
                continue
            sc = x[r] @ self.centroids[members].T
            a = sc.argmax(axis=1)
            sa = sc[np.arange(len(r)), a]
            better = sa > best_s[r]  # each row appears at most once per group: no write clash
            best_s[r[better]] = sa[better]
            best_a[r[better]] = members[a[better]]
        return best_a


def spherical_kmeans(sample: np.ndarray, nlist: int, niter: int = 10, seed: int = 0,
                     progress: bool = False) -> np.ndarray:
    """k-means on the unit sphere (centroids renormalised), suited to inner-product search."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(sample, np.float32)
    cent = x[rng.choice(len(x), nlist, replace=False)].copy()
    for _ in tqdm(range(niter), desc=f"k-means ({nlist} lists)", unit="iter", disable=not progress,
                  dynamic_ncols=True):
        a = _assign(x, cent)
        # Per-cluster sums by sorting rows by cluster and summing runs (np.add.at is far slower).
        order = np.argsort(a, kind="stable")
        counts = np.bincount(a, minlength=nlist)
        present = np.flatnonzero(counts)
        sums = np.zeros_like(cent)
        sums[present] = np.add.reduceat(x[order], np.concatenate([[0], np.cumsum(counts)[:-1]])[present])
        empty = np.flatnonzero(counts == 0)
        if len(empty):  # re-seed empty clusters with random points rather than lose lists
            sums[empty] = x[rng.choice(len(x), len(empty), replace=False)]
        cent = (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    return cent


def default_nlist(n: int) -> int:
    """~4 sqrt(n) inverted lists (FAISS's usual guide), at least 1, at most MAX_NLIST and n/39."""
    return int(max(1, min(round(4 * math.sqrt(n)), MAX_NLIST, n // 39 or 1)))


def recall_queries(vectors: np.ndarray, n_queries: int = RECALL_QUERIES, noise: float = QUERY_NOISE,
                   seed: int = 0) -> np.ndarray:
    """Seeded queries for measuring recall: sampled rows plus noise of norm ~``noise``, normalised.

    A query that is (nearly) a stored row is easy for an ANN index: its own row is a free hit.
    On clustered data (bench/bench_search.py) noise 0.3 overstated recall by ~0.02 compared with
    fresh queries from the same distribution, 0.5 matched them and 0.7 understates slightly, so
    the default 0.7 keeps the tuned nprobe / efSearch on the safe side.
    """
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(vectors), min(n_queries, len(vectors)), replace=False))
    q = vectors[rows].astype(np.float32)
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    q = q + rng.standard_normal(q.shape).astype(np.float32) * (noise / math.sqrt(q.shape[1])) * norms
    return (q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row's true top-k found (rows as sets; -1 padding never matches)."""
    k = truth.shape[1]
    found = found[:, :k]
    hits = ((found[:, :, None] == truth[:, None, :]) & (found[:, :, None] >= 0)).any(axis=2).sum(axis=1)
    return float(hits.mean() / k)


class FaissIndex(SearchIndex):
    """A FAISS inner-product index with its tuned search parameter (``nprobe`` or ``efSearch``).

    With querybank biases, FAISS holds each vector x as [x, -(b_1(x) - c_1), ..., -(b_m(x) - c_m)]
    (c_j: bank j's mean bias, so the extra coordinates stay small) and a query q searching bank j
    as [q, e_j]: the inner product is the normalised score q·x - b_j(x) + c_j, so the index finds
    the best rows by that score itself instead of re-ranking candidates found by plain cosine
    (which missed rows that only the bias brings up: recall 0.94 at 1M rows). ``params["banks"]``
    and ``params["bias_offsets"]`` record the columns.
    """

    def __init__(self, index: Any, kind: str, size: int, dim: int, recall_at_10: float | None,
                 build_seconds: float, params: dict[str, Any]):
        if kind not in FAISS_KINDS:
            raise ValueError(f"unknown FAISS index kind {kind!r}; expected one of {FAISS_KINDS}")
        super().__init__(size, dim, recall_at_10, build_seconds, params, banks=params.get("banks", ()))
        self.kind = kind
        self.index = index
        self.apply_params()

    def _augment(self, queries: np.ndarray, bank: str | None) -> np.ndarray:
        """Queries as the index holds vectors: a 1 in the searched bank's column (none: plain
        cosine), zeros in any padding columns (``faiss_width``)."""
        if self.index.d == self.dim:
            return queries
        extra = np.zeros((len(queries), self.index.d - self.dim), np.float32)
        if bank is not None:
            extra[:, self.banks.index(bank)] = 1.0
        return np.ascontiguousarray(np.hstack([queries, extra]))

    def apply_params(self) -> None:
        faiss = _import_faiss()
        if self.kind == "faiss-hnsw":
            faiss.downcast_index(self.index).hnsw.efSearch = int(self.params["efSearch"])
        else:
            faiss.extract_index_ivf(self.index).nprobe = int(self.params["nprobe"])

    def _raw_search(self, queries: np.ndarray, k: int, value: int | None = None):
        faiss = _import_faiss()
        if value is None:
            return self.index.search(queries, k)
        # Search parameters per call leave the shared index untouched (safe for concurrent use).
        if self.kind == "faiss-hnsw":
            params = faiss.SearchParametersHNSW(efSearch=int(value))
        else:
            params = faiss.SearchParametersIVF(nprobe=int(value))
        return self.index.search(queries, k, params=params)

    def _search(self, queries: np.ndarray, k: int, bank: str | None) -> tuple[np.ndarray, np.ndarray]:
        queries = self._augment(queries, bank)
        scores, rows = self._raw_search(queries, k)
        missing = np.flatnonzero((rows < 0).any(axis=1))
        if len(missing):
            # Too few vectors in the probed lists (or graph beam) for k results: widen the search
            # for those queries until every row is filled (nprobe = nlist visits every vector).
            key = "efSearch" if self.kind == "faiss-hnsw" else "nprobe"
            value = int(self.params[key])
            limit = max(self.size, k) if key == "efSearch" else int(self.params["nlist"])
            while len(missing) and value < limit:
                value = min(limit, value * 4)
                s2, r2 = self._raw_search(queries[missing], k, value)
                scores[missing], rows[missing] = s2, r2
                missing = missing[(r2 < 0).any(axis=1)]
            if len(missing):  # pragma: no cover - only a corrupt index gets here
                raise RuntimeError(f"{self.kind} returned fewer than k={k} results")
        if bank is not None:  # the index's score is q·x - (b(x) - c): report q·x - b(x), as exact search does
            scores = scores - self.params["bias_offsets"][self.banks.index(bank)]
        return scores, rows

    # ---- building -------------------------------------------------------------------------------

    @classmethod
    def build(cls, vectors: np.ndarray, kind: str = "faiss-ivf", target_recall: float = 0.95,
              nlist: int | None = None, hnsw_m: int = 32, ef_construction: int = 64,
              kmeans_iters: int = 10, seed: int = 0, queries: np.ndarray | None = None,
              biases: dict[str, np.ndarray] | None = None, progress: bool = True,
              exact: "ExactIndex | None" = None, _checked: bool = False) -> "FaissIndex":
        """Build, then tune the search parameter upward until recall@10 >= ``target_recall``.

        ``queries``: (q, d) queries to measure recall on against ``ExactIndex`` (by default
        ``recall_queries`` of the data); with ``biases`` (bank -> (n,) querybank bias) each query
        is measured with every bank, as text queries are searched. ``exact``: that ExactIndex of
        the same vectors and biases, if the caller has one (else one is built for the tuning).
        """
        faiss = _import_faiss()
        vectors = _check_vectors(vectors, finite=not _checked)
        n, d = vectors.shape
        biases = _check_biases(biases, n)
        banks = list(biases)
        offsets = [float(np.mean(biases[b], dtype=np.float64)) for b in banks]
        extra = (np.stack([offsets[j] - biases[b] for j, b in enumerate(banks)], axis=1).astype(np.float32)
                 if banks else None)  # the bias coordinates of every row (n x banks)
        da = faiss_width(kind, d, len(banks))
        t0 = time.perf_counter()
        if kind == "faiss-hnsw":
            index = faiss.IndexHNSWFlat(da, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            params: dict[str, Any] = {"M": hnsw_m, "efConstruction": ef_construction}
            _add_in_blocks(index, vectors, extra, da, None, progress, "hnsw add")
        elif kind in ("faiss-ivf", "faiss-ivf-sq8"):
            nlist = int(nlist or default_nlist(n))
            if not 1 <= nlist <= n:
                raise ValueError(f"nlist must be in [1, {n}], got {nlist}")
            rng = np.random.default_rng(seed)
            # ~32 training points per list is enough for k-means centroids; more costs time only.
            sample_rows = np.sort(rng.choice(n, min(n, max(32 * nlist, 10_000)), replace=False))
            sample = _with_columns(vectors[sample_rows], extra, sample_rows, da)
            centroids = spherical_kmeans(sample, nlist, kmeans_iters, seed, progress and n >= 200_000)
            quantizer = faiss.IndexFlatIP(da)
            quantizer.add(centroids)
            if kind == "faiss-ivf":
                index = faiss.IndexIVFFlat(quantizer, da, nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                index = faiss.IndexIVFScalarQuantizer(quantizer, da, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                      faiss.METRIC_INNER_PRODUCT)
            # The quantizer already holds nlist centroids, so train() skips clustering and only
            # fits the scalar quantizer (on residuals) where there is one.
            index.train(sample)  # (faiss's Python wrapper keeps the quantizer alive with the index)
            del sample
            params = {"nlist": nlist}
            if n * nlist >= TWO_LEVEL_MIN_WORK:
                assign = CoarseAssigner(centroids, seed=seed)
                params["assign"] = "two-level"
            else:
                assign = functools.partial(_assign, centroids=centroids)
            _add_in_blocks(index, vectors, extra, da, assign, progress, f"{kind} add")
        else:
            raise ValueError(f"unknown FAISS index kind {kind!r}; expected one of {FAISS_KINDS}")
        if banks:
            params.update(banks=banks, bias_offsets=offsets)

        if queries is None:
            queries = recall_queries(vectors, seed=seed)
        queries = _check_queries(queries, d)
        exact = exact or ExactIndex(vectors, biases=biases, _checked=True)
        key, steps = (("efSearch", EF_STEPS) if kind == "faiss-hnsw"
                      else ("nprobe", [s for s in NPROBE_STEPS if s < params["nlist"]] + [params["nlist"]]))
        self = cls(index, kind, n, d, None, 0.0, {**params, key: steps[0]})
        truth_rows = np.concatenate([exact.search(queries, min(RECALL_K, n), b)[1] for b in banks or [None]])
        queries = np.concatenate([self._augment(queries, b) for b in banks or [None]])
        del exact
        # Smallest setting (fastest search) whose measured recall reaches the target; if none
        # does (e.g. SQ8's quantisation ceiling), the best one seen, with a warning.
        best = (-1.0, steps[0])
        for value in steps:
            recall = recall_at(self._raw_search(queries, truth_rows.shape[1], value)[1], truth_rows)
            log.debug("%s %s=%d recall@10=%.4f", kind, key, value, recall)
            if recall > best[0] + 1e-9:
                best = (recall, value)
            if recall >= target_recall:
                best = (recall, value)
                break
        else:
            log.warning("%s reached recall@10 %.3f at most (%s=%d), below the target %.3f",
                        kind, best[0], key, best[1], target_recall)
        self.recall_at_10 = round(best[0], 4)
        self.params[key] = int(best[1])
        self.apply_params()
        self.build_seconds = time.perf_counter() - t0
        return self


def exact_scan_is_cheaper(index: SearchIndex, dtype: np.dtype) -> bool:
    """Whether exact search over ``dtype`` vectors reads no more bytes per query than the IVF
    ``index`` at its tuned nprobe, i.e. when it probes that large a share of its lists."""
    return "nprobe" in index.params and _ivf_bytes_per_row(index) >= _exact_bytes_per_row(dtype, index.dim)


def _ivf_bytes_per_row(index: SearchIndex) -> float:
    """Bytes per stored row an IVF index reads for a query at its tuned nprobe (on average)."""
    per_row = index.index.d * (1 if index.kind == "faiss-ivf-sq8" else 4)  # 8-bit codes, or float32
    return per_row * index.params["nprobe"] / index.params["nlist"]


def _exact_bytes_per_row(dtype: np.dtype, dim: int) -> int:
    """Bytes per row ExactIndex scans: int8 codes for float16 vectors, else the float32 rows."""
    return padded_width(dim) if np.dtype(dtype) == np.float16 else 4 * dim


def faiss_width(kind: str, dim: int, n_banks: int) -> int:
    """Columns a FAISS index of ``dim``-d vectors holds: the vector, one per querybank, and for
    IVF-SQ8 zero columns up to a multiple of 16, because FAISS's 8-bit scalar-quantiser kernels are
    SIMD only over whole 16-value blocks (one bank on 256-d vectors: 257 columns searched 8.5x
    slower than 272, 300,000 rows, nprobe 64)."""
    width = dim + n_banks
    return width + (-width % 16 if kind == "faiss-ivf-sq8" else 0)


def _with_columns(rows: np.ndarray, extra: np.ndarray | None, index: Any, width: int) -> np.ndarray:
    """float32 copy of some vectors with their extra (bias) coordinates ``extra[index]`` appended,
    then zero columns up to ``width``."""
    parts = [np.asarray(rows, np.float32)] + ([] if extra is None else [extra[index]])
    pad = width - sum(p.shape[1] for p in parts)
    if pad > 0:
        parts.append(np.zeros((len(parts[0]), pad), np.float32))
    return np.ascontiguousarray(parts[0] if len(parts) == 1 else np.hstack(parts))


def _add_in_blocks(index: Any, vectors: np.ndarray, extra: np.ndarray | None, width: int,
                   assign: Callable[[np.ndarray], np.ndarray] | None, progress: bool, desc: str) -> None:
    """Add float32 copies of row blocks (float16 input stays float16 in memory), with ``extra``
    columns and zero padding up to ``width`` appended to each row."""
    from faiss.contrib.ivf_tools import add_preassigned
    from tqdm import tqdm

    n = len(vectors)
    with tqdm(total=n, desc=desc, unit="vec", unit_scale=True, disable=not progress or n < 200_000,
              dynamic_ncols=True) as bar:
        for s, e in _blocks(n, 1 << 17):
            xb = _with_columns(vectors[s:e], extra, slice(s, e), width)
            if assign is None:
                index.add(xb)
            else:  # our (numpy) assignment, then FAISS encodes and appends to the lists
                add_preassigned(index, xb, assign(xb))
            bar.update(e - s)


# --------------------------------------------------------------------------------------------------
# choosing, saving, loading

def build_index(vectors: np.ndarray, kind: str = "auto", exact_max: int = EXACT_SEARCH_MAX,
                target_recall: float = 0.95, tuning_queries: Callable[[], np.ndarray] | None = None,
                biases: dict[str, np.ndarray] | None = None, **faiss_options: Any) -> SearchIndex:
    """Exact search at or below ``exact_max`` rows, a tuned FAISS index above; logs the choice.
    Above, "auto" still takes exact search when the tuned IVF index would read as many bytes per
    search as exact search's scan (it probes that large a share of its lists).

    ``kind``: auto | exact | faiss (IVF-Flat, or IVF-SQ8 above IVF_FLAT_MAX_BYTES of float32) |
    faiss-ivf | faiss-ivf-sq8 | faiss-hnsw. ``tuning_queries``: called only when a FAISS index is
    built, returns the (q, d) queries its recall is tuned and measured on (default: perturbed rows,
    ``recall_queries``). ``biases``: bank name -> (n,) querybank bias that ``search(..., bank=)``
    subtracts. ``faiss_options`` go to ``FaissIndex.build``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {KINDS}")
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    vectors = _check_vectors(vectors)
    n, d = vectors.shape
    chosen, why = kind, f"asked for {kind}"
    if kind == "auto":
        chosen = "exact" if n <= exact_max else "faiss"
        why = f"{n:,} rows {'<=' if n <= exact_max else '>'} exact_max={exact_max:,}"
    if chosen == "faiss":
        chosen = "faiss-ivf" if n * d * 4 <= IVF_FLAT_MAX_BYTES else "faiss-ivf-sq8"
    t0 = time.perf_counter()
    if chosen == "exact":
        index: SearchIndex = ExactIndex(vectors, biases=biases, _checked=True)
        index.build_seconds = time.perf_counter() - t0
    else:
        if tuning_queries is not None:
            faiss_options["queries"] = np.ascontiguousarray(tuning_queries(), dtype=np.float32)
        # "auto" may fall back to exact search below: the tuning's ExactIndex is then kept, not rebuilt
        exact = ExactIndex(vectors, biases=biases, _checked=True) if kind == "auto" else None
        index = FaissIndex.build(vectors, chosen, target_recall=target_recall, biases=biases, exact=exact,
                                 _checked=True, **faiss_options)
        if exact is not None and exact_scan_is_cheaper(index, vectors.dtype):
            # The tuned index reads at least the bytes of exact search's full scan (structureless
            # vectors, e.g. untrained heads, need most lists: 1M rows probed 2,048 of 4,000 lists in
            # 71 ms against exact's 33 ms; 10M rows all lists, 511 against 229 ms): exact is faster.
            log.info("%s reads %.0f bytes per row against %d for a full exact scan: exact search instead",
                     index.describe(), _ivf_bytes_per_row(index), _exact_bytes_per_row(vectors.dtype, d))
            why += f"; {chosen} would read as much as an exact scan"
            index = exact
            index.build_seconds = time.perf_counter() - t0
        del exact  # with FAISS kept, its int8 copy is freed here, not held beside it
    recall = "exact" if index.recall_at_10 is None else f"recall@10={index.recall_at_10:.3f}"
    log.info("search index: %s over %d x %d (%s); %s; built in %.1f s",
             index.describe(), n, d, why, recall, index.build_seconds)
    return index


def save_index(index: SearchIndex, directory: str | os.PathLike) -> Path:
    """Write the index into ``directory``: the data file first, then ``index.json`` (atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"format": FORMAT_VERSION, "kind": index.kind, "size": index.size,
                            "dim": index.dim, "recall_at_10": index.recall_at_10,
                            "build_seconds": round(index.build_seconds, 3), "params": index.params}
    if isinstance(index, ExactIndex):
        atomic_save_npy(directory / VECTORS_FILE, index.vectors)
        meta["file"] = VECTORS_FILE
        if index.biases:
            atomic_save_npy(directory / BIASES_FILE, np.stack([index.biases[b] for b in index.banks]))
            meta["banks"] = index.banks
    elif isinstance(index, FaissIndex):
        faiss = _import_faiss()
        # faiss writes by file name: a temporary name beside the target, fsync, then rename.
        fd, tmp = tempfile.mkstemp(prefix=f".{FAISS_FILE}.", suffix=".tmp", dir=directory)
        os.close(fd)
        try:
            faiss.write_index(index.index, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, directory / FAISS_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        meta["file"] = FAISS_FILE
    else:
        raise TypeError(f"cannot save a {type(index).__name__}")
    atomic_write_json(directory / META_FILE, meta)
    return directory


def load_index(directory: str | os.PathLike) -> SearchIndex:
    """Load what ``save_index`` wrote; a missing or inconsistent folder raises a clear error."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"no saved search index in {directory} ({META_FILE} missing)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: unsupported index format {meta.get('format')!r}")
    kind, size, dim = meta["kind"], int(meta["size"]), int(meta["dim"])
    data_path = directory / meta["file"]
    if not data_path.is_file():
        raise FileNotFoundError(f"{data_path} is missing (index.json names it)")
    if kind == "exact":
        vectors = np.load(data_path)
        biases = dict(zip(meta["banks"], np.load(directory / BIASES_FILE))) if meta.get("banks") else None
        index: SearchIndex = ExactIndex(vectors, build_seconds=meta["build_seconds"], biases=biases)
    else:
        faiss = _import_faiss()
        index = FaissIndex(faiss.read_index(str(data_path)), kind, size, dim, meta["recall_at_10"],
                           meta["build_seconds"], meta["params"])
        # + bias columns, + padding (indexes saved before the padding have none)
        if index.index.ntotal != size or index.index.d not in (dim + len(index.banks),
                                                               faiss_width(kind, dim, len(index.banks))):
            raise ValueError(f"{data_path} holds {index.index.ntotal} x {index.index.d} vectors, "
                             f"{META_FILE} says {size} x {dim} + {len(index.banks)} bias columns")
    if index.size != size or index.dim != dim:
        raise ValueError(f"{data_path} holds {index.size} x {index.dim} vectors, "
                         f"{META_FILE} says {size} x {dim}")
    return index
