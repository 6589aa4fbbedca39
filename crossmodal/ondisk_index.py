"""An IVF-PQ index for collections beyond memory, built in shards and served memory-mapped.

The steps, as autofaiss and clip-retrieval take them, on FAISS's own on-disk support:

1. ``train_index``: the coarse quantizer and the product quantizer, trained once on a sample
   (``faiss.index_factory("IVF{nlist},PQ{m}")``), saved empty as ``trained.index``.
2. ``fill_shard``: one shard's vectors encoded into a copy of the trained index, with their global
   row numbers as ids, saved as a shard file. Shards are independent: ``fill_shards`` runs them as
   Ray tasks (``ray_address``: ``local`` starts a cluster, ``auto`` joins one), or one after another.
3. ``add_part``: shard files merged into one part on disk (``faiss.contrib.ondisk.merge_ondisk``:
   ``part-N.index`` and its inverted lists ``part-N.ivfdata``). New shards make a new part; the
   parts already written are not touched, so an index grows without a rebuild.
4. ``open_index``: every part's inverted lists memory-mapped (FAISS's ``OnDiskInvertedLists`` map
   their ``.ivfdata`` file read-only) and stacked (``HStackInvertedLists``) under the trained
   quantizer: one IVF-PQ index whose codes stay on disk, paged in as queries touch them.

``index.json`` lists the parts in order, with their rows, and is written last: an interrupted step
leaves the index as it was, and a part file no manifest names is not served.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from crossmodal.atomic_io import atomic_write_json
from crossmodal.index import SearchIndex

log = logging.getLogger(__name__)

MANIFEST = "index.json"
TRAINED = "trained.index"
FORMAT = "crossmodal-ivfpq-ondisk/1"


def _faiss():
    import faiss

    return faiss


def _float32(vectors: Any) -> np.ndarray:
    vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if vectors.ndim != 2 or not len(vectors):
        raise ValueError(f"vectors must be a non-empty (n, d) array, got shape {vectors.shape}")
    return vectors


def _write_index(index: Any, path: Path) -> None:
    """``faiss.write_index`` through a temporary name, renamed into place (atomic)."""
    tmp = path.with_name(f".{path.name}.partial")
    _faiss().write_index(index, str(tmp))
    os.replace(tmp, path)


@dataclass(frozen=True)
class IndexInfo:
    """What ``index.json`` says of an on-disk index."""
    folder: Path
    dim: int
    nlist: int
    pq_bytes: int  # bytes of code per vector
    parts: tuple[dict, ...]  # {"index", "ivfdata", "rows", "shards"} per part, in order

    @property
    def rows(self) -> int:
        return sum(p["rows"] for p in self.parts)

    @property
    def kind(self) -> str:
        return f"IVF{self.nlist},PQ{self.pq_bytes} on disk ({len(self.parts)} part(s))"


def read_info(folder: str | os.PathLike) -> IndexInfo:
    """The manifest of the on-disk index in ``folder`` (ValueError naming the file when absent or not one)."""
    path = Path(folder) / MANIFEST
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
        if m.get("format") != FORMAT:
            raise ValueError(f"format {m.get('format')!r}")
        return IndexInfo(Path(folder), int(m["dim"]), int(m["nlist"]), int(m["pq_bytes"]), tuple(m["parts"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not an on-disk index manifest ({type(err).__name__}: {err}); "
                         "build one with crossmodal.ondisk_index.train_index") from None


def _write_info(info: IndexInfo) -> None:
    atomic_write_json(info.folder / MANIFEST, {"format": FORMAT, "dim": info.dim, "nlist": info.nlist,
                                               "pq_bytes": info.pq_bytes, "rows": info.rows,
                                               "parts": list(info.parts)})


def train_index(sample: Any, folder: str | os.PathLike, nlist: int, pq_bytes: int) -> IndexInfo:
    """Train the quantizers on ``sample`` (rows like the collection's; FAISS wants 39 or more per
    list) and start an empty on-disk index in ``folder``. Inner product: rows are unit vectors."""
    faiss = _faiss()
    sample = _float32(sample)
    dim = sample.shape[1]
    if dim % pq_bytes:
        raise ValueError(f"PQ{pq_bytes} needs a dimension divisible by {pq_bytes}, got {dim}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index = faiss.index_factory(dim, f"IVF{nlist},PQ{pq_bytes}", faiss.METRIC_INNER_PRODUCT)
    # Polysemous codes (FAISS's default for IVF-PQ) serve a Hamming-distance filter never used here,
    # and their training took most of the build's training time.
    faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
    index.train(sample)
    _write_index(index, folder / TRAINED)
    info = IndexInfo(folder, dim, nlist, pq_bytes, ())
    _write_info(info)
    log.info("trained IVF%d,PQ%d on %d rows in %s", nlist, pq_bytes, len(sample), folder)
    return info


def fill_shard(trained: str | os.PathLike, vectors: Any, first_id: int, out: str | os.PathLike) -> str:
    """Encode ``vectors`` into a copy of the trained index, ids ``first_id`` on, and save it as ``out``
    (a shard file for ``add_part``). Runs anywhere the trained index can be read: a Ray task too."""
    faiss = _faiss()
    vectors = _float32(vectors)
    index = faiss.read_index(str(trained))
    index.add_with_ids(vectors, np.arange(first_id, first_id + len(vectors), dtype=np.int64))
    _write_index(index, Path(out))
    return str(out)


def fill_shards(folder: str | os.PathLike, shards: Sequence[tuple[Any, int]], names: Sequence[str],
                ray_address: str | None = None) -> list[str]:
    """``fill_shard`` for each (vectors, first id) into ``folder``/name: as Ray tasks when
    ``ray_address`` is given (``local``: a cluster of this machine's cores; ``auto``: the running
    one), else one after another. Vectors may be arrays or ``.npy`` paths (read memory-mapped
    where the task runs: what a shared filesystem lets every node do)."""
    folder = Path(folder)
    outs = [str(folder / name) for name in names]
    trained = str(folder / TRAINED)
    if ray_address is None:
        return [fill_shard(trained, _load(v), first, out) for (v, first), out in zip(shards, outs)]
    import ray

    from crossmodal.ray_cluster import connect

    connect(ray_address)
    task = ray.remote(_fill_task)
    return ray.get([task.remote(trained, v, first, out) for (v, first), out in zip(shards, outs)])


def _load(vectors: Any) -> np.ndarray:
    return np.load(vectors, mmap_mode="r") if isinstance(vectors, (str, os.PathLike)) else np.asarray(vectors)


def _fill_task(trained: str, vectors: Any, first_id: int, out: str) -> str:
    return fill_shard(trained, _load(vectors), first_id, out)


def add_part(folder: str | os.PathLike, shard_files: Sequence[str | os.PathLike]) -> IndexInfo:
    """Merge shard files into a new part of the index in ``folder``; the parts before it stay as they
    are. The manifest names the part once its files are complete."""
    faiss = _faiss()
    from faiss.contrib.ondisk import merge_ondisk

    info = read_info(folder)
    name = f"part-{len(info.parts) + 1}"  # parts are only ever added
    ivfdata = info.folder / f"{name}.ivfdata"
    ivfdata.unlink(missing_ok=True)  # the leftovers of an interrupted merge
    index = faiss.read_index(str(info.folder / TRAINED))
    merge_ondisk(index, [str(f) for f in shard_files], str(ivfdata))
    rows = int(index.ntotal)
    _write_index(index, info.folder / f"{name}.index")
    part = {"index": f"{name}.index", "ivfdata": ivfdata.name, "rows": rows,
            "shards": [Path(f).name for f in shard_files]}
    info = IndexInfo(info.folder, info.dim, info.nlist, info.pq_bytes, (*info.parts, part))
    _write_info(info)
    log.info("added %s: %d rows from %d shard(s); the index holds %d rows", name, rows, len(shard_files), info.rows)
    return info


@dataclass
class OnDiskIndex:
    """The parts of an on-disk index served as one IVF-PQ index, codes memory-mapped."""
    info: IndexInfo
    index: Any  # faiss.IndexIVFPQ over the stacked inverted lists
    _parts: list  # the parts' indexes: they own the mapped inverted lists the stack reads

    @property
    def nprobe(self) -> int:
        return int(self.index.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.index.nprobe = int(value)

    def search(self, queries: Any, k: int, vectors: Any = None, candidates: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row ids) of the ``k`` best rows for each query (-1 where fewer were found). With
        ``vectors`` (every row's vector by id, e.g. a memory-mapped float16 ``.npy``), the best
        ``candidates`` by their PQ codes are scored again exactly and the best ``k`` of them kept:
        PQ codes rank coarsely, and reading a few hundred rows per query restores the order."""
        queries = _float32(queries)
        if vectors is None:
            return self.index.search(queries, k)
        return rerank(queries, self.index.search(queries, max(k, candidates))[1], vectors, k)


def rerank(queries: np.ndarray, ids: np.ndarray, vectors: Any, k: int, bias: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the ``k`` best of each query's candidate ``ids`` (-1: none) by exact inner
    product with their rows of ``vectors``, minus ``bias`` of the row where given."""
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best = np.full((len(queries), k), -1, dtype=np.int64)
    for i, (q, row) in enumerate(zip(queries, ids)):
        row = np.sort(row[row >= 0])  # ascending: memory-mapped rows are read in file order
        exact = np.asarray(vectors[row], dtype=np.float32) @ q
        if bias is not None:
            exact -= bias[row]
        order = np.argsort(-exact, kind="stable")[:k]
        scores[i, :len(order)], best[i, :len(order)] = exact[order], row[order]
    return scores, best


def open_index(folder: str | os.PathLike, nprobe: int = 32) -> OnDiskIndex:
    """The index in ``folder`` as its manifest lists it, every part's inverted lists memory-mapped."""
    faiss = _faiss()
    info = read_info(folder)
    if not info.parts:
        raise ValueError(f"{info.folder}: the index has no parts yet; add shards with add_part")
    # OnDiskInvertedLists map their .ivfdata file read-only themselves (IO_FLAG_MMAP on top of them
    # crashes FAISS 1.15's search); SAME_DIR finds that file beside the part, wherever the folder moved
    parts = [faiss.read_index(str(info.folder / p["index"]), faiss.IO_FLAG_ONDISK_SAME_DIR) for p in info.parts]
    index = faiss.read_index(str(info.folder / TRAINED))
    lists = [faiss.extract_index_ivf(p).invlists for p in parts]
    if len(lists) == 1:
        stacked = lists[0]
    else:
        vector = faiss.InvertedListsPtrVector()
        for il in lists:
            vector.push_back(il)
        stacked = faiss.HStackInvertedLists(len(lists), vector.data())
    ivf = faiss.extract_index_ivf(index)
    ivf.replace_invlists(stacked, len(lists) > 1)
    if len(lists) > 1:
        stacked.this.disown()  # owned by the index now
    index.ntotal = ivf.ntotal = info.rows
    ivf.nprobe = nprobe
    return OnDiskIndex(info, index, parts)


# --------------------------------------------------------------------------------------------------
# a collection's index: built by build_index.py, served by the engine

SERVED = "served.json"  # what the index was built from, and how it is searched (written last)
TARGET_RECALL = 0.95
# Tried in this order, fewest candidates first: the rows re-ranked exactly from their float16
# vectors per query (PQ codes rank coarsely: in a dense collection the true top 10 sit among the
# first thousand by code), and the inverted lists probed.
CANDIDATE_STEPS = (100, 300, 1000, 3000)
NPROBE_STEPS = (8, 16, 32, 64, 128, 256)
SHARD_ROWS = 1_000_000  # rows per shard filled by one task


def fingerprint(vectors: Any, rows: int) -> str:
    """A short identity of the first ``rows`` vectors: 256 rows spread over them, hashed."""
    import hashlib

    picks = np.unique(np.linspace(0, max(rows - 1, 0), 256).astype(np.int64)) if rows else np.zeros(0, np.int64)
    return hashlib.sha256(np.ascontiguousarray(np.asarray(vectors[picks], np.float16)).tobytes()).hexdigest()[:16]


def exact_top(vectors: Any, queries: np.ndarray, k: int = 10, block: int = 1 << 18) -> np.ndarray:
    """The exact ``k`` best rows per query by inner product, reading ``vectors`` in blocks."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(vectors), block):
        s = queries @ np.asarray(vectors[start:start + block], np.float32).T
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        best_i = np.concatenate([best_i, top + start], axis=1)
        keep = np.argsort(-best_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def read_served(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / SERVED
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def build_collection_index(folder: str | os.PathLike, vectors: Any, queries: np.ndarray, identity: dict, *,
                           nlist: int | None = None, pq_bytes: int = 32, shard_rows: int = SHARD_ROWS,
                           ray_address: str | None = None, force: bool = False, seed: int = 0) -> dict:
    """Index the (n, dim) unit ``vectors`` of a collection (memory-mapped float16) in ``folder``:
    trained once, then only the rows beyond those indexed are added (a new part), so a grown
    collection is indexed without a rebuild. The rows re-ranked per query and ``nprobe`` are tuned on
    ``queries``: the first pair of ``CANDIDATE_STEPS`` x ``NPROBE_STEPS`` reaching ``TARGET_RECALL``
    recall@10 against exact search (else the best pair), and the measured recall kept. ``identity``
    (checkpoint, collection) must match an existing index's, and its rows must be the first rows of
    ``vectors``. Returns what ``served.json`` holds."""
    import shutil

    folder = Path(folder)
    n, dim = vectors.shape
    served = read_served(folder)
    if (folder / MANIFEST).is_file():
        info = read_info(folder)
        same = (served is not None and served.get("identity") == identity and info.rows <= n
                and served.get("fingerprint") == fingerprint(vectors, info.rows))
        if force or not same:
            if not force:
                raise ValueError(f"{folder} holds an index of other vectors (another checkpoint or collection, or "
                                 "photos that changed); pass --force to build it again")
            shutil.rmtree(folder)
    if not (folder / MANIFEST).is_file():
        nlist = nlist or max(16, min(65536, 2 ** int(round(np.log2(4 * np.sqrt(n))))))
        rng = np.random.default_rng(seed)
        sample = np.asarray(vectors[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))], np.float32)
        log.info("training IVF%d,PQ%d on %d of %d vectors", nlist, pq_bytes, len(sample), n)
        train_index(sample, folder, nlist, pq_bytes)
    info = read_info(folder)
    if info.rows < n:
        bounds = list(range(info.rows, n, shard_rows)) + [n]
        shards = [(vectors[a:b], a) for a, b in zip(bounds[:-1], bounds[1:])]
        names = [f"shard-{a}-{b}.index" for a, b in zip(bounds[:-1], bounds[1:])]
        files = fill_shards(folder, shards, names, ray_address)
        info = add_part(folder, files)
        for f in files:
            Path(f).unlink(missing_ok=True)
    index = open_index(folder)
    truth = exact_top(vectors, queries)
    steps = [s for s in NPROBE_STEPS if s < info.nlist]
    steps += [info.nlist] if info.nlist <= NPROBE_STEPS[-1] else []  # nprobe = nlist: every list
    best = (-1.0, 0, 0)  # recall, -candidates, -nprobe: the best recall, then the cheapest
    for candidates in CANDIDATE_STEPS:
        for step in steps:
            index.nprobe = step
            found = index.search(queries, 10, vectors, candidates)[1]
            recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
            best = max(best, (recall, -candidates, -step))
            if recall >= TARGET_RECALL:
                break
        if best[0] >= TARGET_RECALL:
            break
    recall, candidates, nprobe = best[0], -best[1], -best[2]
    served = {"identity": identity, "rows": info.rows, "fingerprint": fingerprint(vectors, info.rows),
              "nprobe": nprobe, "candidates": candidates, "recall_at_10": recall, "queries": len(queries),
              "kind": f"IVF{info.nlist},PQ{info.pq_bytes} on disk"}
    atomic_write_json(folder / SERVED, served)
    log.info("%s: %d rows, nprobe %d, recall@10 %.3f on %d queries", folder, info.rows, nprobe, recall, len(queries))
    return served


def served_index(folder: str | os.PathLike, vectors: Any, biases: dict[str, np.ndarray], identity: dict) -> Any:
    """The collection index in ``folder`` as the engine's ``SearchIndex``, refused (ValueError, naming
    the command that builds it) unless it was built from these vectors for this ``identity``."""
    served = read_served(folder)
    hint = "build it with: python build_index.py --index " + str(folder)
    if served is None or not (Path(folder) / MANIFEST).is_file():
        raise ValueError(f"no finished index in {folder}; {hint}")
    if served["identity"] != identity:
        raise ValueError(f"the index in {folder} was built for another checkpoint or collection "
                         f"({served['identity']}); {hint} --force")
    if served["rows"] > len(vectors) or served["fingerprint"] != fingerprint(vectors, served["rows"]):
        raise ValueError(f"the index in {folder} holds other photos than the collection now has; {hint} --force")
    if served["rows"] < len(vectors):
        log.warning("%d of %d photos are not in the index in %s yet; add them with: python build_index.py "
                    "--index %s", len(vectors) - served["rows"], len(vectors), folder, folder)
    return ServedIndex(open_index(folder, served["nprobe"]), vectors, biases, served)


class ServedIndex(SearchIndex):
    """An on-disk IVF-PQ index as the engine's ``SearchIndex``: the ``candidates`` best rows by PQ codes
    are scored again exactly from the collection's float16 vectors, minus the query's querybank bias,
    and the best ``k`` kept. ``recall_at_10`` is the one measured when it was built."""

    def __init__(self, ondisk: OnDiskIndex, vectors: Any, biases: dict[str, np.ndarray], served: dict):
        super().__init__(ondisk.info.rows, ondisk.info.dim, served["recall_at_10"], 0.0,
                         {"nprobe": served["nprobe"], "candidates": served["candidates"]}, banks=list(biases))
        self.kind = served["kind"]
        self.ondisk, self.vectors, self.biases = ondisk, vectors, biases
        self.candidates = int(served["candidates"])

    def _search(self, queries: np.ndarray, k: int, bank: str | None) -> tuple[np.ndarray, np.ndarray]:
        _, ids = self.ondisk.index.search(queries, max(k, self.candidates))
        return rerank(queries, ids, self.vectors, k, self.biases[bank] if bank is not None else None)
