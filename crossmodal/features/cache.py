"""On-disk feature caches: one float16 matrix, its row ids, and a manifest of what produced it.

Layout of a cache folder::

    features.npy    float16 (rows, dim), loadable with mmap_mode="r"
    ids.txt         one row id per line (image name, or caption key "img.jpg#n")
    manifest.json   backbone, weights identity, preprocessing, dim, dtype, rows, ids hash, failures
    .partial/       while building: the resumable work (``crossmodal.resumable``): plan.json and
                    chunks of finished units
    .next/          while replacing a finished cache: the new files, moved in manifest last

A *sharded* cache (``crossmodal.features.on_ray``: written by many workers at once) holds shards
``shard-00000/``, ``shard-00001/``, ... each a cache of the layout above with its own manifest, and a
top ``ids.txt`` and ``manifest.json`` listing the shards in row order, written last. ``load_cache``
reads it as one cache: its ``features`` are ``ShardedRows``, the shards' files memory-mapped and
indexed as one matrix.

A build computes its rows in fixed units (one batch) and saves finished units in chunks, by time
and by rows, so a killed run resumes at the first missing unit and the assembled file is
byte-identical to an uninterrupted run. The manifest is written last: a folder without one holds no
usable cache. A build refuses to start when the disk cannot hold what it will write.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from crossmodal.atomic_io import atomic_save_npy, atomic_write_json, atomic_write_text, check_free_space
from crossmodal.captions import list_hash
from crossmodal.features.rows import RowIds, ShardedRows
from crossmodal.resumable import ChunkWriter, WorkFolder, flush_interval

log = logging.getLogger(__name__)

FEATURES_FILE = "features.npy"
IDS_FILE = "ids.txt"
MANIFEST_FILE = "manifest.json"
PARTIAL_DIR = ".partial"
NEXT_DIR = ".next"
FORMAT_VERSION = 1
PLAN_VERSION = 2  # 2: units saved in chunks by time (1: fixed chunks)
LOAD_ATTEMPTS = 40  # a reader that meets a cache being replaced waits up to 40 x LOAD_WAIT_S
LOAD_WAIT_S = 0.05

# compute(pending units' row indices, progress) yields, unit by unit in that order,
# (float array (len(rows), dim), failures [(row id, reason)]). One call for all pending units
# lets an extractor keep one DataLoader (and its workers) alive. The array may be a torch tensor
# (on a GPU it stays there until its chunk is saved: no synchronisation every batch).
ComputeUnits = Callable[[list[np.ndarray], Callable[[int], Any]],
                        Iterator[tuple[Any, list[tuple[str, str]]]]]


class StaleCacheError(RuntimeError):
    """Cached features that are missing or were made by something else than what is asked for."""


@dataclass
class FeatureCache:
    directory: Path
    features: np.ndarray  # (rows, dim) float16, memory-mapped
    ids: Sequence[str]  # a RowIds when loaded
    manifest: dict

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def pooled_dim(self) -> int:
        """The size of one image's vector: a views cache's rows hold V views."""
        return self.dim // len(self.manifest.get("views") or (None,))

    @property
    def failed_ids(self) -> set[str]:
        return {f["id"] for f in self.manifest.get("failures", [])}

    def valid_mask(self) -> np.ndarray:
        """Rows whose input could be read (failed rows hold zeros)."""
        failed = self.failed_ids
        if not failed:
            return np.ones(len(self.ids), dtype=bool)
        return np.array([i not in failed for i in self.ids], dtype=bool)


def read_manifest(directory: str | os.PathLike) -> dict | None:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def identity_mismatch(manifest: dict, expected: dict) -> list[str]:
    """Fields of ``expected`` that the manifest does not match, as readable strings."""
    return [
        f"{k}: cache has {manifest.get(k)!r}, expected {v!r}"
        for k, v in expected.items()
        if manifest.get(k) != v
    ]


def _to_numpy(x: Any) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else x.cpu().numpy()  # a torch tensor, maybe on a GPU


def cache_bytes(rows: int, dim: int, ids: Sequence[str] = ()) -> int:
    """About the bytes a finished cache of ``rows`` x ``dim`` takes on disk."""
    return rows * dim * 2 + sum(len(i.encode()) + 1 for i in ids) + 4096


def build_cache(
    directory: str | os.PathLike,
    ids: Sequence[str],
    identity: dict,
    compute: ComputeUnits,
    *,
    unit_size: int,
    chunk_size: int,
    order: np.ndarray | None = None,
    force: bool = False,
    desc: str = "features",
    unit: str = "it",
    extra: dict | None = None,
    flush_seconds: float | None = None,
) -> FeatureCache:
    """Build (or resume, or reuse) the cache in ``directory``.

    ``identity`` holds kind, backbone, weights, preprocess and dim; the ids hash, row count and
    dtype are added here. ``order`` is a permutation of rows giving the computation order (text
    is computed sorted by length); rows are always stored in ``ids`` order. Rows are computed in
    units of ``unit_size`` rows of that order (part of the plan a resumed build must share); a
    chunk of whole units is saved every ``flush_seconds`` (default ``resumable.FLUSH_SECONDS``)
    or ``chunk_size`` rows, neither of which changes the result.
    """
    directory = Path(directory)
    ids = list(ids)
    identity = full_identity(identity, ids)
    finish_write(directory)  # a replacement killed halfway is completed first
    finished = reuse_finished(directory, identity, force)
    if finished is not None:
        return finished

    order = np.arange(len(ids)) if order is None else np.asarray(order)
    if sorted(order.tolist()) != list(range(len(ids))):
        raise ValueError("order must be a permutation of the rows")
    if unit_size < 1:
        raise ValueError(f"unit_size must be at least 1, got {unit_size}")
    plan = {**identity, "unit_size": unit_size, "order_sha256": list_hash(map(str, order.tolist())),
            "format": PLAN_VERSION}
    work = WorkFolder(directory / PARTIAL_DIR, plan, force=force)
    n_units = (len(ids) + unit_size - 1) // unit_size
    unit_rows = [order[u * unit_size : (u + 1) * unit_size] for u in range(n_units)]
    done = work.done_units()
    pending = [u for u in range(n_units) if u not in done]
    done_rows = len(ids) - sum(len(unit_rows[u]) for u in pending)
    if done:
        log.info("resuming %s: %d of %d rows already done", directory, done_rows, len(ids))
    # what is left to write: the pending chunks, then the assembled cache beside them
    left = (len(ids) - done_rows) * identity["dim"] * 2 + cache_bytes(len(ids), identity["dim"], ids)
    check_free_space(directory, left, f"the {desc} cache")

    def save(start: int, stop: int, items: list) -> None:
        feats = np.concatenate([_to_numpy(f) for f, _ in items]).astype(np.float16)
        failures = [{"id": i, "reason": r} for _, fails in items for i, r in fails]
        work.save(start, stop, {"failures": failures}, feats)

    start = time.perf_counter()
    writer = ChunkWriter(save, chunk_size, flush_interval(flush_seconds))
    with tqdm(total=len(ids), initial=done_rows, desc=desc, unit=unit, dynamic_ncols=True) as bar:
        results = compute([unit_rows[u] for u in pending], bar.update)
        for u, (feats, failures) in zip(pending, results):
            expected = (len(unit_rows[u]), identity["dim"])
            if tuple(feats.shape) != expected:
                raise RuntimeError(f"unit {u}: got shape {tuple(feats.shape)}, expected {expected}")
            writer.add(u, (feats, failures), len(unit_rows[u]))
        writer.flush()
    elapsed = time.perf_counter() - start
    computed = len(ids) - done_rows
    if computed:
        log.info("%s: %d rows in %.1f s (%.1f %s/s)", desc, computed, elapsed, computed / max(elapsed, 1e-9), unit)

    # Assemble the chunks in ids order.
    chunks = work.chunks()
    missing = n_units - len({u for c in chunks for u in c.units})
    if missing:
        raise RuntimeError(f"{directory}: {missing} units were not computed")
    failures: list[dict] = []
    out = np.zeros((len(ids), identity["dim"]), dtype=np.float16)
    for chunk in chunks:
        out[np.concatenate([unit_rows[u] for u in chunk.units])] = chunk.array()
        failures += chunk.meta()["failures"]
    write_cache(directory, ids, out, identity, failures, extra)
    work.remove()
    return load_cache(directory, identity)


def reuse_finished(directory: Path, identity: dict, force: bool) -> FeatureCache | None:
    """The finished cache in ``directory`` when it matches ``identity`` (its full identity); None when
    there is none, or with ``force`` (its manifest is removed then, so that a killed rebuild is not
    taken for it). StaleCacheError when it holds other features."""
    existing = read_manifest(directory)
    if existing is None:
        return None
    if force:
        (directory / MANIFEST_FILE).unlink()
        return None
    diff = identity_mismatch(existing, identity)
    if diff:
        raise StaleCacheError(f"{directory} already holds other features ({'; '.join(diff)}); "
                              "pass --force to replace them, or choose another --work-dir")
    log.info("reusing the finished cache in %s (pass --force to rebuild)", directory)
    return load_cache(directory, identity)


def full_identity(identity: dict, ids: Sequence[str]) -> dict:
    """``identity`` (kind, backbone, weights, preprocess, dim) with the dtype, row count and ids hash."""
    return {**identity, "dtype": "float16", "rows": len(ids), "ids_sha256": list_hash(ids)}


def write_cache(directory: str | os.PathLike, ids: Sequence[str], features: np.ndarray, identity: dict,
                failures: Sequence[dict] = (), extra: dict | None = None, files: dict[str, str] | None = None) -> None:
    """Write a finished cache (replacing one that is there): features, ids, the text ``files``
    (name -> content) that belong with them, and the manifest that marks it finished.

    They are written into ``.next/`` first and then moved in by renames, the old manifest removed
    first and the new one moved last (``finish_write``): a reader meets no manifest only for the
    instant of the renames, and a kill during them is completed by the next build.
    ``extra`` fields are added to the manifest.
    """
    directory = Path(directory)
    ids = list(ids)
    identity = full_identity(identity, ids)
    if features.shape != (len(ids), identity["dim"]):
        raise ValueError(f"features of shape {features.shape} for {len(ids)} ids of dim {identity['dim']}")
    staging = directory / NEXT_DIR
    if staging.exists():
        shutil.rmtree(staging)
    atomic_save_npy(staging / FEATURES_FILE, np.ascontiguousarray(features, dtype=np.float16))
    atomic_write_text(staging / IDS_FILE, "".join(f"{i}\n" for i in ids))
    for name, text in (files or {}).items():
        atomic_write_text(staging / name, text)
    manifest = {**identity, "failures": sorted(failures, key=lambda x: x["id"]), "format": FORMAT_VERSION,
                "files": {"features": FEATURES_FILE, "ids": IDS_FILE}, **(extra or {})}
    atomic_write_json(staging / MANIFEST_FILE, manifest)
    finish_write(directory)


def finish_write(directory: str | os.PathLike) -> bool:
    """Move a staged cache (``.next/``, complete once it holds a manifest) into ``directory``,
    manifest last; an incomplete one is dropped. True when one was moved in."""
    directory = Path(directory)
    staging = directory / NEXT_DIR
    if not staging.is_dir():
        return False
    if not (staging / MANIFEST_FILE).is_file():
        shutil.rmtree(staging)
        return False
    (directory / MANIFEST_FILE).unlink(missing_ok=True)
    for p in sorted(staging.iterdir()):
        if p.name != MANIFEST_FILE and not p.name.startswith("."):
            os.replace(p, directory / p.name)
    os.replace(staging / MANIFEST_FILE, directory / MANIFEST_FILE)
    shutil.rmtree(staging)
    return True


def load_cache(directory: str | os.PathLike, expected: dict | None = None, rerun: str = "") -> FeatureCache:
    """Open a finished cache (memory-mapped), refusing one that does not match ``expected``.

    ``rerun`` is the command that rebuilds it, quoted in the error. A cache being replaced
    (``write_cache``) is waited for, so the files returned always belong to one manifest.
    """
    directory = Path(directory)
    hint = f"; rebuild it with: {rerun}" if rerun else ""
    for attempt in range(LOAD_ATTEMPTS):
        manifest = read_manifest(directory)
        if manifest is None:
            # A writer moving new files in renames .next/manifest.json to manifest.json last: looked
            # for in that order, one of them is there until it is done.
            moving = (directory / NEXT_DIR / MANIFEST_FILE).is_file() or (directory / MANIFEST_FILE).is_file()
            if attempt + 1 < LOAD_ATTEMPTS and moving:
                time.sleep(LOAD_WAIT_S)
                continue
            raise StaleCacheError(f"no finished feature cache in {directory}{hint}")
        if manifest.get("grid"):  # written by an older version's --grid, since removed
            raise StaleCacheError(f"the cache in {directory} holds feature-map cells (the removed --grid option){hint}")
        diff = identity_mismatch(manifest, expected or {})
        if diff:
            raise StaleCacheError(f"the cache in {directory} does not match ({'; '.join(diff)}){hint}")
        try:
            features = open_rows(directory, manifest, hint)
            ids = RowIds.read(directory / IDS_FILE)
        except FileNotFoundError:
            if attempt + 1 < LOAD_ATTEMPTS and read_manifest(directory) != manifest:
                continue
            raise
        # The files were moved in before the manifest was: an unchanged manifest means they belong to it.
        if read_manifest(directory) == manifest:
            break
        time.sleep(LOAD_WAIT_S)
    if features.shape != (manifest["rows"], manifest["dim"]) or len(ids) != manifest["rows"]:
        raise StaleCacheError(f"the cache in {directory} is damaged (shape {features.shape}, "
                              f"{len(ids)} ids, manifest says {manifest['rows']}x{manifest['dim']}){hint}")
    if ids.sha256() != manifest["ids_sha256"]:
        raise StaleCacheError(f"the ids of the cache in {directory} do not match its manifest{hint}")
    return FeatureCache(directory, features, ids, manifest)


SHARD_IDENTITY = ("kind", "backbone", "weights", "preprocess", "dim", "dtype")  # what every shard shares


def open_rows(directory: str | os.PathLike, manifest: dict | None = None, hint: str = "") -> np.ndarray | ShardedRows:
    """The feature matrix of the finished cache in ``directory``, memory-mapped: one ``.npy``, or
    its shards' read as one (``ShardedRows``)."""
    directory = Path(directory)
    manifest = manifest if manifest is not None else read_manifest(directory)
    if manifest is None:
        raise StaleCacheError(f"no finished feature cache in {directory}{hint}")
    if "shards" not in manifest:
        return np.load(directory / FEATURES_FILE, mmap_mode="r")
    expected = {k: manifest[k] for k in SHARD_IDENTITY if k in manifest}
    parts = []
    for shard in manifest["shards"]:
        part = read_manifest(directory / shard["dir"])
        own = {**expected, "rows": shard["rows"], "ids_sha256": shard["ids_sha256"]}
        if part is None or identity_mismatch(part, own):
            raise StaleCacheError(f"the sharded cache in {directory} is damaged: shard {shard['dir']} is missing or "
                                  f"holds other rows{hint}")
        rows = np.load(directory / shard["dir"] / FEATURES_FILE, mmap_mode="r")
        if rows.shape != (shard["rows"], manifest["dim"]):
            raise StaleCacheError(f"the sharded cache in {directory} is damaged: shard {shard['dir']} has shape "
                                  f"{rows.shape}{hint}")
        parts.append(rows)
    if not parts:
        return np.zeros((0, manifest["dim"]), dtype=np.float16)
    return ShardedRows(parts)


def feature_files(directory: str | os.PathLike) -> list[tuple[Path, int]]:
    """The feature files of the cache in ``directory``, each with the first row it holds: its one
    ``.npy``, or its shards' in row order."""
    directory = Path(directory)
    shards = (read_manifest(directory) or {}).get("shards")
    if not shards:
        return [(directory / FEATURES_FILE, 0)]
    starts = np.cumsum([0] + [s["rows"] for s in shards[:-1]]).tolist()
    return [(directory / s["dir"] / FEATURES_FILE, a) for s, a in zip(shards, starts)]


def features_signature(directory: str | os.PathLike) -> list:
    """What changes when the cache in ``directory`` is rebuilt: its feature files' sizes and times."""
    return [[f.stat().st_size, f.stat().st_mtime_ns] for f, _ in feature_files(directory)]
