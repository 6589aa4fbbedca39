"""Keyword samples and the keyword file: ``KeywordSample`` (an image, the caption a phrase came from,
the phrase) and ``write_keyword_samples`` / ``read_keyword_samples``.

The keyword file is TSV: ``image<TAB>caption_key<TAB>phrase``, one sample per distinct
(image, phrase), the source caption being the first one that yields the phrase.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from crossmodal.atomic_io import atomic_open
from crossmodal.captions import DatasetError, check_image_name, dataset_lines

KEYWORDS_HEADER = "# image\tcaption\tphrase"


@dataclass(frozen=True)
class KeywordSample:
    image: str  # "1000092795.jpg"
    caption_key: str  # "1000092795.jpg#0": the caption the phrase came from
    phrase: str  # "black dog"


def write_keyword_samples(path: str | os.PathLike, samples: Iterable[KeywordSample],
                          method: str | None = None) -> int:
    """Write the TSV keyword file atomically (``method`` goes in a comment); returns the count."""
    count = 0
    with atomic_open(path, "w") as f:
        f.write(KEYWORDS_HEADER + "\n")
        if method:
            f.write(f"# keywords: {' '.join(method.split())}\n")
        for s in samples:
            fields = (s.image, s.caption_key, s.phrase)
            if any(not x.strip() or any(ch in x for ch in "\t\r\n") for x in fields):
                raise ValueError(f"keyword sample with an empty field or a tab/newline: {s!r}")
            f.write("\t".join(fields) + "\n")
            count += 1
    return count


def read_keyword_samples(path: str | os.PathLike) -> list[KeywordSample]:
    """Read a keyword file; a malformed or repeated line, or an image name that
    ``crossmodal.captions.image_name_problem`` refuses, raises DatasetError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"keyword file not found: {path} (sentence_augment.py writes it)")
    samples: list[KeywordSample] = []
    seen: dict[tuple[str, str], int] = {}
    good_names: set[str] = set()  # each image's name is checked once (it has many phrases)
    for lineno, line in dataset_lines(path):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 3 or not all(x.strip() for x in fields):
            raise DatasetError(
                f"{path}:{lineno}: expected 'image<TAB>caption_key<TAB>phrase', got {line[:80]!r}"
            )
        image, key, phrase = fields
        if image not in good_names:
            good_names.add(check_image_name(image, f"{path}:{lineno}"))
        key_image, _, number = key.rpartition("#")
        if key_image != image or not number.isascii() or not number.isdigit():
            raise DatasetError(f"{path}:{lineno}: caption key {key!r} is not '{image}#<n>'")
        if (image, phrase) in seen:
            raise DatasetError(
                f"{path}:{lineno}: phrase {phrase!r} of {image} repeats line {seen[image, phrase]}"
            )
        seen[image, phrase] = lineno
        samples.append(KeywordSample(image, key, phrase))
    return samples
