"""Image–text sets in img2dataset's output layout, as folders or as webdataset ``.tar`` shards.

img2dataset writes numbered shards of samples ``KEY.jpg`` (or ``.png``, ``.webp``) with ``KEY.txt``
(the caption) and ``KEY.json`` (its metadata): either as folders ``00000/KEY.jpg`` or as tar
files ``00000.tar`` holding the same files. Both are read here as a captioned dataset whose image
names are paths below the root: ``00000/KEY.jpg``, and ``00000.tar/KEY.jpg`` for a member of a
shard, so every stage names, caches and serves them like any other photo.

A member of a shard is read by its offset, from an index of the shard's members built once per
process (a tar holds no index of its own; its headers are read without its data).
"""
from __future__ import annotations

import functools
import io
import os
import re
import tarfile
from pathlib import Path
from typing import BinaryIO, Iterator

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")  # what img2dataset writes
SHARD_FOLDER_RE = re.compile(r"[0-9]+")  # img2dataset's shard names: 00000, 00001, ...
TAR_SEP = ".tar/"  # "00000.tar/KEY.jpg": member KEY.jpg of the shard 00000.tar


class ShardError(OSError):
    """A shard or caption that cannot be read (a damaged tar file, a caption that is not UTF-8); the
    message names it."""


def _text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ShardError(f"{where}: not UTF-8 text (byte 0x{data[err.start]:02x} at byte {err.start}); "
                         "save the caption as UTF-8") from err


def is_img2dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder of img2dataset output: numbered shard folders or ``.tar`` files."""
    path = Path(path)
    return path.is_dir() and bool(shard_folders(path) or shard_tars(path))


def shard_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if SHARD_FOLDER_RE.fullmatch(p.name) and p.is_dir())


def shard_tars(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.suffix == ".tar" and p.is_file())


def samples(root: str | os.PathLike) -> Iterator[tuple[str, str | None, str]]:
    """(image name below ``root``, its caption or None when it has no ``.txt``, where it was read)
    for every image of the shard folders and ``.tar`` shards of ``root``, in shard and key order."""
    root = Path(root)
    for folder in shard_folders(root):
        files = sorted(os.listdir(folder))
        present = set(files)
        for name in files:
            stem, suffix = os.path.splitext(name)
            if suffix.lower() not in IMAGE_SUFFIXES:
                continue
            text_file = folder / f"{stem}.txt"
            caption = _text(text_file.read_bytes(), str(text_file)) if f"{stem}.txt" in present else None
            yield f"{folder.name}/{name}", caption, str(text_file)
    for shard in shard_tars(root):
        index = member_index(shard)
        for name in sorted(index):
            stem, suffix = os.path.splitext(name)
            if suffix.lower() not in IMAGE_SUFFIXES:
                continue
            where = f"{shard}:{stem}.txt"
            caption = _text(read_member(shard, f"{stem}.txt"), where) if f"{stem}.txt" in index else None
            yield f"{shard.name}/{name}", caption, where


@functools.lru_cache(maxsize=256)
def _index(shard: str, size: int, mtime_ns: int) -> dict[str, tuple[int, int]]:
    try:
        with tarfile.open(shard, "r:") as tar:  # plain tar only: a member is read by its offset
            return {m.name: (m.offset_data, m.size) for m in tar if m.isfile()}
    except (tarfile.TarError, EOFError) as err:
        raise ShardError(f"{shard}: not a readable tar shard ({err})") from err


def member_index(shard: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Member name -> (data offset, size) of a tar shard; rebuilt when the file changes."""
    st = os.stat(shard)
    return _index(os.fspath(shard), st.st_size, st.st_mtime_ns)


def read_member(shard: str | os.PathLike, member: str) -> bytes:
    """The bytes of one member of a tar shard; FileNotFoundError when it holds no such member."""
    found = member_index(shard).get(member)
    if found is None:
        raise FileNotFoundError(f"{shard} holds no member {member!r}")
    offset, size = found
    with open(shard, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise ShardError(f"{shard}: member {member!r} is cut short (the shard is truncated)")
    return data


def split_member(path: str | os.PathLike) -> tuple[str, str] | None:
    """(shard, member) when ``path`` names a member of a tar shard (``.../00000.tar/KEY.jpg``, the
    shard an existing file), else None."""
    text = os.fspath(path)
    cut = text.rfind(TAR_SEP)
    if cut < 0:
        return None
    shard, member = text[: cut + len(TAR_SEP) - 1], text[cut + len(TAR_SEP):]
    return (shard, member) if member and "/" not in member and os.path.isfile(shard) else None


def open_source(path: str | os.PathLike) -> str | os.PathLike | BinaryIO:
    """What to open an image from: ``path`` itself, or the bytes of a shard member it names."""
    member = split_member(path)
    return path if member is None else io.BytesIO(read_member(*member))


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a file, or of the shard member ``path`` names."""
    member = split_member(path)
    if member is not None:
        return read_member(*member)
    with open(path, "rb") as f:
        return f.read()


def exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file, or a member of a tar shard."""
    member = split_member(path)
    if member is None:
        return os.path.isfile(path)
    try:
        return member[1] in member_index(member[0])
    except OSError:  # (a ShardError too)
        return False
