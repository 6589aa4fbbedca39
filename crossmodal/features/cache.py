"""On-disk feature caches: one float16 matrix, its row ids, and a manifest of what produced it.

Layout of a cache folder::

    features.npy    float16 (rows, dim), loadable with mmap_mode="r"
    ids.txt         one row id per line (image name, or caption key "img.jpg#n")
    manifest.json   backbone, weights identity, preprocessing, dim, dtype, rows, ids hash, failures
    .partial/       while building: plan.json and one atomically written file per finished chunk

A build is split into fixed chunks; each finished chunk is saved atomically, so a killed run resumes
at the first missing chunk and the assembled file is byte-identical to an uninterrupted run.
The manifest is written last: a folder without one holds no usable cache.
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

from crossmodal.atomic_io import atomic_save_npy, atomic_write_json, atomic_write_text
from crossmodal.captions import list_hash

log = logging.getLogger(__name__)

FEATURES_FILE = "features.npy"
IDS_FILE = "ids.txt"
MANIFEST_FILE = "manifest.json"
PARTIAL_DIR = ".partial"
FORMAT_VERSION = 1

# compute(pending chunks' row indices, progress) yields, chunk by chunk in that order,
# (float array (len(rows), dim), failures [(row id, reason)]). One call for all pending chunks
# lets an extractor keep one DataLoader (and its workers) alive across chunks.
ComputeChunks = Callable[[list[np.ndarray], Callable[[int], Any]],
                         Iterator[tuple[np.ndarray, list[tuple[str, str]]]]]


class StaleCacheError(RuntimeError):
    """Cached features that are missing or were made by something else than what is asked for."""


@dataclass
class FeatureCache:
    directory: Path
    features: np.ndarray  # (rows, dim) float16, memory-mapped
    ids: list[str]
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


def build_cache(
    directory: str | os.PathLike,
    ids: Sequence[str],
    identity: dict,
    compute: ComputeChunks,
    *,
    chunk_size: int,
    order: np.ndarray | None = None,
    force: bool = False,
    desc: str = "features",
    unit: str = "it",
    extra: dict | None = None,
) -> FeatureCache:
    """Build (or resume, or reuse) the cache in ``directory``.

    ``identity`` holds kind, backbone, weights, preprocess and dim; the ids hash, row count and
    dtype are added here. ``order`` is a permutation of rows giving the computation order (text
    is computed sorted by length); rows are always stored in ``ids`` order.
    """
    directory = Path(directory)
    ids = list(ids)
    identity = full_identity(identity, ids)
    existing = read_manifest(directory)
    if existing is not None and not force:
        diff = identity_mismatch(existing, identity)
        if not diff:
            log.info("reusing the finished cache in %s (pass --force to rebuild)", directory)
            return load_cache(directory, identity)
        raise StaleCacheError(
            f"{directory} already holds other features ({'; '.join(diff)}); "
            "pass --force to replace them, or choose another --work-dir"
        )
    if existing is not None:  # --force: drop the finished cache before rebuilding
        (directory / MANIFEST_FILE).unlink()

    order = np.arange(len(ids)) if order is None else np.asarray(order)
    if sorted(order.tolist()) != list(range(len(ids))):
        raise ValueError("order must be a permutation of the rows")
    partial = directory / PARTIAL_DIR
    plan = {**identity, "chunk_size": chunk_size, "order_sha256": list_hash(map(str, order.tolist())),
            "format": FORMAT_VERSION}
    plan_path = partial / "plan.json"
    if partial.exists():
        old_plan = json.loads(plan_path.read_text()) if plan_path.is_file() else None
        if force or old_plan != plan:
            log.info("discarding an unfinished build in %s (%s)", partial,
                     "--force" if force else "made with other settings")
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan_path, plan)

    n_chunks = (len(ids) + chunk_size - 1) // chunk_size
    done = [k for k in range(n_chunks) if (partial / f"chunk_{k:05d}.json").is_file()]
    done_rows = sum(min(chunk_size, len(ids) - k * chunk_size) for k in done)
    if done:
        log.info("resuming %s: %d of %d chunks already done", directory, len(done), n_chunks)
    start = time.perf_counter()
    pending = [k for k in range(n_chunks) if not (partial / f"chunk_{k:05d}.json").is_file()]
    chunk_rows = [order[k * chunk_size : (k + 1) * chunk_size] for k in range(n_chunks)]
    with tqdm(total=len(ids), initial=done_rows, desc=desc, unit=unit, dynamic_ncols=True) as bar:
        results = compute([chunk_rows[k] for k in pending], bar.update)
        for k, (feats, failures) in zip(pending, results):
            expected = (len(chunk_rows[k]), identity["dim"])
            if feats.shape != expected:
                raise RuntimeError(f"chunk {k}: got shape {feats.shape}, expected {expected}")
            atomic_save_npy(partial / f"chunk_{k:05d}.npy", feats.astype(np.float16))
            # The json marks the chunk finished, so it is written after the array.
            atomic_write_json(partial / f"chunk_{k:05d}.json",
                              {"failures": [{"id": i, "reason": r} for i, r in failures]})
    elapsed = time.perf_counter() - start
    computed = len(ids) - done_rows
    if computed:
        log.info("%s: %d rows in %.1f s (%.1f %s/s)", desc, computed, elapsed, computed / max(elapsed, 1e-9), unit)

    # Assemble the chunks in ids order.
    failures: list[dict] = []
    out = np.zeros((len(ids), identity["dim"]), dtype=np.float16)
    for k in range(n_chunks):
        out[chunk_rows[k]] = np.load(partial / f"chunk_{k:05d}.npy")
        failures += json.loads((partial / f"chunk_{k:05d}.json").read_text())["failures"]
    write_cache(directory, ids, out, identity, failures, extra)
    shutil.rmtree(partial)
    return load_cache(directory, identity)


def full_identity(identity: dict, ids: Sequence[str]) -> dict:
    """``identity`` (kind, backbone, weights, preprocess, dim) with the dtype, row count and ids hash."""
    return {**identity, "dtype": "float16", "rows": len(ids), "ids_sha256": list_hash(ids)}


def write_cache(directory: str | os.PathLike, ids: Sequence[str], features: np.ndarray, identity: dict,
                failures: Sequence[dict] = (), extra: dict | None = None) -> None:
    """Write a finished cache: features, ids, then the manifest that marks it finished.

    The old manifest goes first and the new one comes last, each file replaced atomically: a kill
    in between leaves no half-valid cache. ``extra`` fields are added to the manifest.
    """
    directory = Path(directory)
    ids = list(ids)
    identity = full_identity(identity, ids)
    if features.shape != (len(ids), identity["dim"]):
        raise ValueError(f"features of shape {features.shape} for {len(ids)} ids of dim {identity['dim']}")
    (directory / MANIFEST_FILE).unlink(missing_ok=True)
    atomic_save_npy(directory / FEATURES_FILE, np.ascontiguousarray(features, dtype=np.float16))
    atomic_write_text(directory / IDS_FILE, "".join(f"{i}\n" for i in ids))
    manifest = {**identity, "failures": sorted(failures, key=lambda x: x["id"]), "format": FORMAT_VERSION,
                "files": {"features": FEATURES_FILE, "ids": IDS_FILE}, **(extra or {})}
    atomic_write_json(directory / MANIFEST_FILE, manifest)


def load_cache(directory: str | os.PathLike, expected: dict | None = None, rerun: str = "") -> FeatureCache:
    """Open a finished cache (memory-mapped), refusing one that does not match ``expected``.

    ``rerun`` is the command that rebuilds it, quoted in the error.
    """
    directory = Path(directory)
    hint = f"; rebuild it with: {rerun}" if rerun else ""
    manifest = read_manifest(directory)
    if manifest is None:
        raise StaleCacheError(f"no finished feature cache in {directory}{hint}")
    if manifest.get("grid"):  # written by an older version's --grid, since removed
        raise StaleCacheError(f"the cache in {directory} holds feature-map cells (the removed --grid option){hint}")
    diff = identity_mismatch(manifest, expected or {})
    if diff:
        raise StaleCacheError(f"the cache in {directory} does not match ({'; '.join(diff)}){hint}")
    features = np.load(directory / FEATURES_FILE, mmap_mode="r")
    ids = (directory / IDS_FILE).read_text(encoding="utf-8").splitlines()
    if features.shape != (manifest["rows"], manifest["dim"]) or len(ids) != manifest["rows"]:
        raise StaleCacheError(f"the cache in {directory} is damaged (shape {features.shape}, "
                              f"{len(ids)} ids, manifest says {manifest['rows']}x{manifest['dim']}){hint}")
    if list_hash(ids) != manifest["ids_sha256"]:
        raise StaleCacheError(f"the ids of the cache in {directory} do not match its manifest{hint}")
    return FeatureCache(directory, features, ids, manifest)
