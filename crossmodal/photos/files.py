"""Finding photos in folders: which files count, what to skip, and each file's content hash.

A folder is walked recursively (symlinked files are followed, symlinked folders are not, so a
link loop cannot make the walk endless). Hidden files and folders (names starting with ".") are
skipped. A file whose name ends in one of ``EXTENSIONS`` is a photo; one that cannot be looked at
(a dangling symlink, a permission problem) is reported with its reason instead of being dropped.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

# What Pillow (and pillow-heif for HEIC/HEIF) opens; a GIF or multi-page TIFF gives its first frame.
EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".gif", ".heic", ".heif"})
HASH_BLOCK = 1 << 20  # bytes read at a time while hashing: constant memory for any file size


@dataclass(frozen=True)
class FoundFile:
    path: str  # absolute: the resolved root joined with the path below it (links inside are kept)
    size: int
    mtime_ns: int
    error: str | None = None  # why the file cannot be read (then size and mtime are the link's own)
    ctime_ns: int | None = None  # the inode change time (a change that keeps size and mtime moves it)


def is_photo_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in EXTENSIONS


def _problem(path: str, err: OSError) -> FoundFile:
    try:
        st = os.lstat(path)
    except OSError:
        return FoundFile(path, 0, 0, f"cannot read: {err.strerror or err}")
    if os.path.islink(path):
        return FoundFile(path, st.st_size, st.st_mtime_ns, f"dangling symbolic link to {os.readlink(path)}")
    return FoundFile(path, st.st_size, st.st_mtime_ns, f"cannot read: {err.strerror or err}")


def scan_folder(root: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()) -> list[FoundFile]:
    """Every photo under ``root`` (resolved), sorted by path; folders in ``exclude`` are skipped, and
    folders that cannot be listed are reported as problems like files."""
    root = Path(root).expanduser().resolve()
    skip = {str(Path(e).resolve()) for e in exclude}
    found: list[FoundFile] = []

    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    os.scandir(root).close()  # an unreadable root is an error (PermissionError), not a listed problem

    def unreadable_folder(err: OSError) -> None:
        found.append(FoundFile(err.filename, 0, 0, f"cannot list folder: {err.strerror or err}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable_folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and os.path.join(dirpath, d) not in skip]
        for name in filenames:
            if not is_photo_name(name):
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError as err:
                found.append(_problem(path, err))
                continue
            found.append(FoundFile(path, st.st_size, st.st_mtime_ns, ctime_ns=st.st_ctime_ns))
    return sorted(found, key=lambda f: f.path)


def content_hash(path: str | os.PathLike) -> tuple[str, os.stat_result]:
    """(sha256 of the file's bytes, first 32 hex digits; the stat of the file that was read)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        for block in iter(lambda: f.read(HASH_BLOCK), b""):
            h.update(block)
    return h.hexdigest()[:32], st


def under(path: str, root: str) -> bool:
    """Whether ``path`` lies in the folder ``root`` (both absolute, normalised)."""
    return path.startswith(root if root.endswith(os.sep) else root + os.sep)
