"""Captioned image sets in the Flickr30K layout, and their train/val/test splits.

A caption file holds lines ``<image>.jpg#<n><TAB><caption>`` (Flickr30K and Flickr8k alike).
Splits come from split-list files (one image name per line) when given, else from a seeded
split that is written out once so every later stage reads the same one.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from crossmodal.atomic_io import atomic_write_text

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
# Files accepted for each split; Flickr8k calls its validation split "dev".
SPLIT_FILE_CANDIDATES = {"train": ("train.txt",), "val": ("val.txt", "dev.txt"), "test": ("test.txt",)}
# The seeded split made when no split lists are given: Karpathy's Flickr30K proportions.
SPLIT_SEED = 0
SPLIT_FRACTIONS = {"train": 29000 / 31014, "val": 1014 / 31014, "test": 1000 / 31014}
_KEY_RE = re.compile(r"^(?P<image>[^\t#]+)#(?P<n>\d+)$")


KEYWORD_ID_SEP = "::"  # keyword row id: "<image>#<n>::<phrase>"


def keyword_row_id(caption_key: str, phrase: str) -> str:
    """The row id of a keyword sample: its source caption's key and the phrase."""
    return f"{caption_key}{KEYWORD_ID_SEP}{phrase}"


def image_of_row_id(row_id: str) -> str:
    """The image a caption key ("img.jpg#3") or keyword row id belongs to."""
    return row_id.split(KEYWORD_ID_SEP, 1)[0].rsplit("#", 1)[0]


class DatasetError(ValueError):
    """A caption or split file that cannot be used; the message names the file and line."""


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
    """Parse a Flickr30K-format caption file; a malformed line raises DatasetError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"caption file not found: {path}")
    captions: list[Caption] = []
    seen: dict[tuple[str, int], int] = {}
    with open(path, encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            key, sep, text = line.partition("\t")
            match = _KEY_RE.match(key.strip())
            if not sep or not match:
                raise DatasetError(
                    f"{path}:{lineno}: expected '<image>#<n><TAB><caption>', got {line[:80]!r}"
                )
            text = " ".join(text.split())
            if not text:
                raise DatasetError(f"{path}:{lineno}: empty caption for {key!r}")
            image, number = match["image"], int(match["n"])
            if (image, number) in seen:
                raise DatasetError(
                    f"{path}:{lineno}: duplicate caption key {key!r} (first on line {seen[image, number]})"
                )
            seen[image, number] = lineno
            captions.append(Caption(image, number, text))
    if not captions:
        raise DatasetError(f"{path}: no captions found")
    return CaptionSet(captions)


def read_image_list(path: str | os.PathLike) -> list[str]:
    """One image name per line; blank lines ignored, duplicates are an error."""
    path = Path(path)
    names: list[str] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, start=1):
            name = raw.strip()
            if not name:
                continue
            if "\t" in name or "#" in name:
                raise DatasetError(f"{path}:{lineno}: expected one image name per line, got {name!r}")
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


def load_splits(
    captions: CaptionSet,
    splits_dir: str | os.PathLike,
    seed: int = SPLIT_SEED,
) -> dict[str, list[str]]:
    """Split lists from ``splits_dir``; when it holds none, a seeded split is made and written there.

    Images named in a split list but absent from the captions are an error naming the file.
    """
    splits_dir = Path(splits_dir)
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
    known = set(captions.images)
    splits: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for split, path in files.items():
        names = read_image_list(path)
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
    """Names listed in the captions that have no file in ``images_dir``."""
    images_dir = Path(images_dir)
    present = set(os.listdir(images_dir)) if images_dir.is_dir() else set()
    return [n for n in names if n not in present]


def list_hash(names: Sequence[str]) -> str:
    """A short identity of an ordered list of names (image ids, caption keys)."""
    h = hashlib.sha256()
    for n in names:
        h.update(n.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]
