#!/usr/bin/env python
"""Index a folder of your own photos (recursively: jpg, jpeg, png, webp) for searching; no captions needed.

    python index_folder.py ~/Pictures [--checkpoint WORK_DIR/checkpoints/best.pt] [--out DIR]
    python app.py --collection WORK_DIR/collections/Pictures      # then search it
    python search.py "a dog in the snow" --collection WORK_DIR/collections/Pictures

Photos are embedded with the checkpoint's image backbone; the image head is applied when the
collection is served (and once here, so the first start is fast). Incremental: a rerun embeds only
new or changed files (same relative path, size and modification time are kept) and drops deleted
ones. Hidden files and folders (names starting with ".") are skipped.

Output (default WORK_DIR/collections/<folder name>), a feature cache in the feature_cache.py format::

    features.npy    float16 backbone features, one row per photo
    ids.txt         photo paths relative to the folder
    sources.tsv     size, mtime_ns and relative path of each row's file, to detect changes
    manifest.json   backbone, weights, checkpoint, folder, unreadable files; written last
    .pending/       new/changed photos being embedded (resumable after a kill)

Unreadable files are listed in the manifest (and skipped by search), not retried until they change.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import cli
import config
from atomic_io import atomic_open, atomic_write_json, atomic_write_text
from backbones import BackboneUnavailable, create_image_backbone, resolve_device, views_mismatch, views_of
from datasets import list_hash
from feature_cache import (FEATURES_FILE, FORMAT_VERSION, IDS_FILE, MANIFEST_FILE, StaleCacheError, load_cache,
                           read_manifest)
from paths import Layout

log = logging.getLogger("index_folder")

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

    def summary(self) -> str:
        return f"embedded {self.embedded} new/changed, removed {self.removed}, kept {self.kept}"


def scan_folder(folder: Path, exclude: Path | None = None) -> dict[str, tuple[int, int]]:
    """relative posix path -> (size, mtime_ns) of every photo under ``folder``, hidden entries skipped."""
    found: dict[str, tuple[int, int]] = {}
    exclude = exclude.resolve() if exclude else None
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (exclude is None or (here / d).resolve() != exclude))
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in EXTENSIONS:
                continue
            path = here / name
            try:
                st = path.stat()
            except OSError:  # vanished or dangling link: nothing to index
                continue
            found[path.relative_to(folder).as_posix()] = (st.st_size, st.st_mtime_ns)
    return dict(sorted(found.items()))


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


def index_folder(folder: str | os.PathLike, checkpoint: str | os.PathLike, out: str | os.PathLike | None = None,
                 *, work_dir: str | os.PathLike | None = None, device: str = "auto",
                 batch_size: int | None = None, workers: int = config.NUM_WORKERS,
                 chunk_size: int = config.CHUNK_SIZE, image_weights: str | os.PathLike | None = None,
                 project: bool = True) -> IndexResult:
    """Index (or update the index of) ``folder``; returns what was embedded, removed and kept."""
    from extract import extract_image_features
    from retrieval import _check_identity, checkpoint_digest, load_or_project
    from train import load_checkpoint

    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    checkpoint = Path(checkpoint).resolve()
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}; train one with `python run_train.py`")
    out = Path(out) if out else Layout(work_dir).collections / (folder.name or "root")
    model, state = load_checkpoint(checkpoint)
    expected = state["backbones"]["image"]
    backbone = create_image_backbone(expected["backbone"], image_weights)
    _check_identity("image", expected, backbone.name, backbone.weights, "found")
    views = views_of(expected.get("preprocess"))  # a collection row is the mean of the trained views

    stats = scan_folder(folder, exclude=out)
    previous = _previous(out, folder, backbone.name, backbone.weights, expected.get("preprocess"))
    old_stats = previous[1] if previous else {}
    todo = [rel for rel, st in stats.items() if old_stats.get(rel) != st]
    kept_ids = [rel for rel, st in stats.items() if old_stats.get(rel) == st]
    removed = sum(1 for rel in old_stats if rel not in stats)
    log.info("%s: %d photos; %d new or changed, %d unchanged, %d gone", folder, len(stats), len(todo),
             len(kept_ids), removed)

    preprocess = {**backbone.preprocess, "jpeg_draft": True, "decode": "cpu"}
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

    manifest = {
        "kind": "image", "backbone": backbone.name, "weights": backbone.weights, "preprocess": preprocess,
        "dim": dim, "dtype": "float16", "rows": len(ids), "ids_sha256": list_hash(ids), "failures": failures,
        "format": FORMAT_VERSION, "files": {"features": FEATURES_FILE, "ids": IDS_FILE, "sources": SOURCES_FILE},
        "collection": True, "root": str(folder),
        "checkpoint": {"path": str(checkpoint), "digest": checkpoint_digest(checkpoint)},
        "indexed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # The manifest goes first and comes back last: a kill in between leaves no half-valid index.
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    del previous  # release the old memory map before replacing its file
    with atomic_open(out / FEATURES_FILE, "wb") as f:
        np.save(f, features)
    atomic_write_text(out / IDS_FILE, "".join(f"{i}\n" for i in ids))
    atomic_write_text(out / SOURCES_FILE, sources_text(ids, stats))
    atomic_write_json(out / MANIFEST_FILE, manifest)
    if pending.exists():
        shutil.rmtree(pending)
    (out / PENDING_SOURCES).unlink(missing_ok=True)

    if project and ids:  # the head's projection, cached for the first search
        cache = load_cache(out)
        if cache.valid_mask().any():
            load_or_project(model, cache, manifest["checkpoint"]["digest"], resolve_device(device),
                            state.get("querybank"))
    return IndexResult(out, len(todo), removed, len(kept_ids), len(failures))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="the photo folder (searched recursively)")
    p.add_argument("--work-dir", type=Path, default=config.WORK_DIR,
                   help="where generated files are (default: the original layout)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="trained checkpoint (default: WORK_DIR/checkpoints/best.pt)")
    p.add_argument("--out", type=Path, default=None, help="index folder (default: WORK_DIR/collections/<folder name>)")
    p.add_argument("--image-weights", type=Path, default=None, help="a local weights file for the image backbone")
    cli.add_device_arg(p)
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"default: {config.IMAGE_BATCH_SIZE_CPU} on CPU, {config.IMAGE_BATCH_SIZE_GPU} on GPU")
    p.add_argument("--workers", type=int, default=config.NUM_WORKERS, help="image-decoding processes")
    args = p.parse_args(argv)
    cli.setup_logging()
    checkpoint = args.checkpoint or Layout(args.work_dir).checkpoints / "best.pt"
    try:
        result = index_folder(args.folder, checkpoint, args.out, work_dir=args.work_dir, device=args.device,
                              batch_size=args.batch_size, workers=args.workers, image_weights=args.image_weights)
    except (FileNotFoundError, BackboneUnavailable, StaleCacheError) as err:
        log.error("%s", err)
        return 2
    except Exception as err:  # RetrieverError (backbone mismatch) is imported lazily
        if type(err).__name__ != "RetrieverError":
            raise
        log.error("%s", err)
        return 2
    print(result.summary())
    if result.failed:
        print(f"{result.failed} file(s) could not be read (listed in {result.out_dir}/{MANIFEST_FILE})")
    print(f"index: {result.out_dir}; search it with: python app.py --collection {result.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
