"""Own-photo collections: a folder of photos (recursively: jpg, jpeg, png, webp) indexed for search.

Photos are embedded with the checkpoint's image backbone; the image head is applied when the
collection is served (and once here, so the first start is fast). Incremental: a rerun embeds only
new or changed files (same relative path, size and modification time are kept) and drops deleted
ones. Hidden files and folders (names starting with ".") are skipped.

The index is a feature cache (``crossmodal.features.cache``) plus the files' identities::

    features.npy    float16 backbone features, one row per photo
    ids.txt         photo paths relative to the folder
    sources.tsv     size, mtime_ns and relative path of each row's file, to detect changes
    manifest.json   backbone, weights, checkpoint, folder, unreadable files; written last
    .pending/       new/changed photos being embedded (resumable after a kill)

Unreadable files are listed in the manifest (and skipped by search), not retried until they change.
Entries that cannot even be looked at (a dangling symbolic link, a folder without read permission)
have no row: they are listed in the manifest's ``skipped`` and reported, and looked at again on
every run. A new index replaces the old one by renames (``features.cache.write_cache``), so a
running app keeps the files it opened and a starting one finds a complete index.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossmodal.atomic_io import atomic_write_text, check_free_space, file_digest
from crossmodal.backbones import create_image_backbone, resolve_device, views_mismatch, views_of
from crossmodal.captions import list_hash
from crossmodal.features.cache import (
    StaleCacheError,
    cache_bytes,
    finish_write,
    load_cache,
    read_manifest,
    write_cache,
)
from crossmodal.features.extract import CHUNK_SIZE, NUM_WORKERS, extract_image_features
from crossmodal.retrieval import check_identity, load_or_project

log = logging.getLogger(__name__)

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}
SOURCES_FILE = "sources.tsv"
PENDING_DIR = ".pending"
PENDING_SOURCES = ".pending.sources"  # identity of the files .pending is embedding


@dataclass
class IndexResult:
    out_dir: Path
    embedded: int  # new or changed files embedded this run
    removed: int  # rows dropped because their file is gone (or changed: counted in embedded)
    kept: int  # rows reused unchanged
    failed: int  # unreadable files in the index (never returned by search)
    skipped: list[dict] = field(default_factory=list)  # {"id", "reason"}: entries that could not be looked at

    def summary(self) -> str:
        return f"embedded {self.embedded} new/changed, removed {self.removed}, kept {self.kept}"


@dataclass
class FolderScan:
    files: dict[str, tuple[int, int]]  # relative posix path -> (size, mtime_ns), sorted by path
    skipped: list[dict]  # {"id": relative path, "reason": ...}: photos and folders that could not be looked at


def scan_folder(folder: Path, exclude: Path | None = None) -> FolderScan:
    """Every photo under ``folder`` (hidden entries left out), and what could not be looked at."""
    found: dict[str, tuple[int, int]] = {}
    skipped: list[dict] = []
    exclude = exclude.resolve() if exclude else None

    def rel(path: str | os.PathLike) -> str:
        return Path(path).relative_to(folder).as_posix()

    def unreadable_folder(err: OSError) -> None:
        if err.filename and Path(err.filename) != Path(folder):
            skipped.append({"id": rel(err.filename) + "/", "reason": f"folder not readable: {err.strerror}"})

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable_folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (exclude is None or (here / d).resolve() != exclude))
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in EXTENSIONS:
                continue
            path = here / name
            try:
                st = path.stat()
            except OSError as err:
                if path.is_symlink():
                    skipped.append({"id": rel(path), "reason": f"dangling symbolic link to {os.readlink(path)}"
                                    if err.errno == errno.ENOENT else f"symbolic link: {err.strerror}"})
                elif err.errno != errno.ENOENT:  # one deleted since the listing is simply gone
                    skipped.append({"id": rel(path), "reason": err.strerror or str(err)})
                continue
            found[rel(path)] = (st.st_size, st.st_mtime_ns)
    return FolderScan(dict(sorted(found.items())), sorted(skipped, key=lambda x: x["id"]))


def sources_text(ids: list[str], stats: dict[str, tuple[int, int]]) -> str:
    return "".join(f"{stats[i][0]}\t{stats[i][1]}\t{i}\n" for i in ids)


def read_sources(out: Path) -> dict[str, tuple[int, int]]:
    result = {}
    for line in (out / SOURCES_FILE).read_text(encoding="utf-8").splitlines():
        size, mtime, rel = line.split("\t", 2)
        result[rel] = (int(size), int(mtime))
    return result


def _previous(out: Path, root: Path, backbone_name: str, weights: str, preprocess: dict):
    """The previous index (cache, stats), or None when there is none or it cannot be reused."""
    manifest = read_manifest(out)
    if manifest is None:
        return None
    why = None
    if not manifest.get("collection"):
        raise StaleCacheError(f"{out} holds something other than an indexed photo folder; choose another --out")
    if manifest.get("backbone") != backbone_name or manifest.get("weights") != weights:
        why = f"it was made with {manifest.get('backbone')} ({manifest.get('weights')})"
    elif mismatch := views_mismatch(manifest.get("preprocess"), preprocess):
        why = mismatch
    elif manifest.get("root") != str(root):
        why = f"it indexes another folder ({manifest.get('root')})"
    else:
        try:
            cache = load_cache(out)
            stats = read_sources(out)
            if list_hash(list(stats)) != manifest["ids_sha256"] or list(stats) != cache.ids:
                raise StaleCacheError(f"{SOURCES_FILE} does not match the index")
            return cache, stats
        except (StaleCacheError, OSError, ValueError, KeyError) as err:
            why = f"it is damaged ({err})"
    log.warning("re-embedding every photo: the index in %s cannot be reused because %s", out, why)
    return None


def default_out(collections_dir: Path, folder: str | os.PathLike) -> Path:
    """Where a folder's index goes by default: a sub-folder of ``collections_dir`` named after it."""
    return Path(collections_dir) / (Path(folder).expanduser().resolve().name or "root")


def index_folder(folder: str | os.PathLike, checkpoint: str | os.PathLike, model: Any, state: dict,
                 out: str | os.PathLike, *, device: str = "auto", batch_size: int | None = None,
                 workers: int = NUM_WORKERS, chunk_size: int = CHUNK_SIZE,
                 image_weights: str | os.PathLike | None = None, models_dir: str | os.PathLike | None = None,
                 project: bool = True) -> IndexResult:
    """Index (or update the index of) ``folder`` for the heads ``model`` loaded from ``checkpoint``
    (with its contents ``state``); returns what was embedded, removed and kept."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    checkpoint = Path(checkpoint).resolve()
    out = Path(out)
    expected = state["backbones"]["image"]
    backbone = create_image_backbone(expected["backbone"], image_weights, models_dir)
    check_identity("image", expected, backbone.name, backbone.weights, "found")
    views = views_of(expected.get("preprocess"))  # a collection row is the mean of the trained views

    finish_write(out)  # an index replacement killed halfway is completed first
    scan = scan_folder(folder, exclude=out)
    stats = scan.files
    for entry in scan.skipped:
        log.warning("skipped %s: %s", entry["id"], entry["reason"])
    previous = _previous(out, folder, backbone.name, backbone.weights, expected.get("preprocess"))
    old_stats = previous[1] if previous else {}
    todo = [rel for rel, st in stats.items() if old_stats.get(rel) != st]
    kept_ids = [rel for rel, st in stats.items() if old_stats.get(rel) == st]
    removed = sum(1 for rel in old_stats if rel not in stats)
    log.info("%s: %d photos; %d new or changed, %d unchanged, %d gone", folder, len(stats), len(todo),
             len(kept_ids), removed)

    preprocess = {**backbone.preprocess, "jpeg_draft": True, "decode": "cpu"}
    # the embedding of new photos (its chunks, then their cache), then the new index beside the old one
    check_free_space(out, 2 * len(todo) * backbone.dim * 2 + cache_bytes(len(stats), backbone.dim, list(stats)),
                     f"the index of {folder}")
    pending = out / PENDING_DIR
    new_cache = None
    if todo:
        # The pending cache is resumable; it is only resumed for exactly the same files (path, size, mtime).
        todo_key = list_hash([f"{stats[r][0]}\t{stats[r][1]}\t{r}" for r in todo])
        marker = out / PENDING_SOURCES
        if pending.exists() and (not marker.is_file() or marker.read_text().strip() != todo_key):
            shutil.rmtree(pending)
        atomic_write_text(marker, todo_key + "\n")
        new_cache = extract_image_features(backbone, folder, todo, pending, batch_size=batch_size,
                                           num_workers=workers, chunk_size=chunk_size, device=device, views=views,
                                           stack_views=False)
        preprocess = new_cache.manifest["preprocess"]

    # Merge kept rows and new rows, in sorted relative-path order.
    ids = list(stats)
    dim = backbone.dim
    features = np.zeros((len(ids), dim), dtype=np.float16)
    failures = []
    if previous:
        old_cache = previous[0]
        old_row = {n: i for i, n in enumerate(old_cache.ids)}
        old_failed = {f["id"]: f for f in old_cache.manifest.get("failures", [])}
        if kept_ids:
            where = {n: i for i, n in enumerate(ids)}
            src = np.array([old_row[r] for r in kept_ids])
            dst = np.array([where[r] for r in kept_ids])
            order = np.argsort(src)  # sorted reads from the memory map
            features[dst[order]] = old_cache.features[src[order]]
        failures += [old_failed[r] for r in kept_ids if r in old_failed]
    if new_cache is not None:
        where = {n: i for i, n in enumerate(ids)}
        features[np.array([where[r] for r in new_cache.ids])] = np.asarray(new_cache.features)
        failures += new_cache.manifest.get("failures", [])
    failures.sort(key=lambda f: f["id"])

    identity = {"kind": "image", "backbone": backbone.name, "weights": backbone.weights, "preprocess": preprocess,
                "dim": dim}
    checkpoint_record = {"path": str(checkpoint), "digest": file_digest(checkpoint)}
    extra = {"collection": True, "root": str(folder), "checkpoint": checkpoint_record, "sources": SOURCES_FILE,
             "skipped": scan.skipped, "indexed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    del previous  # release the old memory map before replacing its file
    write_cache(out, ids, features, identity, failures, extra, files={SOURCES_FILE: sources_text(ids, stats)})
    if pending.exists():
        shutil.rmtree(pending)
    (out / PENDING_SOURCES).unlink(missing_ok=True)

    if project and ids:  # the head's projection, cached for the first search
        cache = load_cache(out)
        if cache.valid_mask().any():
            load_or_project(model, cache, checkpoint_record["digest"], resolve_device(device),
                            state.get("querybank"))
    return IndexResult(out, len(todo), removed, len(kept_ids), len(failures), scan.skipped)
