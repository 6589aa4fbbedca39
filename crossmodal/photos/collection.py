"""The photo index as a searchable collection (``crossmodal.collection.Collection``).

A ``PhotoCollection`` is a snapshot of a ``PhotoStore``: the searchable photos under some indexed
folders at one generation, with their dates, cameras, folders and the text read in them. ``latest()``
compares the store's generation (one small SQLite read) and takes a new snapshot when indexing has
committed since, so a page searching a folder that is being indexed sees each commit.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from crossmodal.collection import CollectionError
from crossmodal.photos.files import under
from crossmodal.photos.store import DB_FILE, PhotoStore, Snapshot


class PhotoCollection:
    """The photos of a photo index under ``roots`` (every indexed folder when None), at one generation.
    Names are paths below the folder the roots share."""

    kind = "photos"
    captions = None

    def __init__(self, store: PhotoStore, roots: Sequence[str] | None, snapshot: Snapshot):
        self.store = store
        self._filter = list(roots) if roots is not None else None
        self.roots = self._filter if self._filter is not None else store.roots()
        self.root = Path(os.path.commonpath(self.roots)) if self.roots else store.folder
        self.generation = snapshot.generation
        self.identity = snapshot.identity or {}
        self.rebuild_hint = ("index the folders again with this checkpoint "
                             "(python index_folder.py FOLDER --checkpoint FILE)")
        self.matrix_key = Path(snapshot.matrix_name).stem if snapshot.matrix_name else "empty"
        self.matrix_rows = snapshot.rows
        self.cache_folder: Path | None = store.folder
        # the committed rows of the matrix file, mapped again for each read (pages read while projecting
        # do not stay resident); rows below the committed count never change
        self._matrix = (store.folder / snapshot.matrix_name if snapshot.matrix_name else None, snapshot.matrix.shape)
        self._ids = snapshot.ids
        root = str(self.root)
        self.names = [os.path.relpath(p, root) for p in snapshot.paths]
        self.taken_at = snapshot.taken_at
        self.camera = snapshot.camera
        self.files = snapshot.files  # (size, mtime_ns, hash) as indexed: what the page may serve
        self.folders = [self._folder(p) for p in snapshot.paths]
        self.folder_paths = [self._below_parent(p) for p in snapshot.paths]

    @classmethod
    def open(cls, folder: str | os.PathLike, roots: Sequence[str | os.PathLike] | None = None) -> "PhotoCollection":
        """The photo index in ``folder``, searched under ``roots`` (resolved; every indexed folder when None)."""
        if not (Path(folder) / DB_FILE).is_file() and roots is None:
            raise CollectionError(f"no photo index in {folder}; index a folder first with: "
                                  f"python index_folder.py PHOTO_FOLDER --out {folder}")
        store = PhotoStore(folder)
        resolved = [str(Path(r).expanduser().resolve()) for r in roots] if roots is not None else None
        try:
            return cls(store, resolved, store.checked_snapshot(resolved))
        except BaseException:
            store.close()
            raise

    def _own_root(self, path: str) -> str:
        return next((r for r in self.roots if under(path, r)), str(self.root))

    def _folder(self, path: str) -> str:
        folder = os.path.relpath(os.path.dirname(path), self._own_root(path))
        return "" if folder == "." else folder

    def _below_parent(self, path: str) -> str:
        """The path below the folder holding its indexed folder: in:Holidays finds ~/Holidays/x.jpg."""
        return os.path.relpath(path, os.path.dirname(self._own_root(path)))

    def __len__(self) -> int:
        return len(self.names)

    def matrix_size(self) -> int:
        return self._matrix[1][0]

    def pooled(self, start: int, stop: int) -> np.ndarray:
        path, shape = self._matrix
        if path is None or not shape[0]:
            return np.zeros((0, shape[1]), np.float32)
        return np.asarray(np.memmap(path, dtype=np.float16, mode="r", shape=shape)[start:stop], dtype=np.float32)

    @functools.cached_property
    def _row_of_id(self) -> dict[int, int]:
        return {int(i): row for row, i in enumerate(self._ids)}

    def ocr_matches(self, words: Sequence[str], limit: int) -> list[tuple[int, str]]:
        rows = self._row_of_id
        return [(rows[int(i)], text) for i, text in self.store.ocr_matches(words, limit) if int(i) in rows]

    def latest(self) -> "PhotoCollection":
        if self.store.generation() == self.generation:
            return self
        return PhotoCollection(self.store, self._filter, self.store.checked_snapshot(self._filter))

    def describe(self) -> str:
        where = ", ".join(self.roots) or str(self.store.folder)
        return f"{len(self):,} photos in {where}" if len(self) else f"no photos indexed yet in {where}"

    def close(self) -> None:
        self.store.close()
