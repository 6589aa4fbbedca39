"""Files: atomic writes (a temporary file beside the target, fsync, then a rename over it), free-space
checks and digests.

A reader (or a rerun after a kill) sees either the old file or the complete new one, never half.
A failed write raises ``WriteError``, whose message names the file and says why in words ("disk
full while writing PATH"), and the temporary file is removed.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
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


class WriteError(OSError):
    """Writing a file failed; ``str()`` is one readable line naming the file."""

    def __init__(self, message: str, path: str | os.PathLike, code: int | None = None):
        super().__init__(code if code is not None else errno.EIO, message, str(path))
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotEnoughSpaceError(WriteError):
    """A long write refused before it starts: the disk has less free space than it needs."""


def format_bytes(n: float) -> str:
    units = ("bytes", "KB", "MB", "GB", "TB")
    i = 0
    while abs(n) >= 1000 and i < len(units) - 1:
        n /= 1000
        i += 1
    return f"{n:.0f} bytes" if i == 0 else f"{n:.1f} {units[i]}"


def _existing_folder(path: Path) -> Path:
    """``path`` or its nearest existing parent (a folder not made yet lives on that disk)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(folder: str | os.PathLike) -> int:
    return shutil.disk_usage(_existing_folder(Path(folder))).free


def check_free_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Refuse (``NotEnoughSpaceError``) a write of about ``needed`` bytes into ``folder`` that the
    disk has no room for, before any work is done; ``what`` names the write in the message."""
    free = free_bytes(folder)
    if needed > free:
        raise NotEnoughSpaceError(f"not enough free space in {folder} for {what}: about {format_bytes(needed)} "
                                  f"needed, {format_bytes(free)} free", folder, errno.ENOSPC)


def _is_disk_full(err: OSError) -> bool:
    # numpy's tofile reports a short write as "N requested and M written", without an errno
    return err.errno in (errno.ENOSPC, errno.EDQUOT) or (
        err.errno is None and "requested and" in str(err) and "written" in str(err))


def write_error(path: str | os.PathLike, err: OSError) -> WriteError:
    """``err``, raised while writing ``path``, as a ``WriteError`` naming the file."""
    if isinstance(err, WriteError):
        return err
    if _is_disk_full(err):
        try:
            free = f" ({format_bytes(free_bytes(Path(path).parent))} free there)"
        except OSError:
            free = ""
        return WriteError(f"disk full while writing {path}{free}", path, errno.ENOSPC)
    reason = err.strerror or str(err) or type(err).__name__
    return WriteError(f"cannot write {path}: {reason}", path, err.errno)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", fsync: bool = True) -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` when the block ends without error.

    ``fsync=False`` keeps the all-or-nothing rename but skips the flush to disk: for many small
    files that can be remade, where a flush each costs more than making them. An OSError in the
    block or while saving is raised as a ``WriteError`` naming ``path``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(err, OSError):
            raise write_error(path, err) from err
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
