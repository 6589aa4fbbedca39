"""One query, from what was typed to a page of hits: what the page, the command line and the API run.

    result = search(engine, "a dog on a beach -snow after:2019 in:Holidays sort:date", k=10)

``search`` runs six named stages over what the engine searches now (``SearchEngine.current()``):

1. ``parse``: the query language (``crossmodal.query``), ``k`` and ``offset`` (``check_page``, the one
   check of both), and what the query is: a description, a photo file (decoded within the upload
   pixel budget), an indexed photo (``like``: "more like this", its stored vector, nothing decoded),
   or a photo with a description (the normalised sum of the two unit vectors: both count equally);
2. ``filter``: the date a photo was taken, its folder (its path below the collection's root), and
   exclusions: a photo leaves when an excluded word or phrase *matches* it (``matching``);
3. ``score``: the engine's one scoring function ranks the rows that pass. Through the search index
   when nothing filters, nothing is fused and the order is by relevance; else exactly, over every row
   that passes;
4. ``fuse``: the semantic ranking fused (``crossmodal.fusion.rrf_fuse``) with the words of file and
   folder names (``crossmodal.name_match``, weight ``NAME_WEIGHT``) and the text read in the photos
   (OCR, SQLite FTS5 ranked by bm25, weight ``OCR_WEIGHT``);
5. ``order``: ``sort:date`` / ``sort:-date`` put the matching photos in date order, then the rest by rank;
6. ``page``: ``k`` hits from ``offset``, leaving out photos whose file is gone since it was indexed
   (``next_offset`` continues after them); ``total``, the photos that pass the filters; ``good_match``.

Every collection answers alike; one without some metadata simply has none (a dataset's photos have no
date, so a date filter passes none of them, and no text read in them).
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from crossmodal import query as query_language
from crossmodal import webdataset
from crossmodal.calibration import CONFIDENT
from crossmodal.collection import path_of
from crossmodal.engine import IndexedCollection, Query, Scores, SearchEngine
from crossmodal.fusion import RRF_K, rrf_fuse
from crossmodal.keywords.words import ENGLISH_STOPWORDS
from crossmodal.name_match import NAME_WEIGHT, path_words, query_words

TOP_K = 5  # hits per query by default
MAX_K = 50  # hits per page at most: the page, the command line and the API alike
MAX_OFFSET = 100_000  # how far paging may go
MAX_QUERY_CHARS = 2000  # longer queries are refused; shorter long ones are truncated by the tokenizer
# Without a calibrated confidence, a photo "matches" a term when its score for the term ranks it
# in the term's top MATCH_TOP_FRACTION of the indexed photos (at least MATCH_TOP_MIN photos).
MATCH_TOP_FRACTION = 0.03
MATCH_TOP_MIN = 1
# Text found in a photo fused like a file name's words (not measured: like a name, OCR text repeats
# what the photo shows, and a larger weight would lift every photo with a common word in it).
OCR_WEIGHT = NAME_WEIGHT
OCR_MATCHES = 1000  # OCR hits fused at most (bm25 order)
GONE_MARGIN = 2  # the search index is asked for this many times k more rows, for hits whose file is gone


@dataclass
class Hit:
    rank: int  # 1-based over the whole result list (offset included)
    path: str  # absolute path of the photo
    name: str  # its path below the collection's root (the page's /photo/<name>)
    score: float  # cosine similarity with the query (0 for a filters-only query)
    confidence: float | None  # calibrated match probability (text queries with a calibrated checkpoint)
    confident: bool  # confidence >= calibration.CONFIDENT
    captions: list[str] = field(default_factory=list)  # the photo's captions (a dataset's), else none
    folder: str = ""  # the folder it is in, relative to its indexed root ("" for the root itself)
    taken_at: str | None = None  # ISO date-time the photo was taken (EXIF), else the file's mtime
    camera: str | None = None
    matched: list[str] = field(default_factory=list)  # why it ranks: "semantic", "file name: dog", ...

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    hits: list[Hit]  # this page of hits
    total: int  # how many photos pass the filters and exclusions in all
    good_match: bool  # a page of the best hits likely holds a match (``likely_match``); True when unknown
    understood: str  # the query as parsed (``Query.describe``)
    next_offset: int = 0  # where the next page starts (past the photos left out because their file is gone)

    def to_dict(self) -> dict:
        return {**asdict(self), "hits": [h.to_dict() for h in self.hits]}


def check_page(k: Any, offset: Any = 0) -> tuple[int, int]:
    """(k, offset) as ints; ValueError naming the value unless k is a whole number from 1 to ``MAX_K``
    and offset one from 0 to ``MAX_OFFSET`` (3.0 passes; 2.5, "3" and True do not)."""
    def whole(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    k, offset = whole(k), whole(offset)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be a whole number of results, got {k!r}")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be from 1 to {MAX_K}, got {k}")
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or not 0 <= offset <= MAX_OFFSET:
        raise ValueError(f"offset must be a whole number from 0 to {MAX_OFFSET:,}, got {offset!r}")
    return int(k), int(offset)


@dataclass(frozen=True)
class Request:
    """A query as the stages see it."""
    query: query_language.Query
    k: int
    offset: int
    like: str | None  # an indexed photo: more like it
    photo: Any  # a photo file (or PIL image) to search with


@dataclass
class Ranked:
    """The score stage's result: the rows that pass, best first, and how they were scored."""
    order: np.ndarray  # rows, best first (the index path: only the best ones)
    total: int  # rows that pass
    query: Query | None  # None for a filters-only query
    best: np.ndarray | None  # the ranking scores of the best rows that pass, a page's worth (k)
    all: Scores | None = None  # every row's scores (the exact path)
    names: list[list[int]] = field(default_factory=list)  # the file-name ranking (``fused_signals``)
    ocr: list[tuple[int, str]] = field(default_factory=list)  # the OCR matches (``fused_signals``)
    why: dict[int, list[str]] = field(default_factory=dict)  # row -> what besides the semantics ranked it


def search(engine: SearchEngine, text: str = "", *, k: int = TOP_K, offset: int = 0, like: str | None = None,
           photo: Any = None) -> SearchResult:
    """One page of results for a query (module docstring). ValueError, with a readable message, for a
    query that cannot be answered (bad syntax, k or offset, an unknown ``like`` photo, a photo file
    that cannot be decoded)."""
    request = parse(text, k, offset, like, photo)
    view = engine.current()
    if not len(view):
        return SearchResult([], 0, True, request.query.describe(), request.offset)
    keep = filter_rows(engine, view, request)
    ranked = score(engine, view, request, keep)
    fuse(view, request, ranked)
    order_by_date(view, request, ranked)
    return page(view, request, ranked)


# --------------------------------------------------------------------------------------------------
# 1. parse

def check_description(text: Any) -> str:
    """A query's text, refused (ValueError) when it is not text or too long."""
    if not isinstance(text, str):
        raise ValueError(f"a query is text, not {type(text).__name__}")
    if len(text) > MAX_QUERY_CHARS:
        raise ValueError(f"query too long: {len(text):,} characters (at most {MAX_QUERY_CHARS:,}); "
                         "describe the photo in a sentence or two")
    return text


def parse(text: Any, k: Any, offset: Any, like: str | None, photo: Any) -> Request:
    """The query language, k and offset checked, and what the query searches with."""
    query = query_language.parse_query(check_description(text or ""))
    k, offset = check_page(k, offset)
    if like is not None and not isinstance(like, str):
        raise ValueError(f"like: the path or name of an indexed photo, not {type(like).__name__}")
    if like is not None and ("\x00" in like or len(like) > MAX_QUERY_CHARS):
        raise ValueError(f"{like[:200]!r} is not an indexed photo of this search; name one of its results")
    like = like or None
    if not (query.text or query.has_filters or query.excludes or like or photo is not None):
        raise ValueError("empty query: type a few words describing the photo you are looking for "
                         "(or filters: see the query language)")
    return Request(query, k, offset, like, photo)


# --------------------------------------------------------------------------------------------------
# 2. filter

def matching(scores: Scores) -> np.ndarray:
    """Which photos a term matches (a bool mask over the rows scored): its confidence is confident
    (``CONFIDENT``) when the checkpoint is calibrated, else its score ranks it in the term's top
    ``MATCH_TOP_FRACTION``. Used to leave out excluded terms and to pick what sort:date orders."""
    if scores.confidence is not None:
        return scores.confidence >= CONFIDENT
    n = len(scores.ranking)
    top = max(MATCH_TOP_MIN, math.ceil(n * MATCH_TOP_FRACTION))
    mask = np.zeros(n, dtype=bool)
    mask[np.argsort(-scores.ranking, kind="stable")[:top]] = True
    return mask


def filter_rows(engine: SearchEngine, view: IndexedCollection, request: Request) -> np.ndarray | None:
    """Which rows pass the date and folder filters and the exclusions (None: all, nothing filters)."""
    q = request.query
    if not (q.after or q.before or q.folders or q.excludes):
        return None
    keep = np.ones(len(view), dtype=bool)
    if q.after or q.before:
        days = view.days or [None] * len(view)
        keep &= np.array([d is not None and q.in_date_range(d) for d in days], dtype=bool)
    if q.folders:
        keep &= np.array([q.in_folders(path) for path in view.collection.folder_paths], dtype=bool)
    for term in q.excludes:
        keep &= ~matching(view.scores(engine.text_query(term)))
    return keep


# --------------------------------------------------------------------------------------------------
# 3. score

def query_vector(engine: SearchEngine, view: IndexedCollection, request: Request) -> tuple[Query | None, int | None]:
    """The query as a vector (None for filters only), and the row of a "more like this" photo."""
    text = request.query.text
    source = None
    if request.like is not None:
        source = view.row_of(request.like)
        if source is None:
            raise ValueError(f"{request.like} is not an indexed photo of this search; name one of its results")
        image = np.asarray(view.embeddings[source], dtype=np.float32)
    elif request.photo is not None:
        image = engine.embed_image(request.photo)
    else:
        return (engine.text_query(text) if text else None), None
    vector = image / max(float(np.linalg.norm(image)), 1e-12)
    if text:  # a photo and a description: the normalised sum of the two unit vectors
        vector = vector + engine.embed_text(text)
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return Query(vector.astype(np.float32)), source


def fused_signals(view: IndexedCollection, text: str) -> tuple[list[list[int]], list[tuple[int, str]]]:
    """The name ranking (groups of rows) and the OCR matches (row, text) of a description."""
    if not text or not view.fuses_words:
        return [], []
    return view.name_index.ranking(text), view.collection.ocr_matches(ocr_words(text), OCR_MATCHES)


def score(engine: SearchEngine, view: IndexedCollection, request: Request, keep: np.ndarray | None) -> Ranked:
    """The rows that pass, best first: through the search index when nothing filters, nothing is fused
    and the order is by relevance, else exactly over every row that passes."""
    query, source = query_vector(engine, view, request)
    names, ocr = fused_signals(view, request.query.text)
    if query is None:  # filters alone: every photo that passes, newest first unless sorted otherwise
        rows = np.arange(len(view)) if keep is None else np.flatnonzero(keep)
        days = view.days or [None] * len(view)
        newest = np.array([-(days[r].toordinal()) if days[r] else 0 for r in rows], dtype=np.int64)
        return Ranked(rows[np.argsort(newest, kind="stable")], len(rows), None, None)
    if keep is None and not names and not ocr and request.query.sort == "relevance":
        rows, scores = view.nearest(query, request.offset + GONE_MARGIN * request.k + (source is not None))
        best = scores.ranking[:request.k]
        if source is not None:  # more like this: the photo itself is not a result
            best = scores.ranking[rows != source][:request.k]
            rows = rows[rows != source]
        return Ranked(rows, len(view) - (source is not None), query, best)
    keep = np.ones(len(view), dtype=bool) if keep is None else keep.copy()
    if source is not None:
        keep[source] = False
    scores = view.scores(query)
    rows = np.flatnonzero(keep)
    order = rows[np.argsort(-scores.ranking[rows], kind="stable")]
    return Ranked(order, len(order), query, scores.ranking[order[:request.k]], scores, names, ocr)


# --------------------------------------------------------------------------------------------------
# 4. fuse

def ocr_words(text: str) -> list[str]:
    """The query's words looked up in the text read in photos (stop words and single letters dropped)."""
    words = (w.lower() for w in re.findall(r"\w+", text))
    return list(dict.fromkeys(w for w in words if len(w) > 1 and w not in ENGLISH_STOPWORDS))


def fuse(view: IndexedCollection, request: Request, ranked: Ranked) -> None:
    """The semantic order fused with the file-name words and the text read in photos (in place)."""
    text = request.query.text
    if not (ranked.names or ranked.ocr):
        return
    allowed = set(ranked.order.tolist())
    name_groups = [g for g in ([r for r in group if r in allowed] for group in ranked.names) if g]
    words = set(ocr_words(text))
    ocr_ranking = []
    for row, found in ranked.ocr:
        if row in allowed:
            ocr_ranking.append(row)
            seen = [w for w in dict.fromkeys(re.findall(r"\w+", found or "")) if w.lower() in words]
            ranked.why.setdefault(row, []).append("text in photo: " + " ".join(seen))
    if name_groups or ocr_ranking:
        ranked.order = np.array(rrf_fuse([ranked.order.tolist(), name_groups, ocr_ranking], RRF_K,
                                         [1.0, NAME_WEIGHT, OCR_WEIGHT]), dtype=np.int64)
    qwords = set(query_words(text))
    for group in name_groups:
        for row in group:
            shown = [w for w in dict.fromkeys(path_words(view.collection.names[row])) if w in qwords]
            ranked.why.setdefault(row, []).insert(0, "file name: " + " ".join(shown))


# --------------------------------------------------------------------------------------------------
# 5. order

def order_by_date(view: IndexedCollection, request: Request, ranked: Ranked) -> None:
    """sort:date / sort:-date: the matching photos by date (undated last), then the rest in rank order."""
    sort = request.query.sort
    if sort == "relevance":
        return
    matched = matching(ranked.all) if ranked.all is not None else np.ones(len(view), dtype=bool)
    taken = view.collection.taken_at or [None] * len(view)
    first = [r for r in ranked.order if matched[r]]
    dated = sorted((r for r in first if taken[r]), key=lambda r: taken[r], reverse=sort == "-date")
    ranked.order = np.array(dated + [r for r in first if not taken[r]] + [r for r in ranked.order if not matched[r]],
                            dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# 6. page

def likely_match(confidences: np.ndarray) -> bool:
    """Whether a page of hits with these match confidences likely holds at least one match: the
    chance that none matches, taking them as independent, is under one half. Three hits at 0.3
    each likely hold one (0.66), though none is likely on its own; a page where every hit is far
    below, as for something the photos do not show, does not, and the page says "No good match"."""
    return bool(len(confidences)) and float(np.prod(1.0 - np.asarray(confidences, dtype=np.float64))) < 1 - CONFIDENT


def page(view: IndexedCollection, request: Request, ranked: Ranked) -> SearchResult:
    """The hits from ``offset``, ``k`` of them, with their scores, details and why they rank; a photo
    whose file is gone (deleted or moved since it was indexed) is left out, never shown broken."""
    c = view.collection
    rows, consumed = [], 0
    for row in ranked.order[request.offset:].tolist():
        if len(rows) == request.k:
            break
        consumed += 1
        if webdataset.exists(path_of(c, row)):  # a file, or a member of a tar shard
            rows.append(row)
    rows = np.asarray(rows, dtype=np.int64)
    if ranked.query is None:
        scores = Scores(np.zeros(len(rows), np.float32), np.zeros(len(rows), np.float32), None)
    else:
        scores = view.scores(ranked.query, rows)
    base = "semantic" if ranked.query is not None else "filters"
    hits = []
    for i, row in enumerate(rows.tolist()):
        conf = None if scores.confidence is None else float(scores.confidence[i])
        hits.append(Hit(
            rank=request.offset + i + 1, path=path_of(c, row), name=c.names[row], score=float(scores.cosine[i]),
            confidence=conf, confident=conf is not None and conf >= CONFIDENT,
            captions=c.captions[row].split("\n") if c.captions and c.captions[row] else [],
            folder=c.folders[row] if c.folders is not None else "",
            taken_at=c.taken_at[row] if c.taken_at is not None else None,
            camera=c.camera[row] if c.camera is not None else None,
            matched=[base] + ranked.why.get(row, [])))
    # Without confidences (a photo query, an uncalibrated checkpoint) no hit can be called weak.
    curve = ranked.query.curve if ranked.query is not None else None
    good = True if curve is None or ranked.best is None else likely_match(curve.confidence(ranked.best))
    return SearchResult(hits, ranked.total, good, request.query.describe(), request.offset + consumed)
