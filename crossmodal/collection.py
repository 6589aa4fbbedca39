"""What a search engine searches: a collection of photos, each with a backbone vector.

``Collection`` is the interface; two kinds implement it:

* ``DatasetCollection``: a captioned dataset, its image feature cache (``features.cache``) and its
  caption file; it never changes;
* ``photos.collection.PhotoCollection``: a snapshot of the photo index, whose ``latest()`` is a newer
  snapshot once indexing has committed more.

A collection's rows are its searchable photos, named by their path below ``root`` (the name the page
serves a photo by). Their backbone vectors are rows of a matrix that only ever grows
(``matrix_rows[i]`` is row i's), so the engine's projections of the matrix can be kept on disk
and extended (``crossmodal.projection``). Per-row metadata is optional: a column a collection does
not have is None (a dataset has captions but no dates, folders or text read in photos).
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from crossmodal.captions import escapes_folder
from crossmodal.features.cache import FeatureCache, feature_files, features_signature, load_cache, read_manifest
from crossmodal.features.rows import ShardedRows

POOL_BLOCK = 4096  # matrix rows pooled at a time (bounded memory even for a 7-view cache)


class CollectionError(RuntimeError):
    """A collection that cannot be opened or searched; the message says what to run."""


@runtime_checkable
class Collection(Protocol):
    kind: str  # "dataset" or "photos"
    root: Path  # the folder every name is a path below
    names: Sequence[str]  # row -> the photo's path below root
    generation: int  # moves when the searchable photos change
    identity: dict  # what made the vectors: backbone, weights, preprocess, dim (of one pooled vector)
    rebuild_hint: str  # how to make the vectors again (when they were made by another backbone)
    matrix_key: str  # names the matrix; projections of it are cached under this key
    matrix_rows: np.ndarray  # (n,) integers: the matrix row holding each row's vector
    cache_folder: Path | None  # where projections of the matrix are kept (None: in memory only)
    # per-row metadata, None where the collection has none
    captions: Sequence[str] | None  # the photo's captions, newline-joined
    taken_at: Sequence[str | None] | None  # ISO date-time the photo was taken
    camera: Sequence[str | None] | None
    folders: Sequence[str] | None  # the folder below its indexed root ("" for the root itself)
    folder_paths: Sequence[str]  # the path an in: filter looks at: below an indexed folder, its own name first

    def __len__(self) -> int: ...

    def matrix_size(self) -> int:
        """Rows of the matrix (at least ``max(matrix_rows) + 1``)."""

    def pooled(self, start: int, stop: int) -> np.ndarray:
        """float32 (stop - start, dim): matrix rows ``start:stop`` as one vector each (the mean of views)."""

    def ocr_matches(self, words: Sequence[str], limit: int) -> list[tuple[int, str]]:
        """(row, its text) of the photos whose text read by OCR holds any of ``words``, best first."""

    def latest(self) -> "Collection":
        """This collection, or a newer snapshot of it when it has changed since."""

    def describe(self) -> str:
        """What is searched, for a person: "1,234 photos in ~/Pictures"."""

    def close(self) -> None:
        """Release what the collection holds open."""


def path_of(collection: Collection, row: int) -> str:
    """The absolute path of a row's photo."""
    return os.path.join(collection.root, collection.names[row])


def backbone_vectors(collection: Collection) -> np.ndarray:
    """float32 (len, dim): every row's backbone vector, in row order."""
    rows = np.asarray(collection.matrix_rows)
    if not len(rows):
        return np.zeros((0, int(collection.identity.get("dim", 0))), np.float32)
    out = np.empty((len(rows), int(collection.identity["dim"])), np.float32)
    order = np.argsort(rows, kind="stable")
    for start in range(0, len(rows), POOL_BLOCK):  # contiguous matrix blocks: one read each
        part = order[start:start + POOL_BLOCK]
        lo, hi = int(rows[part[0]]), int(rows[part[-1]]) + 1
        out[part] = collection.pooled(lo, hi)[rows[part] - lo]
    return out


def folder_of_name(name: str) -> str:
    """The folder part of a row name ("" for a name without one)."""
    return os.path.dirname(name.replace("\\", "/"))


class FolderNames(Sequence[str]):
    """The folder part of each name, worked out where asked (kept, they would double the names' memory)."""

    def __init__(self, names: Sequence[str]):
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return [folder_of_name(n) for n in self.names[key]]
        return folder_of_name(self.names[key])

    def __iter__(self) -> Iterator[str]:
        return map(folder_of_name, self.names)


class DatasetCollection:
    """A captioned dataset: the readable rows of its image feature cache, with their captions."""

    kind = "dataset"
    generation = 0
    taken_at = None
    camera = None

    def __init__(self, cache: FeatureCache, images_root: str | os.PathLike,
                 captions: dict[str, list[str]] | None = None):
        self.root = Path(images_root).resolve()
        valid = cache.valid_mask()  # (int32 where it fits: 40 MB less resident at ten million photos)
        self.matrix_rows = np.flatnonzero(valid).astype(np.int32 if len(valid) < 2**31 else np.int64)
        self.names = cache.ids.subset(self.matrix_rows) if hasattr(cache.ids, "subset") else \
            [cache.ids[r] for r in self.matrix_rows]
        # Defense in depth (the stages refuse such names when they read them): a hit's path is root
        # joined with its name, so no name may lead out of the folder.
        escaping = next((n for n in self.names if escapes_folder(n)), None)
        if escaping is not None:
            raise CollectionError(f"the image features in {cache.directory} name {escaping!r}, a path outside the "
                                  f"photos folder {self.root}; refused: rebuild them from captions without such names")
        # The matrix is mapped again for each read, only the files holding the rows read: pages read
        # while projecting do not stay resident.
        self._files, self._shape = feature_files(cache.directory), cache.features.shape
        self._file_starts = [a for _, a in self._files]
        self._views = len(cache.manifest.get("views") or (None,))
        self.identity = {"backbone": cache.manifest["backbone"], "weights": cache.manifest["weights"],
                         "preprocess": cache.manifest["preprocess"], "dim": cache.pooled_dim}
        self.rebuild_hint = "extract the image features again with the checkpoint's backbone " \
                            "(python batch_image_feature_extract.py --image-backbone NAME --views N)"
        self.cache_folder: Path | None = cache.directory
        signature = features_signature(cache.directory)
        blob = json.dumps({"manifest": cache.manifest, "features": signature[0] if len(signature) == 1 else signature},
                          sort_keys=True, default=str)
        self.matrix_key = "dataset" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
        # One newline-joined string per row instead of a list of strings per image: a third of the
        # memory for Flickr30K's 155,000 captions (caption lines never contain a newline).
        self.captions = ["\n".join(captions.get(n, ())) for n in self.names] if captions else None
        self.folders = FolderNames(self.names)
        self.folder_paths = self.names

    @classmethod
    def open(cls, image_features: str | os.PathLike, images_root: str | os.PathLike | None = None,
             captions_file: str | os.PathLike | None = None) -> "DatasetCollection":
        """The cache in ``image_features`` over the photos in ``images_root`` (default: the folder its
        extraction recorded), with the captions of ``captions_file`` (optional)."""
        from crossmodal.features.cache import StaleCacheError

        try:
            cache = load_cache(image_features, rerun="python batch_image_feature_extract.py")
        except StaleCacheError as err:
            raise CollectionError(str(err)) from err
        root = images_root or recorded_images_root(image_features)
        if root is None:
            raise CollectionError(f"{image_features} does not record its photos folder; name it with --images")
        captions = read_caption_map(captions_file, cache.ids) if captions_file else None
        return cls(cache, root, captions)

    def __len__(self) -> int:
        return len(self.names)

    def matrix_size(self) -> int:
        return self._shape[0]

    def pooled(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.zeros((0, self.identity["dim"]), np.float32)
        starts = self._file_starts
        files = self._files[bisect.bisect_right(starts, start) - 1:bisect.bisect_left(starts, stop)]
        first = files[0][1]
        rows = ShardedRows([np.load(path, mmap_mode="r") for path, _ in files])
        x = np.asarray(rows[start - first:stop - first], dtype=np.float32)
        if self._views > 1:  # rows are V views side by side, view-major: the image's vector is their mean
            x = x.reshape(len(x), self._views, -1).mean(1)
        return x

    def ocr_matches(self, words: Sequence[str], limit: int) -> list[tuple[int, str]]:
        return []

    def latest(self) -> "DatasetCollection":
        return self

    def describe(self) -> str:
        return f"{len(self):,} photos in {self.root}"

    def close(self) -> None:
        pass


def recorded_images_root(image_features: str | os.PathLike) -> Path | None:
    """The photos folder the image extraction stage recorded, where it still exists."""
    manifest = read_manifest(image_features) or {}
    recorded = manifest.get("images_dir") or manifest.get("root")
    return Path(recorded) if recorded and Path(recorded).is_dir() else None


def read_caption_map(captions_file: str | os.PathLike, names: Iterable[str]) -> dict[str, list[str]]:
    """name -> its captions, for the names given. ``names`` is passed over once, never held: a
    collection's ten million ids as a set of ``str`` would take more memory than the app itself."""
    from crossmodal.captions import read_captions

    by_image: dict[str, list[str]] = {}
    for cap in read_captions(captions_file).captions:
        by_image.setdefault(cap.image, []).append(cap.text)
    return {name: by_image[name] for name in names if name in by_image}
