"""Searching a photo index, including one that is still being filled.

``PhotoSearch`` is what a page or the command line holds: it answers text and photo queries over
the photos of a ``PhotoStore`` (optionally only those under some folders) with one checkpoint's
heads, and picks up what an indexer commits meanwhile: before each query it compares the store's
generation (one small SQLite read) and, when it moved, takes a new snapshot, projects the rows
added since (``ProjectedRows``) and swaps in a new search index. It answers like a
``retrieval.Retriever`` (``search_text``, ``search_image``, ``describe``, ``images_root``...).

The head projections of the matrix rows (and their querybank biases) are kept beside the matrix
as ``projected-<matrix>-<checkpoint digest>.f16`` and ``querybias-<matrix>-<digest>.f32``:
append-only like the matrix, extended under a file lock by whichever process needs more rows, so
a restart projects only the photos added since. Files for other checkpoints are removed.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from crossmodal.atomic_io import file_digest
from crossmodal.backbones import resolve_device, views_of
from crossmodal.name_match import NameIndex
from crossmodal.photos.files import under
from crossmodal.photos.store import PhotoStore, Snapshot
from crossmodal.querybank import image_biases, text_banks
from crossmodal.retrieval import PROJECT_BATCH, TOP_K, Hit, Retriever, RetrieverError, load_text_backbone

try:
    import fcntl
except ImportError:  # not POSIX: concurrent extension by two processes is not guarded
    fcntl = None

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "ab") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield


def _whole_rows(path: Path, row_bytes: int) -> int:
    return path.stat().st_size // row_bytes if path.is_file() else 0


def _append(path: Path, rows: int, row_bytes: int, data: np.ndarray) -> None:
    """Write ``data`` after the first ``rows`` whole rows of ``path`` (cutting a torn tail), fsynced."""
    with open(path, "r+b") as f:
        f.truncate(rows * row_bytes)
        f.seek(rows * row_bytes)
        f.write(np.ascontiguousarray(data).tobytes())
        f.flush()
        os.fsync(f.fileno())


class ProjectedRows:
    """The image head over every row of a store's matrix, and the querybank biases of the results."""

    def __init__(self, folder: Path, model: Any, checkpoint_digest: str, querybank: dict | None,
                 device: torch.device):
        self.folder = folder
        self.model = model
        self.digest = checkpoint_digest
        self.querybank = querybank
        self.banks = text_banks(querybank)
        self.device = device
        self.embed_dim = model.config_dict()["embed_dim"]
        self._memory: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # where the folder is read-only

    @torch.inference_mode()
    def _project(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        model = self.model.to(self.device).eval()
        proj = np.empty((len(vectors), self.embed_dim), dtype=np.float16)
        for start in range(0, len(vectors), PROJECT_BATCH):
            x = torch.from_numpy(np.asarray(vectors[start:start + PROJECT_BATCH], dtype=np.float32))
            proj[start:start + len(x)] = model.encode_image(x.to(self.device)).cpu().numpy()
        if not self.banks:
            return proj, np.zeros((len(vectors), 0), dtype=np.float32)
        biases = image_biases(self.querybank, proj)
        return proj, np.stack([biases[b] for b in self.banks], axis=1).astype(np.float32)

    def rows(self, snapshot: Snapshot) -> tuple[np.ndarray, np.ndarray]:
        """((matrix rows, embed_dim) float16 projections, (matrix rows, banks) float32 biases)."""
        n = len(snapshot.matrix)
        if n == 0 or snapshot.matrix_name is None:
            return np.zeros((0, self.embed_dim), np.float16), np.zeros((0, len(self.banks)), np.float32)
        key = f"{Path(snapshot.matrix_name).stem}-{self.digest}"
        proj_path, bias_path = self.folder / f"projected-{key}.f16", self.folder / f"querybias-{key}.f32"
        proj_bytes, bias_bytes = self.embed_dim * 2, len(self.banks) * 4
        try:
            with _locked(proj_path):
                have = _whole_rows(proj_path, proj_bytes)
                if self.banks:
                    have = min(have, _whole_rows(bias_path, bias_bytes))
                if have < n:
                    t0 = time.perf_counter()
                    proj, bias = self._project(snapshot.matrix[have:n])
                    _append(proj_path, have, proj_bytes, proj)
                    if self.banks:
                        bias_path.touch()
                        _append(bias_path, have, bias_bytes, bias)
                    log.info("projected %d new photo vectors in %.2f s", n - have, time.perf_counter() - t0)
                    self._remove_others(key)
            proj = np.memmap(proj_path, dtype=np.float16, mode="r", shape=(n, self.embed_dim))
            bias = (np.memmap(bias_path, dtype=np.float32, mode="r", shape=(n, len(self.banks))) if self.banks
                    else np.zeros((n, 0), np.float32))
            return proj, bias
        except OSError as err:  # a read-only index: projected in memory, kept for this process only
            old_proj, old_bias = self._memory.get(key, (np.zeros((0, self.embed_dim), np.float16),
                                                        np.zeros((0, len(self.banks)), np.float32)))
            if len(old_proj) < n:
                log.warning("cannot keep projections in %s (%s); projecting in memory", self.folder, err)
                proj, bias = self._project(snapshot.matrix[len(old_proj):n])
                self._memory[key] = (np.concatenate([old_proj, proj]), np.concatenate([old_bias, bias]))
            proj, bias = self._memory[key]
            return proj[:n], bias[:n]

    def _remove_others(self, key: str) -> None:
        for prefix in ("projected-", "querybias-"):
            for old in self.folder.glob(f"{prefix}*"):
                if old.name.split(".")[0] != f"{prefix}{key}":
                    old.unlink(missing_ok=True)


@dataclass(frozen=True)
class PhotoRows:
    """What is searchable at one generation: the Retriever and, by its row, each photo's details
    (for filters, dates and folders in ``photos.search``)."""
    retriever: Retriever
    ids: np.ndarray  # photo ids in the store (the OCR index's rowids)
    paths: list[str]
    roots: list[str]  # the indexed folder each photo lies in
    taken_at: list[str | None]
    camera: list[str | None]

    @functools.cached_property
    def days(self) -> list[date | None]:
        """The day each photo was taken (None when unknown)."""
        return [_day(t) for t in self.taken_at]

    @functools.cached_property
    def name_index(self) -> NameIndex:
        """The words of the photos' file and folder names (``crossmodal.name_match``)."""
        return NameIndex(self.retriever.names)


def _day(iso: str | None) -> date | None:
    try:
        return date.fromisoformat(iso[:10]) if iso else None
    except ValueError:
        return None


class PhotoSearch:
    """Text-to-photo (and photo-to-photo) search over a photo index, following its growth.

    ``roots``: search only photos under these folders (all indexed photos when None). Hits are
    named by their path below ``images_root``, the folder the roots share.
    """

    def __init__(self, folder: str | os.PathLike, checkpoint: str | os.PathLike, model: Any, state: dict, *,
                 roots: Sequence[str | os.PathLike] | None = None, device: str | torch.device = "auto",
                 text_weights: str | os.PathLike | None = None, image_weights: str | os.PathLike | None = None,
                 models_dir: str | os.PathLike | None = None, index_kind: str = "auto", load_text: bool = True):
        backbones = state.get("backbones")
        if not backbones or "image" not in backbones or "text" not in backbones:
            raise RetrieverError(f"{checkpoint} records no backbones; retrain it with `python run_train.py`")
        self.store = PhotoStore(folder)
        self.checkpoint = Path(checkpoint)
        self.model = model.eval()
        self.state_backbones = backbones
        self.calibration = state.get("calibration")  # hits carry confidences when the checkpoint has one
        self.device = resolve_device(device)
        self.index_kind = index_kind
        self._image_weights, self._models_dir = image_weights, models_dir
        self._filter = [str(Path(r).expanduser().resolve()) for r in roots] if roots is not None else None
        self.roots: list[str] = []  # the folders searched (with roots=None: every indexed folder)
        self.images_root = self.store.folder  # the folder they share (hits are named below it)
        self._text = load_text_backbone(backbones["text"], text_weights, models_dir, self.device) if load_text else None
        self._projected = ProjectedRows(self.store.folder, self.model, file_digest(checkpoint),
                                        state.get("querybank"), self.device)
        self._retriever: Retriever | None = None
        self._rows: PhotoRows | None = None
        self.indexing: Any = None  # the IndexingThread filling this index, when one runs beside it
        self._generation: int | None = None
        self._refreshing = threading.Lock()
        self.refresh()

    def _check_identity(self, identity: dict | None) -> None:
        if identity is None:
            return
        exp = self.state_backbones["image"]
        dim = self.model.config_dict()["image_dim"]
        if (identity.get("backbone"), identity.get("weights")) != (exp["backbone"], exp["weights"]) \
                or views_of(identity.get("preprocess")) != views_of(exp.get("preprocess")) or identity["dim"] != dim:
            raise RetrieverError(
                f"the photo index in {self.store.folder} holds vectors of {identity.get('backbone')} "
                f"({identity.get('weights')}, views {list(views_of(identity.get('preprocess')))}), but "
                f"{self.checkpoint} was trained on {exp['backbone']} ({exp['weights']}, views "
                f"{list(views_of(exp.get('preprocess')))}); index the folders again with this checkpoint")

    def refresh(self) -> bool:
        """Take up what was committed since the last call; True when the searched photos changed.
        Cheap when nothing changed; while another thread refreshes, returns at once."""
        if self.store.generation() == self._generation:
            return False
        if not self._refreshing.acquire(blocking=self._retriever is None):
            return False
        try:
            snap = self.store.snapshot(self._filter)
            if snap.generation == self._generation:
                return False
            self._check_identity(snap.identity)
            self.roots = self._filter if self._filter is not None else self.store.roots()
            if self.roots:
                self.images_root = Path(os.path.commonpath(self.roots))
            proj, bias = self._projected.rows(snap)
            retriever = self._build(snap, proj, bias) if len(snap) else None
            self._rows = self._details(snap, retriever) if retriever is not None else None
            self._retriever = retriever
            self._generation = snap.generation
            return True
        finally:
            self._refreshing.release()

    def _details(self, snap: Snapshot, retriever: Retriever) -> PhotoRows:
        details = {r.path: r for r in self.store.records(self._filter, ["ok"])}
        taken, camera, roots = [], [], []
        for path in snap.paths:
            rec = details.get(path)  # (a record re-recorded since the snapshot: its details then)
            taken.append(rec.taken_at if rec else None)
            camera.append(rec.camera if rec else None)
            roots.append(next((r for r in self.roots if under(path, r)), str(self.images_root)))
        return PhotoRows(retriever, snap.ids, list(snap.paths), roots, taken, camera)

    def rows(self) -> PhotoRows | None:
        """What is searchable now (after taking up new commits), None before any photo is."""
        self.refresh()
        return self._rows

    def _build(self, snap: Snapshot, proj: np.ndarray, bias: np.ndarray) -> Retriever:
        root = str(self.images_root)
        names = [os.path.relpath(p, root) for p in snap.paths]
        old = self._retriever
        biases = {b: np.ascontiguousarray(bias[snap.rows, i]) for i, b in enumerate(self._projected.banks)}
        return Retriever(self.model, self.state_backbones, names, np.ascontiguousarray(proj[snap.rows]), root,
                         None, self._text, self.device, self._image_weights, self.index_kind,
                         source=str(self.checkpoint), biases=biases, models_dir=self._models_dir,
                         calibration=self.calibration,
                         image_backbone=old.loaded_image_backbone if old is not None else None)

    # ---------------------------------------------------------------------------------------------
    # the Retriever interface the page and the CLI use

    def search_text(self, query: str, k: int = TOP_K) -> list[Hit]:
        """The k indexed photos that best match a description (what is indexed so far)."""
        self.refresh()
        retriever = self._retriever
        if retriever is None:
            Retriever.check_query(query)
            return []
        return retriever.search_text(query, k)

    def search_image(self, image: Any, k: int = TOP_K) -> list[Hit]:
        """The k indexed photos most similar to a PIL image or an image file (``Retriever.search_image``)."""
        self.refresh()
        retriever = self._retriever
        if image is None:
            raise ValueError("no image: upload a photo to search with")
        return retriever.search_image(image, k) if retriever is not None else []

    def served_photos(self) -> tuple[Any, Any]:
        """(folder, names) of the photos searchable now, the same objects until the index changes:
        the page's allow-list (``crossmodal.serving.PhotoFiles.of``) follows the index with it."""
        self.refresh()
        retriever = self._retriever
        return (retriever.images_root, retriever.names) if retriever is not None else (self.images_root, ())

    def duplicate_groups(self, threshold: float | None = None) -> list:
        """The near-duplicate groups among the searchable photos (``crossmodal.duplicates``), from the
        stored vectors; paths named as the hits are (below ``images_root``)."""
        from crossmodal.duplicates import DUPLICATE_THRESHOLD, photo_duplicates

        self.refresh()
        if not self.roots:
            return []
        return photo_duplicates(self.store.folder, self.roots, DUPLICATE_THRESHOLD if threshold is None else threshold)

    def __len__(self) -> int:
        return len(self._retriever) if self._retriever is not None else 0

    @property
    def generation(self) -> int | None:
        """The store generation being searched."""
        return self._generation

    @property
    def kind(self) -> str:
        return self._retriever.kind if self._retriever is not None else "exact"

    @property
    def recall_at_10(self) -> float | None:
        return self._retriever.recall_at_10 if self._retriever is not None else None

    @property
    def has_captions(self) -> bool:
        return False

    def captions_of(self, row: int) -> list[str]:
        return []

    def describe(self) -> str:
        if self._retriever is None:
            return f"no photos indexed yet in {', '.join(self.roots) or self.store.folder}"
        return self._retriever.describe()

    def close(self) -> None:
        self.store.close()
