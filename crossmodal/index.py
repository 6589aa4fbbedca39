"""Top-k inner-product search over the image embedding matrix: exact, or a FAISS IVF index.

Images and text queries live in one L2-normalised space, so the best images for a query are the
rows with the largest inner product. Two kinds of index answer that:

* ``ExactIndex``: FAISS ``IndexFlatIP``, the query's float32 inner product with every row.
* ``FaissIndex``: a FAISS IVF index (IVF-Flat, or IVF-SQ8 for large collections) made by
  ``faiss.index_factory`` and trained by FAISS, for collections above ``EXACT_SEARCH_MAX``.
  Its ``nprobe`` is tuned at build time: the smallest value whose recall@10 against exact search
  reaches the target, and the measured recall is kept.

``build_index`` chooses between them by size and logs the choice. Both are built in memory when
a collection is served; building takes seconds below ``EXACT_SEARCH_MAX`` rows.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

EXACT_SEARCH_MAX = 200_000  # above this many images "auto" builds a FAISS index
KINDS = ("auto", "exact", "faiss", "faiss-ivf", "faiss-ivf-sq8")
FAISS_KINDS = ("faiss-ivf", "faiss-ivf-sq8")
FACTORY = {"faiss-ivf": "IVF{nlist},Flat", "faiss-ivf-sq8": "IVF{nlist},SQ8"}  # faiss.index_factory strings

RECALL_QUERIES = 200  # sampled rows used to measure recall@10 at build time
RECALL_K = 10
QUERY_NOISE = 0.7  # noise norm added to a sampled row (cosine to it ~0.82); see recall_queries
# Above this many bytes of float32 vectors, "faiss" picks IVF-SQ8 (1 byte a dimension) over
# IVF-Flat (4 bytes), so that the index fits in memory beside everything else.
IVF_FLAT_MAX_BYTES = 4 << 30
MAX_NLIST = 4096  # assigning n vectors costs n * nlist * d multiply-adds: keeps builds in minutes
TRAIN_PER_LIST = 64  # k-means training points per list (FAISS warns below 39 and samples down above 256)
ADD_ROWS = 1 << 17  # rows converted to float32 and added to FAISS at a time (bounds the copy)

NPROBE_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
                1536, 2048, 3072, 4096)


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
    """(q, dim) finite, C-contiguous, writable float32 queries (torch wraps them without a copy)."""
    usual = (type(queries) is np.ndarray and queries.dtype == np.float32 and queries.ndim == 2
             and queries.shape[1] == dim and queries.flags.c_contiguous and queries.flags.writeable)
    if not usual:  # (a query's usual form skips these numpy calls: each costs time after a forward pass)
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
        queries = np.require(queries, np.float32, ["C", "W"])
    if not np.isfinite(queries).all():
        raise ValueError("queries contain NaN or infinity")
    return queries


def _check_biases(biases: dict[str, Any] | None, size: int) -> dict[str, np.ndarray]:
    """bank name -> (size,) finite float32 querybank bias (``querybank.py``)."""
    out = {}
    for bank, bias in (biases or {}).items():
        bias = np.array(bias, dtype=np.float32)  # a private, writable copy
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
        normalisation, ``querybank.py``) and returns those scores.
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

class ExactIndex(SearchIndex):
    """Exact top-k: FAISS ``IndexFlatIP``, one float32 inner product with every stored row.

    With querybank biases each row is held as [x, -b_1(x), ..., -b_m(x)] and a query searching
    bank j as [q, e_j] (a plain query: [q, 0]), so the scan itself scores q·x - b_j(x). The index
    holds a float32 copy of the rows (4 bytes a value): exact search is meant for collections up
    to ``EXACT_SEARCH_MAX`` rows. Tied scores come back in FAISS's order.
    """

    kind = "exact"

    def __init__(self, vectors: np.ndarray, build_seconds: float = 0.0, *,
                 biases: dict[str, np.ndarray] | None = None, _checked: bool = False):
        vectors = _check_vectors(vectors, finite=not _checked)  # (a 10M-row check takes seconds)
        self.biases = _check_biases(biases, len(vectors))  # bank -> (n,) bias, subtracted exactly
        super().__init__(len(vectors), vectors.shape[1], None, build_seconds, {}, banks=list(self.biases))
        extra = np.stack([-self.biases[b] for b in self.banks], axis=1) if self.banks else None
        width = self.dim + len(self.banks)
        self.index = _faiss().IndexFlatIP(width)
        for start in range(0, self.size, ADD_ROWS):  # float32 copies a block at a time
            rows = slice(start, min(start + ADD_ROWS, self.size))
            self.index.add(_with_columns(vectors[rows], extra, rows, width))

    def _search(self, queries: np.ndarray, k: int, bank: str | None) -> tuple[np.ndarray, np.ndarray]:
        _faiss(torch.get_num_threads())  # as many threads as torch: one per query in the app
        return self.index.search(_bank_columns(queries, self.index.d, self.banks, bank), k)


def _bank_columns(queries: np.ndarray, width: int, banks: Sequence[str], bank: str | None) -> np.ndarray:
    """Queries as an index holding ``width`` columns stores vectors: a 1 in the searched bank's
    column (none: plain cosine), zeros in the other bias and padding columns."""
    if width == queries.shape[1]:
        return queries
    extra = np.zeros((len(queries), width - queries.shape[1]), np.float32)
    if bank is not None:
        extra[:, list(banks).index(bank)] = 1.0
    return np.ascontiguousarray(np.hstack([queries, extra]))


# --------------------------------------------------------------------------------------------------
# FAISS

def _faiss(threads: int | None = None):
    """The faiss module, with its OpenMP threads set to ``threads`` where given."""
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a listed dependency
        raise ImportError("an approximate index needs faiss: pip install faiss-cpu") from e
    if threads is not None:
        faiss.omp_set_num_threads(max(1, threads))
    return faiss


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_nlist(n: int) -> int:
    """~4 sqrt(n) inverted lists (FAISS's usual guide), at least 1, at most MAX_NLIST and n/39."""
    return int(max(1, min(round(4 * math.sqrt(n)), MAX_NLIST, n // 39 or 1)))


def recall_queries(vectors: np.ndarray, n_queries: int = RECALL_QUERIES, noise: float = QUERY_NOISE,
                   seed: int = 0) -> np.ndarray:
    """Seeded queries for measuring recall: sampled rows plus noise of norm ~``noise``, normalised.

    A query that is (nearly) a stored row is easy for an ANN index: its own row is a free hit.
    On clustered data (bench/bench_search.py) little noise overstated recall compared with fresh
    queries from the same distribution; the default errs on the side of understating it.
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


def faiss_width(kind: str, dim: int, n_banks: int) -> int:
    """Columns a FAISS index of ``dim``-d vectors holds: the vector, one per querybank, and for
    IVF-SQ8 zero columns up to a multiple of 16, because FAISS's 8-bit scalar-quantiser kernels are
    SIMD only over whole 16-value blocks (a querybank column on 256-d vectors would otherwise take
    the slow scalar path)."""
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


class FaissIndex(SearchIndex):
    """A FAISS IVF inner-product index with its tuned ``nprobe``.

    With querybank biases, FAISS holds each vector x as [x, -(b_1(x) - c_1), ..., -(b_m(x) - c_m)]
    (c_j: bank j's mean bias, so the extra coordinates stay small) and a query q searching bank j
    as [q, e_j]: the inner product is the normalised score q·x - b_j(x) + c_j, so the index finds
    the best rows by that score itself instead of re-ranking candidates found by plain cosine
    (which misses rows that only the bias brings up). ``params["banks"]`` and
    ``params["bias_offsets"]`` record the columns.
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
        return _bank_columns(queries, self.index.d, self.banks, bank)

    def apply_params(self) -> None:
        _faiss().extract_index_ivf(self.index).nprobe = int(self.params["nprobe"])

    def _raw_search(self, queries: np.ndarray, k: int, nprobe: int | None = None):
        if nprobe is None:
            return self.index.search(queries, k)
        # Search parameters per call leave the shared index untouched (safe for concurrent use).
        return self.index.search(queries, k, params=_faiss().SearchParametersIVF(nprobe=int(nprobe)))

    def _search(self, queries: np.ndarray, k: int, bank: str | None) -> tuple[np.ndarray, np.ndarray]:
        # FAISS on as many threads as torch: the app serves queries on one, so FAISS's OpenMP
        # threads do not compete with the text encoder for the same cores
        _faiss(torch.get_num_threads())
        queries = self._augment(queries, bank)
        scores, rows = self._raw_search(queries, k)
        missing = np.flatnonzero((rows < 0).any(axis=1))
        nprobe, nlist = int(self.params["nprobe"]), int(self.params["nlist"])
        # Too few vectors in the probed lists for k results: widen the search for those queries
        # until every row is filled (nprobe = nlist visits every vector).
        while len(missing) and nprobe < nlist:
            nprobe = min(nlist, nprobe * 4)
            s2, r2 = self._raw_search(queries[missing], k, nprobe)
            scores[missing], rows[missing] = s2, r2
            missing = missing[(r2 < 0).any(axis=1)]
        if len(missing):  # pragma: no cover - only a corrupt index gets here
            raise RuntimeError(f"{self.kind} returned fewer than k={k} results")
        if bank is not None:  # the index's score is q·x - (b(x) - c): report q·x - b(x), as exact search does
            scores = scores - self.params["bias_offsets"][self.banks.index(bank)]
        return scores, rows

    @classmethod
    def build(cls, vectors: np.ndarray, kind: str = "faiss-ivf", target_recall: float = 0.95,
              nlist: int | None = None, seed: int = 0, queries: np.ndarray | None = None,
              biases: dict[str, np.ndarray] | None = None, _checked: bool = False) -> FaissIndex:
        """Train and fill the index, then tune ``nprobe`` upward until recall@10 >= ``target_recall``.

        ``queries``: (q, d) queries to measure recall on against ``ExactIndex`` (by default
        ``recall_queries`` of the data); with ``biases`` (bank -> (n,) querybank bias) each query
        is measured with every bank, as text queries are searched.
        """
        if kind not in FAISS_KINDS:
            raise ValueError(f"unknown FAISS index kind {kind!r}; expected one of {FAISS_KINDS}")
        faiss = _faiss(_usable_cores())  # training, adding and tuning parallelise well: every core
        vectors = _check_vectors(vectors, finite=not _checked)
        n, d = vectors.shape
        biases = _check_biases(biases, n)
        banks = list(biases)
        offsets = [float(np.mean(biases[b], dtype=np.float64)) for b in banks]
        extra = (np.stack([offsets[j] - biases[b] for j, b in enumerate(banks)], axis=1).astype(np.float32)
                 if banks else None)  # the bias coordinates of every row (n x banks)
        width = faiss_width(kind, d, len(banks))
        nlist = int(nlist or default_nlist(n))
        if not 1 <= nlist <= n:
            raise ValueError(f"nlist must be in [1, {n}], got {nlist}")

        t0 = time.perf_counter()
        index = faiss.index_factory(width, FACTORY[kind].format(nlist=nlist), faiss.METRIC_INNER_PRODUCT)
        faiss.extract_index_ivf(index).cp.seed = seed  # FAISS's k-means (spherical for inner product)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, min(n, TRAIN_PER_LIST * nlist), replace=False))
        index.train(_with_columns(vectors[sample], extra, sample, width))
        for start in range(0, n, ADD_ROWS):  # float32 copies a block at a time (float16 input stays so)
            rows = slice(start, min(start + ADD_ROWS, n))
            index.add(_with_columns(vectors[rows], extra, rows, width))
        params: dict[str, Any] = {"nlist": nlist, "nprobe": 1}
        if banks:
            params.update(banks=banks, bias_offsets=offsets)
        self = cls(index, kind, n, d, None, 0.0, params)

        if queries is None:
            queries = recall_queries(vectors, seed=seed)
        queries = _check_queries(queries, d)
        exact = ExactIndex(vectors, biases=biases, _checked=True)
        truth = np.concatenate([exact.search(queries, min(RECALL_K, n), b)[1] for b in banks or [None]])
        queries = np.concatenate([self._augment(queries, b) for b in banks or [None]])
        # The smallest nprobe (fastest search) whose measured recall reaches the target; if none
        # does (e.g. SQ8's quantisation ceiling), the best one seen, with a warning.
        best = (-1.0, 1)
        for nprobe in [s for s in NPROBE_STEPS if s < nlist] + [nlist]:
            recall = recall_at(self._raw_search(queries, truth.shape[1], nprobe)[1], truth)
            log.debug("%s nprobe=%d recall@10=%.4f", kind, nprobe, recall)
            if recall > best[0] + 1e-9 or recall >= target_recall:
                best = (recall, nprobe)
            if recall >= target_recall:
                break
        else:
            log.warning("%s reached recall@10 %.3f at most (nprobe=%d), below the target %.3f",
                        kind, best[0], best[1], target_recall)
        self.recall_at_10 = round(best[0], 4)
        self.params["nprobe"] = best[1]
        self.apply_params()
        self.build_seconds = time.perf_counter() - t0
        return self


# --------------------------------------------------------------------------------------------------
# choosing

def build_index(vectors: np.ndarray, kind: str = "auto", exact_max: int = EXACT_SEARCH_MAX,
                target_recall: float = 0.95, tuning_queries: Callable[[], np.ndarray] | None = None,
                biases: dict[str, np.ndarray] | None = None, **faiss_options: Any) -> SearchIndex:
    """Exact search at or below ``exact_max`` rows, a tuned FAISS index above; logs the choice.

    ``kind``: auto | exact | faiss (IVF-Flat, or IVF-SQ8 above IVF_FLAT_MAX_BYTES of float32) |
    faiss-ivf | faiss-ivf-sq8. ``tuning_queries``: called only when a FAISS index is built, returns
    the (q, d) queries its recall is tuned and measured on (default: perturbed rows,
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
    if chosen == "exact":
        index: SearchIndex = ExactIndex(vectors, biases=biases, _checked=True)
    else:
        if tuning_queries is not None:
            faiss_options["queries"] = np.ascontiguousarray(tuning_queries(), dtype=np.float32)
        index = FaissIndex.build(vectors, chosen, target_recall=target_recall, biases=biases, _checked=True,
                                 **faiss_options)
    recall = "exact" if index.recall_at_10 is None else f"recall@10={index.recall_at_10:.3f}"
    log.info("search index: %s over %d x %d (%s); %s; built in %.1f s",
             index.describe(), n, d, why, recall, index.build_seconds)
    return index
