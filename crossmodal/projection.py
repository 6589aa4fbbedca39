"""The image head over a collection's backbone vectors, kept on disk and extended as the matrix grows.

Projecting every photo through the trained image head is most of the work of opening a collection,
so its result is kept beside the matrix it was made from (the collection's ``cache_folder``):

    projected-<matrix key>-<checkpoint digest>.f16   (rows, embed_dim) float16 unit vectors
    querybias-<matrix key>-<checkpoint digest>.f32   (rows, banks) float32 querybank biases

one row per matrix row, in matrix order. The files only ever grow, like the photo index's matrix:
whichever process needs more rows appends them under a file lock, cutting a torn tail first, so a
restart projects only the photos added since. Files made for other matrices or checkpoints are
removed, and so are files found damaged (a value that is no number): they are made again. A folder
that cannot be written (a read-only index) costs a projection in memory instead.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from crossmodal.collection import Collection
from crossmodal.querybank import image_biases, text_banks

try:
    import fcntl
except ImportError:  # not POSIX: concurrent extension by two processes is not guarded
    fcntl = None

log = logging.getLogger(__name__)

PROJECT_BATCH = 2048  # matrix rows projected per step
PREFIXES = ("projected-", "querybias-", "projected_", "querybias_")  # (the last two: an earlier layout)


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


def _finite(path: Path, dtype: type, block_bytes: int = 1 << 24) -> bool:
    """Whether every value in the file is finite, read in blocks: not through the mapping the engine
    keeps, whose touched pages would all count as its resident memory."""
    if not path.is_file():
        return True
    item = np.dtype(dtype).itemsize
    with open(path, "rb") as f:
        while chunk := f.read(block_bytes - block_bytes % item):
            if not np.isfinite(np.frombuffer(chunk[:len(chunk) - len(chunk) % item], dtype=dtype)).all():
                return False
    return True


class ProjectionCache:
    """One checkpoint's image-head projections (and querybank biases) of collections' matrices."""

    def __init__(self, model: Any, checkpoint_digest: str, querybank: dict | None, device: torch.device):
        self.model = model
        self.digest = checkpoint_digest
        self.querybank = querybank
        self.banks = text_banks(querybank)
        self.device = device
        self.embed_dim = model.config_dict()["embed_dim"]
        self._memory: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # where the folder cannot be written

    @torch.inference_mode()
    def _project(self, collection: Collection, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        model = self.model.to(self.device).eval()
        proj = np.empty((stop - start, self.embed_dim), dtype=np.float16)
        for s in range(start, stop, PROJECT_BATCH):
            x = torch.from_numpy(collection.pooled(s, min(s + PROJECT_BATCH, stop)))
            proj[s - start:s - start + len(x)] = model.encode_image(x.to(self.device)).cpu().numpy()
        if not self.banks:
            return proj, np.zeros((len(proj), 0), dtype=np.float32)
        biases = image_biases(self.querybank, proj, progress=len(proj) > 100_000)
        return proj, np.stack([biases[b] for b in self.banks], axis=1).astype(np.float32)

    def matrix(self, collection: Collection, again: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """((matrix rows, embed_dim) float16 projections, (matrix rows, banks) float32 biases) of
        every row of the collection's matrix, projecting the rows not projected yet (``again``: and
        all of them once more when the kept ones are found damaged)."""
        n = collection.matrix_size()
        if n == 0:
            return np.zeros((0, self.embed_dim), np.float16), np.zeros((0, len(self.banks)), np.float32)
        key = f"{collection.matrix_key}-{self.digest}"
        if collection.cache_folder is None:
            return self._in_memory(collection, key, n)
        folder = collection.cache_folder
        proj_path, bias_path = folder / f"projected-{key}.f16", folder / f"querybias-{key}.f32"
        proj_bytes, bias_bytes = self.embed_dim * 2, len(self.banks) * 4
        try:
            with _locked(proj_path):
                have = _whole_rows(proj_path, proj_bytes)
                if self.banks:
                    have = min(have, _whole_rows(bias_path, bias_bytes))
                if have < n:
                    t0 = time.perf_counter()
                    proj, bias = self._project(collection, have, n)
                    _append(proj_path, have, proj_bytes, proj)
                    if self.banks:
                        bias_path.touch()
                        _append(bias_path, have, bias_bytes, bias)
                    log.info("projected %d photo vectors in %.2f s", n - have, time.perf_counter() - t0)
                    self._remove_others(folder, key)
            proj = np.memmap(proj_path, dtype=np.float16, mode="r", shape=(n, self.embed_dim))
            bias = (np.memmap(bias_path, dtype=np.float32, mode="r", shape=(n, len(self.banks))) if self.banks
                    else np.zeros((n, 0), np.float32))
            if again and not (_finite(proj_path, np.float16) and _finite(bias_path, np.float32)):  # damaged
                log.warning("the projections in %s are damaged; projecting the photos again", proj_path)
                del proj, bias
                proj_path.unlink(missing_ok=True)
                bias_path.unlink(missing_ok=True)
                return self.matrix(collection, again=False)
            return proj, bias
        except OSError as err:  # a read-only folder: projected in memory, kept for this process only
            log.warning("cannot keep projections in %s (%s); projecting in memory", folder, err)
            return self._in_memory(collection, key, n)

    def _in_memory(self, collection: Collection, key: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        old_proj, old_bias = self._memory.get(key, (np.zeros((0, self.embed_dim), np.float16),
                                                    np.zeros((0, len(self.banks)), np.float32)))
        if len(old_proj) < n:
            proj, bias = self._project(collection, len(old_proj), n)
            self._memory[key] = (np.concatenate([old_proj, proj]), np.concatenate([old_bias, bias]))
        proj, bias = self._memory[key]
        return proj[:n], bias[:n]

    @staticmethod
    def _remove_others(folder: Path, key: str) -> None:
        for old in folder.iterdir():
            if old.name.startswith(PREFIXES) and key not in old.name:
                old.unlink(missing_ok=True)
