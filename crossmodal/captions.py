"""Captioned image sets in the Flickr30K layout, and their train/val/test splits.

A caption file holds lines ``<image>.jpg#<n><TAB><caption>`` (Flickr30K and Flickr8k alike).
Splits come from split-list files (one image name per line) when given, else from a seeded
split that is written out once so every later stage reads the same one.

Every file here (and the keyword file, ``crossmodal.keywords.samples``) is read through
``dataset_lines`` and every image name it holds is checked by ``image_name_problem``; anything
refused is a DatasetError naming the file and line.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import random
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from crossmodal import webdataset
from crossmodal.atomic_io import atomic_write_text

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
# Files accepted for each split; Flickr8k calls its validation split "dev".
SPLIT_FILE_CANDIDATES = {"train": ("train.txt",), "val": ("val.txt", "dev.txt"), "test": ("test.txt",)}
# The seeded split made when no split lists are given: Karpathy's Flickr30K proportions.
SPLIT_SEED = 0
SPLIT_FRACTIONS = {"train": 29000 / 31014, "val": 1014 / 31014, "test": 1000 / 31014}
_NUMBER_RE = re.compile(r"[0-9]+")  # ASCII only: int() also takes other scripts' digits
KEYWORD_ID_SEP = "::"  # keyword row id: "<image>#<n>::<phrase>"

# Refused anywhere in a dataset file: C0 controls but the tab (a column separator) and the line
# ends LF and CRLF, DEL, C1 controls, and a byte-order mark after the start (files joined together).
_TEXT_BAD_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff]")
_LONE_CR = re.compile("\r(?!\n)")  # searched apart: with it, the search above is several times slower
# Refused in an ASCII image name (the common case, checked without unicodedata).
_ASCII_NAME_BAD_CHAR = re.compile("[\x00-\x1f\x7f]")
# Unicode categories refused in an image name: controls, invisible format characters (zero-width
# spaces, BOM, direction overrides), lone surrogates, line and paragraph separators.
_NAME_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_DRIVE_RE = re.compile(r"[A-Za-z]:")
_SEPARATORS_RE = re.compile(r"[\\/]")
_CHAR_NAMES = {"\t": "a tab", "\x00": "a NUL character", "\r": "a carriage return", "\ufeff": "a byte-order mark"}


def keyword_row_id(caption_key: str, phrase: str) -> str:
    """The row id of a keyword sample: its source caption's key and the phrase."""
    return f"{caption_key}{KEYWORD_ID_SEP}{phrase}"


def image_of_row_id(row_id: str) -> str:
    """The image a caption key ("img.jpg#3") or keyword row id belongs to."""
    return row_id.split(KEYWORD_ID_SEP, 1)[0].rsplit("#", 1)[0]


class DatasetError(ValueError):
    """A caption or split file that cannot be used; the message names the file and line."""


def _describe_char(ch: str) -> str:
    code = f"U+{ord(ch):04X}"
    if ch in _CHAR_NAMES:
        return f"{_CHAR_NAMES[ch]} ({code})"
    return f"{unicodedata.name(ch, 'a control character').lower()} ({code})"


def escapes_folder(name: str) -> bool:
    """Whether a folder joined with ``name`` can be a path outside it, on any system: an absolute
    path, a Windows drive (``C:``), or a ``..`` part (``/`` or ``\\`` separated)."""
    if not (".." in name or name.startswith(("/", "\\")) or name[1:2] == ":"):
        return False  # the usual name, decided without splitting it
    return (name.startswith(("/", "\\")) or bool(_DRIVE_RE.match(name))
            or ".." in _SEPARATORS_RE.split(name))


def image_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an image in a caption, split or keyword file; None if it can.

    An image name is a relative path below the images folder, written the same on every system:

    - not empty; no absolute path, no drive letter (``C:``), no backslash (use ``/`` between
      folders); no part that is empty, ``.`` or ``..`` (so ``images/<name>`` stays inside the
      folder and the name is the one spelling of its path);
    - no leading or trailing whitespace (``"a.jpg "`` would be another image than ``"a.jpg"``);
    - no control characters (C0 including tab and NUL, DEL, C1) and no invisible format
      characters (byte-order mark, zero-width spaces, direction overrides), no line separators;
    - no ``#`` (it separates the caption number) and no ``::`` (it separates a keyword row id).

    Inner spaces and any other Unicode are fine. The search engine applies the first rule's
    containment part (``escapes_folder``) to every name it serves, own-photo folders included.
    """
    if not name:
        return "an empty image name"
    if name.isascii():
        match = _ASCII_NAME_BAD_CHAR.search(name)
        bad = match.group() if match else None
    else:
        bad = next((c for c in name if unicodedata.category(c) in _NAME_BAD_CATEGORIES), None)
    if bad is not None:
        return f"{_describe_char(bad)} in the image name {name!r}"
    if "#" in name:
        return f"'#' in the image name {name!r} (it separates the caption number)"
    if KEYWORD_ID_SEP in name:
        return f"{KEYWORD_ID_SEP!r} in the image name {name!r} (it separates keyword row ids)"
    if name != name.strip():
        return f"leading or trailing whitespace in the image name {name!r}"
    if escapes_folder(name):
        return f"the image name {name!r} points outside the images folder (names are relative paths below it)"
    if "\\" in name:
        return f"a backslash in the image name {name!r} (separate folders with '/')"
    if any(part in ("", ".") for part in name.split("/")):
        return f"an empty or '.' part in the image name {name!r} (write it as 'folder/photo.jpg')"
    return None


def check_image_name(name: str, where: str) -> str:
    """``name`` if ``image_name_problem`` accepts it, else DatasetError ``"<where>: <problem>"``
    (``where`` is ``file:line``)."""
    problem = image_name_problem(name)
    if problem:
        raise DatasetError(f"{where}: {problem}")
    return name


def dataset_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, without the line end (LF or CRLF).

    A byte-order mark is skipped at the very start of the file only. Bytes that are not UTF-8,
    and a control character other than the tab (NUL, a lone CR, DEL, C1) or a byte-order mark
    anywhere else, raise DatasetError naming the file and line when that line is reached (so a
    reader's own errors on earlier lines come first).
    """
    path = Path(path)
    data = path.read_bytes()  # whole: one decode and one search are much faster than per line
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    error: tuple[int, str] | None = None  # (line, why) of the first refused byte or character
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        text = data[start : start + err.start].decode("utf-8")  # the valid part before it
        pos = start + err.start
        column = pos - data.rfind(b"\n", 0, pos)
        error = (data.count(b"\n", 0, pos) + 1,
                 f"not UTF-8 text (byte 0x{data[pos]:02x} at byte {column} of the line); save the file as UTF-8")
    found = [m for m in (_TEXT_BAD_CHAR.search(text), _LONE_CR.search(text) if "\r" in text else None) if m]
    if found:  # it comes before an undecodable byte: the text ends there
        pos = min(m.start() for m in found)
        column = pos - text.rfind("\n", 0, pos)
        error = (text.count("\n", 0, pos) + 1, f"{_describe_char(text[pos])} at column {column}")
    lines = text.split("\n")
    if error is None and lines[-1] == "":  # the file ends with a line end
        lines.pop()
    for lineno, line in enumerate(lines, start=1):
        if error is not None and lineno == error[0]:
            raise DatasetError(f"{path}:{lineno}: {error[1]}")
        yield lineno, line.removesuffix("\r")


@dataclass(frozen=True)
class Caption:
    image: str  # file name, e.g. "1000092795.jpg"
    number: int  # the n of "#n"
    text: str

    @property
    def key(self) -> str:
        """The caption key "image.jpg#n": a caption's row id in the caption feature cache."""
        return f"{self.image}#{self.number}"


@dataclass
class CaptionSet:
    """Captions in file order, with the image list in first-seen order."""

    captions: list[Caption]
    images: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.images = list(dict.fromkeys(cap.image for cap in self.captions))

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.captions]

    @property
    def keys(self) -> list[str]:
        return [c.key for c in self.captions]

    def subset(self, images: Iterable[str]) -> "CaptionSet":
        """The captions of the given images (file order kept)."""
        keep = set(images)
        return CaptionSet([c for c in self.captions if c.image in keep])


def read_captions(path: str | os.PathLike) -> CaptionSet:
    """Parse a Flickr30K-format caption file: lines ``<image>#<n><TAB><caption>``, blank lines
    skipped, runs of whitespace in a caption collapsed to one space. The image name is checked by
    ``image_name_problem``; a malformed line (another column count, a bad name or number, an empty
    or repeated caption, see also ``dataset_lines``) raises DatasetError naming the file and line.

    ``path`` may also be a folder of img2dataset output (``read_img2dataset``)."""
    path = Path(path)
    if path.is_dir():
        return read_img2dataset(path)
    if not path.is_file():
        raise DatasetError(f"caption file not found: {path}")
    captions: list[Caption] = []
    seen: dict[tuple[str, int], int] = {}
    good_names: set[str] = set()  # each image's name is checked once (it has several captions)
    for lineno, line in dataset_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) > 2:
            raise DatasetError(f"{path}:{lineno}: {len(fields)} tab-separated columns, expected 2 "
                               f"('<image>#<n><TAB><caption>'; a tab inside the caption?): {line[:80]!r}")
        image, sep, number = fields[0].rpartition("#")
        if len(fields) < 2 or not sep or not _NUMBER_RE.fullmatch(number):
            raise DatasetError(f"{path}:{lineno}: expected '<image>#<n><TAB><caption>', got {line[:80]!r}")
        if image not in good_names:
            good_names.add(check_image_name(image, f"{path}:{lineno}"))
        text = " ".join(fields[1].split())
        if not text:
            raise DatasetError(f"{path}:{lineno}: empty caption for {fields[0]!r}")
        n = int(number)
        if (image, n) in seen:
            raise DatasetError(f"{path}:{lineno}: duplicate caption key {fields[0]!r} "
                               f"(first on line {seen[image, n]})")
        seen[image, n] = lineno
        captions.append(Caption(image, n, text))
    if not captions:
        raise DatasetError(f"{path}: no captions found")
    return CaptionSet(captions)


def read_img2dataset(root: str | os.PathLike) -> CaptionSet:
    """The captions of a folder of img2dataset output (``crossmodal.webdataset``): one per image,
    its ``KEY.txt``, keyed ``<shard>/KEY.jpg#0`` (``<shard>.tar/KEY.jpg#0`` in a tar shard).

    An image without a caption (no ``.txt``, or an empty one) is left out, counted in a warning
    that names the first. A caption that is not UTF-8 text raises DatasetError naming its file."""
    root = Path(root)
    if not webdataset.is_img2dataset(root):
        raise DatasetError(f"{root}: a folder, but not img2dataset output (numbered shard folders "
                           "00000/ or .tar shards of KEY.jpg + KEY.txt); pass a caption file or such a folder")
    captions: list[Caption] = []
    uncaptioned: list[str] = []
    try:
        for name, text, where in webdataset.samples(root):
            check_image_name(name, str(root))
            text = " ".join((text or "").split())
            if not text:
                uncaptioned.append(where)
                continue
            bad = _TEXT_BAD_CHAR.search(text)
            if bad:
                raise DatasetError(f"{where}: {_describe_char(bad.group())} in the caption")
            captions.append(Caption(name, 0, text))
    except webdataset.ShardError as err:
        raise DatasetError(str(err)) from err
    if uncaptioned:
        log.warning("%d image(s) in %s have no caption and are left out (e.g. %s)", len(uncaptioned), root,
                    uncaptioned[0])
    if not captions:
        raise DatasetError(f"{root}: no captioned images found")
    return CaptionSet(captions)


def read_image_list(path: str | os.PathLike) -> list[str]:
    """One image name per line (checked by ``image_name_problem``); blank lines ignored, duplicates
    are an error."""
    path = Path(path)
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in dataset_lines(path):
        if not line.strip():
            continue
        name = check_image_name(line, f"{path}:{lineno}")
        if name in seen:
            raise DatasetError(f"{path}:{lineno}: {name!r} already listed on line {seen[name]}")
        seen[name] = lineno
        names.append(name)
    return names


def find_split_files(splits_dir: str | os.PathLike) -> dict[str, Path]:
    """The split-list files present in a folder, by split name."""
    splits_dir = Path(splits_dir)
    found = {}
    for split, candidates in SPLIT_FILE_CANDIDATES.items():
        for name in candidates:
            if (splits_dir / name).is_file():
                found[split] = splits_dir / name
                break
    return found


def make_seeded_split(
    images: Sequence[str], seed: int = SPLIT_SEED, fractions: dict[str, float] | None = None
) -> dict[str, list[str]]:
    """Deterministic split of the (sorted) image list in the given proportions."""
    fractions = fractions or SPLIT_FRACTIONS
    order = sorted(images)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_val = max(1, round(n * fractions["val"])) if n >= 3 else 0
    n_test = max(1, round(n * fractions["test"])) if n >= 3 else 0
    n_train = n - n_val - n_test
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def karpathy_splits(path: str | os.PathLike) -> dict[str, list[str]]:
    """train/val/test image names from Karpathy's split file (``{"images": [{"filename", "split"}, ...]}``;
    his ``restval`` images count as training images)."""
    try:
        images = json.loads(Path(path).read_text(encoding="utf-8"))["images"]
        pairs = [(str(im["filename"]), {"restval": "train"}.get(im["split"], im["split"])) for im in images]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{path}: not a Karpathy split file ({{\"images\": [{{\"filename\", \"split\"}}]}}): "
                           f"{type(err).__name__}: {err}") from None
    unknown = sorted({split for _, split in pairs} - set(SPLIT_NAMES))
    if unknown:
        raise DatasetError(f"{path}: unknown split names {unknown}; expected train, restval, val, test")
    return {split: [name for name, s in pairs if s == split] for split in SPLIT_NAMES}


def load_splits(
    captions: CaptionSet,
    splits_dir: str | os.PathLike,
    seed: int = SPLIT_SEED,
) -> dict[str, list[str]]:
    """Split lists from ``splits_dir``; when it holds none, a seeded split is made and written there.
    ``splits_dir`` may also be Karpathy's split file (``dataset_flickr30k.json``: the 1K test split
    retrieval papers and CLIP_benchmark report on; ``karpathy_splits``).

    Images named in a split list but absent from the captions are an error naming the file.
    """
    splits_dir = Path(splits_dir)
    if splits_dir.suffix == ".json":
        lists = {split: (splits_dir, names) for split, names in karpathy_splits(splits_dir).items()}
    else:
        files = find_split_files(splits_dir)
        if not files:
            splits = make_seeded_split(captions.images, seed)
            splits_dir.mkdir(parents=True, exist_ok=True)
            for name, imgs in splits.items():
                atomic_write_text(splits_dir / f"{name}.txt", "".join(f"{i}\n" for i in imgs))
            log.info(
                "no split lists in %s: wrote a seeded split (seed %d): %s",
                splits_dir, seed, ", ".join(f"{k} {len(v)}" for k, v in splits.items()),
            )
            return splits
        lists = {split: (path, read_image_list(path)) for split, path in files.items()}
    known = set(captions.images)
    splits: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for split, (path, names) in lists.items():
        unknown = [n for n in names if n not in known]
        if unknown:
            raise DatasetError(
                f"{path}: {len(unknown)} image(s) have no captions, e.g. {unknown[:3]}"
            )
        for n in names:
            if n in owner:
                raise DatasetError(f"{path}: {n!r} is also in the {owner[n]} split")
            owner[n] = split
        splits[split] = names
    for split in SPLIT_NAMES:
        splits.setdefault(split, [])
    return splits


def missing_images(images_dir: str | os.PathLike, names: Iterable[str]) -> list[str]:
    """Names listed in the captions that have no file in ``images_dir`` (names in sub-folders are
    looked up one by one; the usual flat folder is listed once)."""
    images_dir = Path(images_dir)
    present = {e.name for e in os.scandir(images_dir) if e.is_file()} if images_dir.is_dir() else set()
    return [n for n in names if n not in present and ("/" not in n or not webdataset.exists(images_dir / n))]


def list_hash(names: Sequence[str]) -> str:
    """A short identity of an ordered list of names (image ids, caption keys)."""
    h = hashlib.sha256()
    for n in names:
        h.update(n.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]
