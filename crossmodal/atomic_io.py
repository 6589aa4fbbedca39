"""Files: atomic writes (a temporary file beside the target, fsync, then a rename over it) and digests.

A reader (or a rerun after a kill) sees either the old file or the complete new one, never half.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np


def file_digest(path: str | os.PathLike) -> str:
    """sha256 (first 16 hex digits) of a file's bytes: the identity caches and indexes record."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", fsync: bool = True) -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` when the block ends without error.

    ``fsync=False`` keeps the all-or-nothing rename but skips the flush to disk: for many small
    files that can be remade, where a flush each costs more than making them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, array)


def atomic_save_with(path: str | os.PathLike, save: Callable[[IO], None]) -> None:
    """Atomically write ``path`` with a saver that takes a binary file (e.g. ``torch.save``)."""
    with atomic_open(path, "wb") as f:
        save(f)
