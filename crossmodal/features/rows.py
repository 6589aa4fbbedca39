"""Rows of matrix files and lines of id files, read where asked: what lets one process serve a
collection of tens of millions of photos without holding it.

- ``ShardedRows``: several memory-mapped matrices (a sharded cache's shards) indexed as one.
- ``RowsOnDisk``: a matrix file whose rows are read with file reads, never kept mapped.
- ``RowsOf``: chosen rows of such a matrix, indexed as a matrix of their own.
- ``RowIds``: the lines of an ids file, read by their offsets.

Why reads and not one lasting mapping: on a page fault the kernel maps the pages around it too
(whole large folios on recent kernels) and they stay mapped, so random reads of a file of gigabytes
soon count whole as this process's resident memory. File reads go through the OS page cache, which
keeps hot rows just as well and counts against no process. Both hold the file open, so a cache
replaced on disk (renamed over) is read as it was until the engine reopens it.
"""
from __future__ import annotations

import os
import threading
from typing import Any, BinaryIO, Iterator, Sequence

import numpy as np


def row_index(key: Any, n: int) -> slice | np.ndarray:
    """``key`` (an int, a slice, an int array or a boolean mask over ``n`` rows) as a slice of step 1
    or an int64 array (0-d for an int) of rows in [0, n); out of range raises ``IndexError``."""
    if isinstance(key, slice):
        start, stop, step = key.indices(n)
        return slice(start, max(start, stop)) if step == 1 else np.arange(start, stop, step)
    index = np.asarray(key)
    if index.dtype == bool:
        if index.shape != (n,):
            raise IndexError(f"a boolean index of shape {index.shape} for {n} rows")
        return np.flatnonzero(index)
    if index.size and not np.issubdtype(index.dtype, np.integer):
        raise IndexError(f"rows are indexed by integers, got {index.dtype}")
    index = np.where(index < 0, index + n, index).astype(np.int64)
    if index.size and (index.min() < 0 or index.max() >= n):
        raise IndexError(f"row {key} of {n}" if index.ndim == 0 else f"row index out of range for {n} rows")
    return index


class _RowMatrix:
    """A (rows, ...) matrix read where indexed: ``rows[i]``, ``rows[a:b]``, ``rows[index_array]``,
    ``rows[mask]``, ``rows[rows_key, columns_key]``, ``np.asarray(rows)``; ``_rows`` reads them."""

    ndim = 2
    shape: tuple[int, ...]
    dtype: np.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):  # rows, then columns
            return self[key[0]][(slice(None),) + key[1:]]
        return self._rows(row_index(key, len(self)))

    def _rows(self, index: slice | np.ndarray) -> np.ndarray:
        raise NotImplementedError


class ShardedRows(_RowMatrix):
    """The rows of several memory-mapped (n_i, dim) matrices read as one (sum n_i, dim) matrix: what
    stages index a feature cache with (``rows[a:b]``, ``rows[index_array]``, ``rows[mask]``,
    ``rows[i]``, ``np.asarray(rows)``) reads the shards the rows are in, and nothing else."""

    def __init__(self, parts: Sequence[np.ndarray]):
        if not parts:
            raise ValueError("no shards")
        self.parts = list(parts)
        self.bounds = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.bounds[-1]), int(self.parts[0].shape[1]))
        self.dtype = self.parts[0].dtype

    def _rows(self, index: slice | np.ndarray) -> np.ndarray:
        if isinstance(index, slice):
            start, stop = index.start, index.stop
            pieces = [np.asarray(p[max(start - a, 0):max(min(stop, b) - a, 0)])
                      for p, a, b in zip(self.parts, self.bounds[:-1], self.bounds[1:])]
            return np.concatenate(pieces) if pieces else np.empty((0, self.shape[1]), self.dtype)
        if index.ndim == 0:
            s = int(np.searchsorted(self.bounds, index, side="right")) - 1
            return np.asarray(self.parts[s][int(index) - self.bounds[s]])
        out = np.empty(index.shape + (self.shape[1],), dtype=self.dtype)
        shard = np.searchsorted(self.bounds, index, side="right") - 1
        for s in np.unique(shard):
            here = shard == s
            local = index[here] - self.bounds[s]
            order = np.argsort(local, kind="stable")  # memory-mapped reads in file order
            out[np.flatnonzero(here)[order]] = self.parts[s][local[order]]
        return out


class RowsOf(_RowMatrix):
    """``matrix[rows[i]]`` as row i, read where asked: a large matrix's readable rows, uncopied."""

    def __init__(self, matrix: Any, rows: np.ndarray):
        self.matrix, self.rows = matrix, rows
        self.shape, self.dtype = (len(rows),) + tuple(matrix.shape[1:]), matrix.dtype

    def _rows(self, index: slice | np.ndarray) -> np.ndarray:
        return np.asarray(self.matrix[self.rows[index]])


class _OpenFile:
    """A file held open for reads at offsets from any thread (``os.preadv``; where the OS has none,
    seek and read under a lock)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.file: BinaryIO = open(path, "rb", buffering=0)
        self._fd = self.file.fileno()
        self._lock = None if hasattr(os, "preadv") else threading.Lock()

    def __getstate__(self) -> str:  # another process (a spawned loader worker) opens the file again
        return self.path

    def __setstate__(self, path: str) -> None:
        self.__init__(path)

    def read_into(self, buffer: memoryview, offset: int) -> None:
        done = 0
        while done < len(buffer):
            if self._lock is None:
                got = os.preadv(self._fd, [buffer[done:]], offset + done)
            else:
                with self._lock:
                    self.file.seek(offset + done)
                    got = self.file.readinto(buffer[done:]) or 0
            if not got:
                raise ValueError(f"{self.path}: ends at byte {offset + done}, before the rows asked for "
                                 f"(the file is shorter than its header says)")
            done += got

    def read(self, offset: int, size: int) -> bytes:
        out = bytearray(size)
        self.read_into(memoryview(out), offset)
        return bytes(out)


class RowsOnDisk(_RowMatrix):
    """The rows of a (rows, dim) matrix file (an ``.npy`` or a raw matrix at an offset), read with file
    reads where asked."""

    def __init__(self, matrix: np.memmap):
        self.offset, self.shape, self.dtype = int(matrix.offset), tuple(matrix.shape), matrix.dtype
        self._file = _OpenFile(matrix.filename)
        self._row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize

    @property
    def path(self) -> str:
        return self._file.path

    def _rows(self, index: slice | np.ndarray) -> np.ndarray:
        if isinstance(index, slice):
            out = np.empty((index.stop - index.start,) + self.shape[1:], self.dtype)
            start = self.offset + index.start * self._row_bytes
            self._file.read_into(memoryview(out.reshape(-1).view(np.uint8)), start)
            return out
        if index.ndim == 0:
            return self._rows(index.reshape(1))[0]
        if not index.size:
            return np.empty(index.shape + self.shape[1:], self.dtype)
        rows, where = np.unique(index, return_inverse=True)  # ascending: read in file order, each once
        got = np.empty((len(rows),) + self.shape[1:], self.dtype)
        breaks = (np.flatnonzero(np.diff(rows) != 1) + 1).tolist()  # runs of consecutive rows: one read each
        buffer, size = memoryview(got.reshape(-1).view(np.uint8)), self._row_bytes
        for a, b, first in zip([0] + breaks, breaks + [len(rows)], rows[[0] + breaks].tolist()):
            self._file.read_into(buffer[a * size:b * size], self.offset + first * size)
        return got[where.reshape(index.shape)]


class RowIds(Sequence[str]):
    """The row ids of an ids file, held as the file (open, read by offset) and the offsets of its
    lines: a list of ten million ``str`` takes about ten times the memory. Indexed and iterated like
    a list of ``str``."""

    READ_BLOCK = 1 << 24  # bytes read at a time to find the lines and hash them

    def __init__(self, data: np.ndarray | _OpenFile, bounds: np.ndarray, sha256: str | None = None):
        self._data = data  # the ids' bytes, or the ids file they are read from
        self._bounds = bounds  # line i: bytes bounds[i] to bounds[i + 1] - 1 ("\n" dropped)
        self._sha256 = sha256

    @classmethod
    def read(cls, path: str | os.PathLike) -> "RowIds":
        import hashlib

        opened = _OpenFile(path)  # the file read here is the one read from later, whatever is renamed over it
        h, ends, size = hashlib.sha256(), [], 0
        while block := opened.file.read(cls.READ_BLOCK):
            h.update(block)
            ends.append(np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10) + size)
            size += len(block)
        if size == 0:
            return cls(np.zeros(0, np.uint8), np.zeros(1, np.int64), h.hexdigest()[:16])
        data: np.ndarray | _OpenFile = opened
        if not ends[-1].size or ends[-1][-1] != size - 1:  # a last line without its newline: held with one
            data = np.append(np.frombuffer(opened.read(0, size), dtype=np.uint8), np.uint8(10))
            h.update(b"\n")
            ends.append(np.array([size]))
        offsets = np.concatenate([[0], np.concatenate(ends) + 1])
        return cls(data, offsets.astype(np.uint32 if offsets[-1] < 2**32 else np.int64), h.hexdigest()[:16])

    def _bytes(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = int(self._bounds[-1]) if stop is None else stop
        if isinstance(self._data, np.ndarray):
            return self._data[start:stop]
        return np.frombuffer(self._data.read(start, stop - start), dtype=np.uint8)

    def sha256(self) -> str:
        """``captions.list_hash`` of the ids (the hash of their lines), without decoding them."""
        if self._sha256 is None:
            import hashlib

            self._sha256 = hashlib.sha256(self._bytes().tobytes()).hexdigest()[:16]
        return self._sha256

    def __len__(self) -> int:
        return len(self._bounds) - 1

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return self._lines(start, max(start, stop))
        i = int(key) + (len(self) if key < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"row {key} of {len(self)}")
        return self._bytes(int(self._bounds[i]), int(self._bounds[i + 1]) - 1).tobytes().decode("utf-8")

    def _lines(self, start: int, stop: int) -> list[str]:
        if start == stop:
            return []
        return self._bytes(int(self._bounds[start]), int(self._bounds[stop]) - 1).tobytes().decode("utf-8").split("\n")

    def __iter__(self) -> Iterator[str]:
        block = 1 << 16  # lines read and decoded at a time
        for start in range(0, len(self), block):
            yield from self._lines(start, min(start + block, len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RowIds):
            return self.sha256() == other.sha256() and np.array_equal(self._bytes(), other._bytes())
        return isinstance(other, Sequence) and len(other) == len(self) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def subset(self, rows: np.ndarray) -> "RowIds":
        """The ids of ``rows`` (ascending), as their own ``RowIds`` held in memory."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == len(self) and (rows == np.arange(len(self))).all():
            return self
        starts, stops = self._bounds[rows].astype(np.int64), self._bounds[rows + 1].astype(np.int64)
        data = self._bytes()
        keep = np.zeros(len(data) + 1, dtype=np.int32)
        np.add.at(keep, starts, 1)
        np.add.at(keep, stops, -1)
        return RowIds(data[np.cumsum(keep[:-1]) > 0], np.concatenate([[0], np.cumsum(stops - starts)]).astype(np.int64))
