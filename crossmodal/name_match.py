"""Words in file and folder names, matched against a query's words and fused with the semantic ranking.

A photo saved as ``Dogs/rex_on_the_beach.jpg`` has the name words dog, rex and beach. A query's
words (stop words dropped) are looked up in them; the photos whose names hold any of the query's
words are ranked by how many, those with as many tied (so a word in many names lifts each of them
less), and that ranking is fused with the semantic one by reciprocal rank fusion
(``crossmodal.fusion``). A photo whose name holds no query word gets no name rank at all, only its
semantic one, so meaningless names (camera counters, Flickr ids, hashes) leave the ranking exactly
as the semantic search made it.

Name words: the folders and the file name without its extension are split at separators (space,
``/``, ``_``, ``-``, ``.`` and other punctuation), at camelCase and between letters and digits;
lowercased; digits, single letters and ``NAME_STOPWORDS`` dropped. A chunk of hexadecimal digits
is an id (Flickr's ``693b08cb0e``, a UUID's ``3f2a9c1e``) and dropped whole when it has six or more
characters mixing digits and letters, or eight or more letters; the few words spelt with a-f only
lose their number with it (``cafe2019``). Plurals match singulars: both sides go through the
keyword stage's lemmatiser (dogs, puppies, children -> dog, puppy, child).
"""
from __future__ import annotations

import re
from typing import Sequence

from crossmodal.fusion import RRF_K, rrf_fuse
from crossmodal.keywords.lemmas import noun_lemma
from crossmodal.keywords.words import ENGLISH_STOPWORDS

# Words cameras, phones and apps put in file names (IMG_1234, DSC01234, PXL_..._MP, GOPR0001,
# FB_IMG_..., IMG-...-WA0001) and words naming a file rather than its subject.
CAMERA_WORDS = frozenset("""
img image images dsc dscn dscf dcim pxl mvimg vid pano gopr gp dji sam wa mp fb
photo photos pic pics picture pictures copy edited edit export final untitled
""".split())
NAME_STOPWORDS = ENGLISH_STOPWORDS | CAMERA_WORDS
# The fused score is 1/(k + semantic rank) + NAME_WEIGHT/(k + name rank). Chosen on Flickr8k dev with
# photos named after caption nouns (bench/bench_names.py), where a name repeats what the picture
# shows: larger weights lift every photo whose name shares a common word ("man", "dog") above
# better semantic matches. Names that say what a picture cannot (places, people) are not measured.
NAME_WEIGHT = 0.02

_SEPARATORS = re.compile(r"[\W_]+")
_LETTERS = re.compile(r"[^\W\d_]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_HEX = re.compile(r"[0-9a-f]{6,}", re.IGNORECASE)


def _is_id(chunk: str) -> bool:
    """Digits alone, or hexadecimal digits: six or more mixing digits and letters, or eight or more letters."""
    return chunk.isdigit() or bool(_HEX.fullmatch(chunk)) and (not chunk.isalpha() or len(chunk) >= 8)


def _keep(word: str) -> str | None:
    word = word.lower()
    if len(word) < 2 or word in NAME_STOPWORDS:
        return None
    lemma = noun_lemma(word)
    return None if lemma in NAME_STOPWORDS else lemma


def path_words(rel_path: str) -> list[str]:
    """The name words of a photo's path relative to its collection ("/" or "\\" separated), in order."""
    parts = [p for p in re.split(r"[/\\]+", rel_path) if p]
    if parts:
        stem, dot, _ = parts[-1].rpartition(".")
        parts[-1] = stem if dot and stem else parts[-1]
    words = []
    for part in parts:
        for chunk in _SEPARATORS.split(part):
            if not chunk or _is_id(chunk):
                continue
            for run in _LETTERS.findall(chunk):
                words += [w for w in map(_keep, _CAMEL.sub(" ", run).split()) if w]
    return words


def query_words(text: str) -> list[str]:
    """The words of a query that can match name words, each once, in order."""
    words = (_keep(w) for w in _LETTERS.findall(text))
    return list(dict.fromkeys(w for w in words if w))


class NameIndex:
    """Which photos' names hold which words; rows are positions in the path list given."""

    def __init__(self, rel_paths: Sequence[str]):
        self._rows: dict[str, list[int]] = {}
        for row, path in enumerate(rel_paths):
            for word in dict.fromkeys(path_words(path)):
                self._rows.setdefault(word, []).append(row)

    @property
    def vocabulary(self) -> int:
        """How many distinct name words the photos have (0: no name says anything)."""
        return len(self._rows)

    def matches(self, query: str) -> dict[int, int]:
        """Row -> how many of the query's words its name holds, for rows with at least one."""
        counts: dict[int, int] = {}
        for word in query_words(query):
            for row in self._rows.get(word, ()):
                counts[row] = counts.get(row, 0) + 1
        return counts

    def ranking(self, query: str) -> list[list[int]]:
        """The rows whose names hold query words, in groups of equal count, most words first."""
        counts = self.matches(query)
        groups: dict[int, list[int]] = {}
        for row, count in counts.items():
            groups.setdefault(count, []).append(row)
        return [sorted(groups[c]) for c in sorted(groups, reverse=True)]


def fuse_names(semantic: Sequence[int], names: NameIndex, query: str, k: float = RRF_K,
               weight: float = NAME_WEIGHT) -> list[int]:
    """The ``semantic`` ranking (rows, best first) fused with the name ranking of ``query``."""
    name_ranking = names.ranking(query)
    if not name_ranking:
        return list(semantic)
    return rrf_fuse([semantic, name_ranking], k, [1.0, weight])
