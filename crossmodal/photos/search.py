"""The search pipeline over the photo index: what ``search.py --photos`` and the page run for a query.

``search_photos`` parses the query (``crossmodal.query``: exclusions, date range, folders, sort),
scores every searchable photo (the index of a person's photos is small enough to score exactly),
then:

- filters: the date a photo was taken (``taken_at``: EXIF, else the file's mtime) and its folders
  (its path below the folder the searched roots share);
- exclusions: a photo is left out when an excluded word or phrase *matches* it (``_matching``);
- ranking: the semantic ranking fused (``crossmodal.fusion.rrf_fuse``) with the words of file and
  folder names (``crossmodal.name_match``, weight ``NAME_WEIGHT``) and with the text read in the
  photos (OCR, an SQLite FTS5 ``MATCH`` ranked by bm25, weight ``OCR_WEIGHT``);
- ``sort:date`` / ``sort:-date`` order the matching photos by date, then the rest by rank;
- pagination: ``k`` hits from ``offset``, and ``total``, the number of photos that pass.

A query can be a description, a photo file (``photo``: decoded within the upload pixel budget), an
indexed photo (``like``: its stored vector, nothing decoded), or a photo with a description. A photo
and a description combine as the normalised sum of their unit embeddings: both count equally, and
the sum stays a direction in the shared space the photos are ranked by.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from crossmodal.calibration import CONFIDENT
from crossmodal.fusion import RRF_K, rrf_fuse
from crossmodal.keywords.rule_tagger import ENGLISH_STOPWORDS
from crossmodal.name_match import NAME_WEIGHT, path_words, query_words
from crossmodal.query import Query, parse_query
from crossmodal.querybank import bank_for_query, is_short_query
from crossmodal.retrieval import Retriever, check_k

if TYPE_CHECKING:
    from crossmodal.photos.serving import PhotoRows, PhotoSearch

MAX_K = 200  # hits per page at most
# Without a calibrated confidence, a photo "matches" a term when its score for the term ranks it
# in the term's top MATCH_TOP_FRACTION of the indexed photos (at least MATCH_TOP_MIN photos).
MATCH_TOP_FRACTION = 0.03
MATCH_TOP_MIN = 1
# Text found in a photo fused like a file name's words (not measured: like a name, OCR text repeats
# what the photo shows, and a larger weight would lift every photo with a common word in it).
OCR_WEIGHT = NAME_WEIGHT
OCR_MATCHES = 1000  # OCR hits fused at most (bm25 order)
SCORE_BLOCK = 1 << 16  # rows scored at a time: bounds the float32 copy of the embeddings


@dataclass
class PhotoResultHit:
    rank: int  # 1-based over the whole result list (offset included)
    path: str  # absolute path of the photo
    name: str  # its path below the folder the searched roots share (the page's /photo/<name>)
    folder: str  # the folder it is in, relative to its indexed root ("" for the root itself)
    score: float  # cosine similarity with the query (0 for a filters-only query)
    confidence: float | None  # calibrated match probability (text queries with a calibrated checkpoint)
    confident: bool  # confidence >= calibration.CONFIDENT
    taken_at: str | None  # ISO date-time the photo was taken (EXIF), else the file's mtime
    camera: str | None
    matched: list[str] = field(default_factory=list)  # why it ranks: "semantic", "file name: dog", ...

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PhotoQueryResult:
    hits: list[PhotoResultHit]  # this page of hits
    total: int  # how many photos pass the filters and exclusions in all
    good_match: bool  # some hit (over all pages) is confident; True when confidence is unknown
    understood: str  # Query.describe(): what the query was parsed as
    indexing: dict | None  # {"done", "total"} while a background index runs, else None

    def to_dict(self) -> dict:
        return {**asdict(self), "hits": [h.to_dict() for h in self.hits]}


def _scores(retriever: Retriever, vector: np.ndarray) -> np.ndarray:
    """(n,) float32 cosine similarity of every row with a unit query vector."""
    emb = retriever.embeddings
    q = np.asarray(vector, dtype=np.float32).reshape(-1)
    out = np.empty(len(emb), dtype=np.float32)
    for start in range(0, len(emb), SCORE_BLOCK):
        out[start:start + SCORE_BLOCK] = np.asarray(emb[start:start + SCORE_BLOCK], dtype=np.float32) @ q
    return out


@dataclass
class _TextScores:
    cosine: np.ndarray  # (n,)
    ranking: np.ndarray  # (n,) what search ranks by: the cosine minus the querybank bias
    confidence: np.ndarray | None  # (n,) calibrated, None without a curve for this kind of query


def _text_scores(retriever: Retriever, text: str) -> _TextScores:
    text = retriever.check_query(text)
    cosine = _scores(retriever, retriever.embed_text(text))
    bank = bank_for_query(text, tuple(retriever.biases))
    ranking = cosine - retriever.biases[bank] if bank is not None else cosine
    curve = retriever.calibration.get("short" if is_short_query(text) else "sentence")
    return _TextScores(cosine, ranking, None if curve is None else curve.confidence(ranking).astype(np.float32))


def _matching(scores: _TextScores) -> np.ndarray:
    """Which photos a term matches (a bool mask): its confidence is confident (``CONFIDENT``) when
    the checkpoint is calibrated, else its score ranks it in the term's top ``MATCH_TOP_FRACTION``
    of the indexed photos. Used to leave out excluded terms and to pick what sort:date orders."""
    if scores.confidence is not None:
        return scores.confidence >= CONFIDENT
    n = len(scores.ranking)
    top = max(MATCH_TOP_MIN, int(np.ceil(n * MATCH_TOP_FRACTION)))
    mask = np.zeros(n, dtype=bool)
    mask[np.argsort(-scores.ranking, kind="stable")[:top]] = True
    return mask


def _ocr_words(text: str) -> list[str]:
    """The query's words looked up in the text read in photos (stop words and single letters dropped)."""
    words = (w.lower() for w in re.findall(r"\w+", text))
    return list(dict.fromkeys(w for w in words if len(w) > 1 and w not in ENGLISH_STOPWORDS))


def _row_of(rows: "PhotoRows", like: str) -> int:
    """The row of an indexed photo named by its path (as given, absolute, or resolved) or its name."""
    full = os.path.expanduser(like)
    wanted = {like, os.path.abspath(full), os.path.realpath(full)}
    for i, (path, name) in enumerate(zip(rows.paths, rows.retriever.names)):
        if path in wanted or name == like:
            return i
    raise ValueError(f"{like} is not an indexed photo of this search; name one of its results")


def _indexing(engine: Any) -> dict | None:
    thread = getattr(engine, "indexing", None)
    if thread is None or not thread.is_alive():
        return None
    return {"done": int(thread.done), "total": int(thread.total)}


def search_photos(engine: "PhotoSearch", text: str = "", *, k: int = 20, offset: int = 0,
                  like: str | None = None, photo: str | os.PathLike | None = None) -> PhotoQueryResult:
    """One page of results for a query over the photo index (module docstring). ValueError, with a
    readable message, for a query that cannot be answered (bad syntax, k or offset, an unknown
    ``like`` photo, a photo file that cannot be decoded)."""
    query: Query = parse_query(text or "")
    k = check_k(k, MAX_K)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a whole number from 0, got {offset!r}")
    if not (query.text or query.has_filters or query.excludes or like or photo):
        raise ValueError("type a description of the photo, or filters (see the query language)")
    if query.text:
        Retriever.check_query(query.text)
    rows = engine.rows()
    indexing = _indexing(engine)
    if rows is None:
        return PhotoQueryResult([], 0, True, query.describe(), indexing)
    retriever = rows.retriever
    n = len(rows.paths)

    # what passes the filters
    keep = np.ones(n, dtype=bool)
    days = rows.days
    if query.after or query.before:
        keep &= np.array([d is not None and query.in_date_range(d) for d in days], dtype=bool)
    if query.folders:
        keep &= np.array([query.in_folders(name) for name in retriever.names], dtype=bool)
    for term in query.excludes:
        keep &= ~_matching(_text_scores(retriever, term))

    # the query's vector and its scores
    text_scores = _text_scores(retriever, query.text) if query.text else None
    image_vec = None
    if like is not None:
        source = _row_of(rows, like)
        image_vec = np.asarray(retriever.embeddings[source], dtype=np.float32)
        keep[source] = False  # more like this: the photo itself is not a result
    elif photo is not None:
        image_vec = retriever.embed_image(photo).reshape(-1)
    if image_vec is not None:
        vec = image_vec / max(np.linalg.norm(image_vec), 1e-12)
        if query.text:  # a photo and a description: the normalised sum of the two unit vectors
            vec = vec + retriever.embed_text(query.text).reshape(-1)
            vec = vec / max(np.linalg.norm(vec), 1e-12)
        cosine = _scores(retriever, vec)
        ranking, confidence = cosine, None
    elif text_scores is not None:
        cosine, ranking, confidence = text_scores.cosine, text_scores.ranking, text_scores.confidence
    else:  # filters alone: every photo that passes, newest first unless sorted otherwise
        cosine = np.zeros(n, dtype=np.float32)
        ranking = np.array([d.toordinal() if d else 0 for d in days], dtype=np.float64)
        confidence = None

    candidates = np.flatnonzero(keep)
    order = candidates[np.argsort(-ranking[candidates], kind="stable")]
    why: dict[int, list[str]] = {}
    if query.text:  # names and text in photos fused with the semantic ranking
        allowed = set(candidates.tolist())
        names = rows.name_index
        name_groups = [[r for r in group if r in allowed] for group in names.ranking(query.text)]
        name_groups = [g for g in name_groups if g]
        matches = names.matches(query.text)
        words = set(_ocr_words(query.text))
        row_of_id = {int(i): r for r, i in enumerate(rows.ids)}
        ocr_ranking = []
        for photo_id, found in engine.store.ocr_matches(sorted(words), OCR_MATCHES):
            row = row_of_id.get(int(photo_id))
            if row is not None and row in allowed:
                ocr_ranking.append(row)
                seen = [w for w in dict.fromkeys(re.findall(r"\w+", found or "")) if w.lower() in words]
                why.setdefault(row, []).append("text in photo: " + " ".join(seen))
        if name_groups or ocr_ranking:
            order = np.array(rrf_fuse([order.tolist(), name_groups, ocr_ranking], RRF_K,
                                      [1.0, NAME_WEIGHT, OCR_WEIGHT]), dtype=np.int64)
        qwords = set(query_words(query.text))
        for row in matches:
            shown = [w for w in dict.fromkeys(path_words(retriever.names[row])) if w in qwords]
            why.setdefault(row, []).insert(0, "file name: " + " ".join(shown))

    if query.sort != "relevance":
        # the matching photos by date (undated last), then the rest in rank order
        if text_scores is not None and image_vec is None:
            matched = _matching(text_scores)
        elif image_vec is not None:
            matched = _matching(_TextScores(cosine, ranking, None))
        else:
            matched = np.ones(n, dtype=bool)
        first = [r for r in order if matched[r]]
        newest = query.sort == "-date"
        dated = sorted((r for r in first if days[r]), key=lambda r: rows.taken_at[r], reverse=newest)
        order = np.array(dated + [r for r in first if not days[r]] + [r for r in order if not matched[r]],
                         dtype=np.int64)

    total = len(order)
    # Without confidences (a photo query, an uncalibrated checkpoint) no hit can be called weak.
    good = bool((confidence[order] >= CONFIDENT).any()) if confidence is not None else True
    base = "semantic" if (query.text or image_vec is not None) else "filters"
    hits = []
    for rank, row in enumerate(order[offset:offset + k], start=offset + 1):
        row = int(row)
        conf = None if confidence is None else float(confidence[row])
        folder = os.path.relpath(os.path.dirname(rows.paths[row]), rows.roots[row])
        hits.append(PhotoResultHit(rank, rows.paths[row], retriever.names[row], "" if folder == "." else folder,
                                   float(cosine[row]), conf, conf is not None and conf >= CONFIDENT,
                                   rows.taken_at[row], rows.camera[row], [base] + why.get(row, [])))
    return PhotoQueryResult(hits, total, good, query.describe(), indexing)
