"""The search engine: one checkpoint's heads over one collection, for the page, the command line and the API.

``SearchEngine`` holds what every query needs and builds it once per generation of the collection:

* the image head's projections of the collection's backbone vectors, and their querybank biases
  (``crossmodal.projection``: kept on disk, extended as the collection grows);
* a search index over them (``crossmodal.index``: exact, or FAISS above ``EXACT_SEARCH_MAX`` rows; or
  an on-disk IVF-PQ index that ``build_index.py`` built, ``crossmodal.ondisk_index``);
* the text backbone, and the image backbone for photo queries, each loaded on first use (a query's
  text runs on ONNX Runtime instead where the on-disk index keeps an export of the text backbone,
  ``crossmodal.backbones.onnx_text``);
* the one scoring function: cosine similarity, minus the querybank bias of the query's kind, and
  the calibrated confidence of that ranking score (``crossmodal.calibration``).

``current()`` gives an ``IndexedCollection``, everything a query reads at one generation; it takes up
what indexing committed since the last call. ``crossmodal.search`` runs a query over it::

    engine = SearchEngine(DatasetCollection.open("work/demo/image_embeddings"), heads, state, checkpoint)
    result = crossmodal.search.search(engine, "a red circle on a striped background", k=5)

A model here is anything with ``encode_image``, ``folded_text_encoder``, ``config_dict`` and ``eval``
(the heads of ``model.py``, loaded by the caller: the engine never imports training code).
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from crossmodal.atomic_io import file_digest
from crossmodal.backbones import (
    QUERY_ENCODER_FILE,
    ImageBackbone,
    OnnxTextEncoder,
    TextBackbone,
    TextTop,
    create_image_backbone,
    create_text_backbone,
    open_text_encoder,
    resolve_device,
    views_of,
)
from crossmodal.calibration import Calibration, curves_of
from crossmodal.collection import Collection, path_of
from crossmodal.images import load_image
from crossmodal.index import SearchIndex, build_index
from crossmodal.name_match import NameIndex
from crossmodal.projection import ProjectionCache
from crossmodal.querybank import bank_for_query, query_kind

log = logging.getLogger(__name__)

TUNING_QUERIES = 500  # text queries that tune and measure a FAISS index's recall@10
# Used for that when the collection has no captions (a user's own photos): everyday photo subjects.
GENERIC_QUERIES = (
    "a dog running on the grass", "a cat sleeping on a sofa", "two children playing on the beach",
    "a man riding a bicycle down a city street", "a woman in a red dress", "a group of people at a party",
    "a plate of food on a table", "a birthday cake with candles", "a car parked on the street",
    "a train at a station", "an airplane in the sky", "a boat on a lake", "mountains covered in snow",
    "a sunset over the ocean", "a city skyline at night", "a garden full of flowers", "a forest path",
    "a baby smiling", "an old man with a beard", "a bride and groom", "people skiing down a slope",
    "a surfer riding a wave", "a football match", "a basketball player jumping", "a horse in a field",
    "a bird on a branch", "cows grazing in a meadow", "a crowded market", "a street musician playing guitar",
    "a kitchen with white cabinets", "a living room with a fireplace", "a bedroom", "a church",
    "a bridge over a river", "a waterfall", "a desert road", "a snowy street in winter", "autumn leaves",
    "a person reading a book", "friends sitting around a campfire", "a child on a swing",
    "a dog catching a frisbee", "a man climbing a rock wall", "a girl jumping into a swimming pool",
    "a motorcycle rider", "a crowd at a concert", "a selfie of two friends", "a portrait of a woman",
    "a person hiking with a backpack", "a tent in the mountains", "a beach with palm trees",
    "a rainy street with umbrellas", "a cup of coffee", "a pizza", "a black and white photo of a building",
    "a family having a picnic", "a teenager skateboarding", "a fisherman with a net", "a farmer in a field",
    "a runner in a marathon", "a busy train platform", "a playground", "a snowman",
)
SCORE_BLOCK = 1 << 16  # rows scored at a time by exact scoring: bounds the float32 copy


class EngineError(RuntimeError):
    """A checkpoint, collection or backbone that cannot be served; the message says what to run."""


def check_identity(kind: str, expected: dict, backbone_name: str, weights: str, where: str) -> None:
    """Refuse a backbone other than the one a checkpoint was trained on (EngineError says what to do)."""
    if expected.get("backbone") != backbone_name or expected.get("weights") != weights:
        raise EngineError(
            f"the {kind} backbone {where} is {backbone_name} ({weights}), but the checkpoint was trained on "
            f"{expected.get('backbone')} ({expected.get('weights')}); use the matching weights "
            f"(--{kind}-weights) or re-extract features and retrain with this backbone")


def load_text_backbone(expected: dict, weights: str | os.PathLike | None, models_dir: str | os.PathLike | None,
                       device: torch.device | str = "cpu", top: TextTop | None = None) -> TextBackbone:
    """The text backbone a checkpoint records (``expected``), on ``device``, with the checkpoint's
    trained text ``top`` in place of its last layers; refuses other weights."""
    backbone = create_text_backbone(expected["backbone"], weights, models_dir)
    check_identity("text", expected, backbone.name, backbone.weights, "found")
    if top is not None:
        backbone.set_top(top)
    backbone.model.to(device).eval()
    return backbone


def load_image_backbone(expected: dict, weights: str | os.PathLike | None = None,
                        models_dir: str | os.PathLike | None = None) -> ImageBackbone:
    """The image backbone a checkpoint records (``expected``), pooling the mean of its trained views;
    refuses other weights."""
    backbone = create_image_backbone(expected["backbone"], weights, models_dir)
    check_identity("image", expected, backbone.name, backbone.weights, "found")
    backbone.set_views(views_of(expected.get("preprocess")))
    return backbone


@dataclass(frozen=True)
class Query:
    """A query as a vector, with how its scores are ranked and calibrated."""
    vector: np.ndarray  # (embed_dim,) float32 unit vector
    bank: str | None = None  # the querybank bias subtracted to rank (text queries)
    curve: Calibration | None = None  # ranking score -> match confidence (text queries)


@dataclass(frozen=True)
class Scores:
    """Scores of some rows for a query: what hits report and what ranks them."""
    cosine: np.ndarray
    ranking: np.ndarray  # the cosine minus the querybank bias: what search ranks by
    confidence: np.ndarray | None  # calibrated match probability; None without a curve


@dataclass(frozen=True)
class IndexedCollection:
    """One generation of a collection, ready to search: its projected rows, their querybank biases and
    the search index over them. What a query reads, unchanged while it runs."""
    collection: Collection
    embeddings: np.ndarray  # (n, embed_dim) float16 unit vectors, in row order
    biases: dict[str, np.ndarray]  # bank -> (n,) float32
    index: SearchIndex | None  # None for an empty collection
    # Whether file names and text read in photos are fused with the ranking: fusing scores every row
    # exactly, which an on-disk index (a collection beyond memory) is there to avoid.
    fuses_words: bool = True

    def __len__(self) -> int:
        return len(self.collection)

    def scores(self, query: Query, rows: np.ndarray | None = None) -> Scores:
        """Exact scores of ``rows`` (every row when None): the one scoring function."""
        q = np.asarray(query.vector, dtype=np.float32).reshape(-1)
        if rows is None:
            cosine = np.empty(len(self), dtype=np.float32)
            for start in range(0, len(self), SCORE_BLOCK):
                block = np.asarray(self.embeddings[start:start + SCORE_BLOCK], dtype=np.float32)
                cosine[start:start + len(block)] = block @ q
        else:
            cosine = np.asarray(self.embeddings[rows], dtype=np.float32) @ q
        bias = self.biases.get(query.bank) if query.bank else None
        ranking = cosine if bias is None else cosine - (bias if rows is None else bias[rows])
        return Scores(cosine, ranking, self._confidence(query, ranking))

    def nearest(self, query: Query, n: int) -> tuple[np.ndarray, Scores]:
        """The ``n`` best rows by ranking score, from the search index, and their scores."""
        bank = query.bank if query.bank in self.biases else None
        ranking, rows = self.index.search(np.asarray(query.vector, np.float32).reshape(1, -1), min(n, len(self)), bank)
        keep = rows[0] >= 0  # an approximate index may return fewer than n
        rows, ranking = rows[0][keep], ranking[0][keep]
        cosine = ranking + self.biases[bank][rows] if bank is not None else ranking
        return rows, Scores(cosine, ranking, self._confidence(query, ranking))

    @staticmethod
    def _confidence(query: Query, ranking: np.ndarray) -> np.ndarray | None:
        return None if query.curve is None else query.curve.confidence(ranking).astype(np.float32)

    @functools.cached_property
    def name_index(self) -> NameIndex:
        """The words of the photos' file and folder names (``crossmodal.name_match``)."""
        return NameIndex(self.collection.names)

    @functools.cached_property
    def days(self) -> list[date | None] | None:
        """The day each photo was taken; None when the collection records no dates."""
        taken = self.collection.taken_at
        return None if taken is None else [_day(t) for t in taken]

    @functools.cached_property
    def _rows_by_path(self) -> dict[str, int]:
        c = self.collection
        rows: dict[str, int] = {}
        for row, name in enumerate(c.names):
            rows.setdefault(name, row)
            rows.setdefault(path_of(c, row), row)
        return rows

    def row_of(self, photo: str) -> int | None:
        """The row of a photo named by its path (as given, absolute or resolved) or its name."""
        full = os.path.expanduser(photo)
        for key in (photo, os.path.abspath(full), os.path.realpath(full)):
            if key in self._rows_by_path:
                return self._rows_by_path[key]
        return None


def _day(iso: str | None) -> date | None:
    try:
        return date.fromisoformat(iso[:10]) if iso else None
    except ValueError:
        return None


def check_collection(collection: Collection, backbones: dict, model: Any, checkpoint: str | os.PathLike) -> None:
    """EngineError unless the collection's vectors come from the image backbone the checkpoint was
    trained on (name, weights, views, width)."""
    if not len(collection):
        return
    exp, have = backbones["image"], collection.identity
    dim = model.config_dict()["image_dim"]
    same = ((have.get("backbone"), have.get("weights")) == (exp.get("backbone"), exp.get("weights"))
            and views_of(have.get("preprocess")) == views_of(exp.get("preprocess")) and have.get("dim") == dim)
    if not same:
        raise EngineError(
            f"{collection.describe()}: its vectors are {have.get('backbone')} ({have.get('weights')}, views "
            f"{list(views_of(have.get('preprocess')))}, {have.get('dim')}-d), but {checkpoint} was trained on "
            f"{exp.get('backbone')} ({exp.get('weights')}, views {list(views_of(exp.get('preprocess')))}, "
            f"{dim}-d); {collection.rebuild_hint}")


def tuning_texts(collection: Collection, n: int = TUNING_QUERIES) -> list[str]:
    """Up to ``n`` captions of the collection (a seeded sample), else ``GENERIC_QUERIES``: the text
    queries an index's recall is measured on."""
    texts = [c for row in collection.captions or () for c in row.split("\n") if c] or list(GENERIC_QUERIES)
    if len(texts) > n:
        rng = np.random.default_rng(0)
        texts = [texts[i] for i in np.sort(rng.choice(len(texts), n, replace=False))]
    return texts


def query_encoder_identity(checkpoint_digest: str, text_backbone: dict) -> dict:
    """What a query text encoder exported beside an index is made for: the checkpoint (``file_digest``
    of it: its trained text top) and the text backbone it records."""
    return {"checkpoint": checkpoint_digest, "backbone": text_backbone.get("backbone"),
            "weights": text_backbone.get("weights")}


def served_identity(checkpoint_digest: str, collection: Collection) -> dict:
    """What an on-disk index of a collection's projections was built for: the checkpoint's contents
    (``file_digest`` of it) and the collection's folder."""
    return {"checkpoint": checkpoint_digest, "collection": str(collection.cache_folder or collection.root)}


class SearchEngine:
    """Text and photo queries over a collection with one checkpoint's heads (module docstring).

    ``state`` is the checkpoint's contents (``model.load_checkpoint``): its backbones, querybank and
    calibration. ``text_backbone``: one already loaded (checked against the checkpoint). Thread-safe:
    queries run concurrently; a refresh builds the next generation while queries read the current one.
    """

    def __init__(self, collection: Collection, model: Any, state: dict, checkpoint: str | os.PathLike, *,
                 device: str | torch.device = "auto", models_dir: str | os.PathLike | None = None,
                 text_weights: str | os.PathLike | None = None, image_weights: str | os.PathLike | None = None,
                 index_kind: str = "auto", text_backbone: TextBackbone | None = None,
                 index_folder: str | os.PathLike | None = None):
        backbones = state.get("backbones")
        if not backbones or "image" not in backbones or "text" not in backbones:
            raise EngineError(f"{checkpoint} records no backbones; retrain it with `python run_train.py`")
        self.backbones = backbones
        self.checkpoint = Path(checkpoint)
        self.model = model.eval()
        self._encode_text = self.model.folded_text_encoder()  # encode_text in fewer operations
        self.curves = curves_of(state.get("calibration"))  # query kind -> score-to-confidence curve
        self.device = resolve_device(device)
        self.index_kind = index_kind
        self.index_folder = index_folder  # an on-disk index (build_index.py) instead of one built here
        self._weights = {"text": text_weights, "image": image_weights}
        self._models_dir = models_dir
        self._text_backbone: TextBackbone | None = None
        self._query_text: TextBackbone | OnnxTextEncoder | None = None
        self._text_top = getattr(self.model, "text_top", None)  # trained last layers of the text encoder
        if text_backbone is not None:
            check_identity("text", backbones["text"], text_backbone.name, text_backbone.weights, "given")
            if self._text_top is not None:
                text_backbone.set_top(self._text_top)
            self._text_backbone = text_backbone
        self._image_backbone: ImageBackbone | None = None
        self._lock = threading.Lock()  # the tokenizer and lazy loading are not thread-safe
        self._refreshing = threading.Lock()
        self._opening_query_text = threading.Lock()
        self._checkpoint_digest = file_digest(checkpoint)  # of the file as loaded: what caches and indexes record
        self._projections = ProjectionCache(self.model, self._checkpoint_digest, state.get("querybank"), self.device)
        self.banks = self._projections.banks  # the querybank's text banks ("text", "keywords")
        self._current = self._build(collection)

    # ---------------------------------------------------------------------------------------------
    # the collection, one generation at a time

    def _check(self, collection: Collection) -> None:
        check_collection(collection, self.backbones, self.model, self.checkpoint)

    def _build(self, collection: Collection) -> IndexedCollection:
        self._check(collection)
        if not len(collection):
            return IndexedCollection(collection, np.zeros((0, self._projections.embed_dim), np.float16), {}, None)
        proj, bias = self._projections.matrix(collection)
        if self.index_folder is not None and isinstance(proj, np.memmap):  # beyond memory: rows read, not mapped
            from crossmodal.features.rows import RowsOnDisk

            proj = RowsOnDisk(proj)
        rows = np.asarray(collection.matrix_rows)
        if len(rows) == len(proj) and (rows == np.arange(len(rows))).all():  # every row: the mapped file itself
            embeddings = proj
        elif self.index_folder is not None:  # a collection beyond memory: its rows read where asked
            from crossmodal.features.rows import RowsOf

            embeddings = RowsOf(proj, rows)
        else:
            embeddings = np.ascontiguousarray(proj[rows])
        biases = {b: np.ascontiguousarray(bias[rows, i]) for i, b in enumerate(self._projections.banks)}
        if self.index_folder is not None:
            from crossmodal.ondisk_index import served_index

            try:
                identity = served_identity(self._checkpoint_digest, collection)
                index = served_index(self.index_folder, embeddings, biases, identity)
            except ValueError as err:
                raise EngineError(str(err)) from err
        else:
            index = build_index(embeddings, kind=self.index_kind, biases=biases,
                                tuning_queries=lambda: self._tuning_queries(collection))
        return IndexedCollection(collection, embeddings, biases, index, fuses_words=self.index_folder is None)

    def current(self) -> IndexedCollection:
        """What a query searches now: takes up what was committed to the collection since the last
        call. Cheap when nothing changed; while another thread refreshes, the current one is returned."""
        view = self._current
        latest = view.collection.latest()
        if latest is view.collection or not self._refreshing.acquire(blocking=False):
            return view
        try:
            if self._current.collection is view.collection:
                self._current = self._build(latest)
            return self._current
        finally:
            self._refreshing.release()

    @property
    def collection(self) -> Collection:
        return self._current.collection

    def _tuning_queries(self, collection: Collection) -> np.ndarray:
        """Encoded text queries that tune a FAISS index and measure its recall.

        Text queries do not fall where image vectors do (the modality gap), so recall measured with
        perturbed image rows, the index's own default, can overstate what a user gets. Queries are up
        to ``TUNING_QUERIES`` captions of the collection, else the built-in ``GENERIC_QUERIES``.
        """
        texts = tuning_texts(collection)
        feats = torch.from_numpy(self.text_backbone.encode(texts, device=self.device))
        with torch.inference_mode():
            queries = self._encode_text(feats.to(self.device)).float().cpu().numpy()
        log.info("FAISS recall is measured on %d text queries (%s)", len(texts),
                 "captions of the collection" if collection.captions else "built-in descriptions")
        return queries

    # ---------------------------------------------------------------------------------------------
    # backbones, loaded on first use

    @property
    def text_backbone(self) -> TextBackbone:
        if self._text_backbone is None:
            with self._lock:
                if self._text_backbone is None:
                    self._text_backbone = load_text_backbone(self.backbones["text"], self._weights["text"],
                                                             self._models_dir, self.device, self._text_top)
        return self._text_backbone

    @property
    def query_text_encoder(self) -> TextBackbone | OnnxTextEncoder:
        """What encodes a query's text: the served index's export for ONNX Runtime (``build_index.py``
        writes it) when it was made for this checkpoint and queries run on the CPU, else the text backbone."""
        if self._query_text is None:
            with self._opening_query_text:  # (not self._lock: text_backbone takes that one)
                if self._query_text is None:
                    exported = None
                    if self.index_folder is not None and self.device.type == "cpu":
                        exported = open_text_encoder(Path(self.index_folder) / QUERY_ENCODER_FILE,
                                                     query_encoder_identity(self._checkpoint_digest,
                                                                            self.backbones["text"]))
                        if exported is not None:
                            log.info("query text encoded by ONNX Runtime: %s", exported.path)
                    self._query_text = exported or self.text_backbone
        return self._query_text

    @property
    def image_backbone(self) -> ImageBackbone:
        """Loaded on the first photo query (text search never needs it)."""
        if self._image_backbone is None:
            with self._lock:
                if self._image_backbone is None:
                    backbone = load_image_backbone(self.backbones["image"], self._weights["image"], self._models_dir)
                    backbone.model.to(self.device).eval()
                    self._image_backbone = backbone
        return self._image_backbone

    # ---------------------------------------------------------------------------------------------
    # queries as vectors

    @torch.inference_mode()
    def embed_text(self, text: str) -> np.ndarray:
        """(embed_dim,) float32 unit vector of a description."""
        encoder = self.query_text_encoder
        # What TextBackbone.encode does for one text, with only the tokenizer under the lock (a slow
        # tokenizer, or the first call building the private backend, is not thread-safe; the model is).
        with self._lock:
            batch = encoder.tokenize_one(text)
        if self.device.type == "cpu":  # (no transfers, no autocast context: ~15 us of a query)
            feats = encoder.forward_pooled(batch)
        else:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                feats = encoder.forward_pooled(batch)
        return self._encode_text(feats).float().cpu().numpy().reshape(-1)

    @torch.inference_mode()
    def embed_image(self, image: Image.Image | str | os.PathLike) -> np.ndarray:
        """(embed_dim,) float32 unit vector of a PIL image, or of an image file decoded within a pixel
        budget (``crossmodal.images.load_image``: ImageRefused, a ValueError, if too large)."""
        backbone = self.image_backbone
        if not isinstance(image, Image.Image):
            image = load_image(image, backbone.image_size)
        x = backbone.pil_transform()(image.convert("RGB")).unsqueeze(0).to(self.device)
        with self._lock:
            feats = backbone.model(x).float()
            return self.model.encode_image(feats).float().cpu().numpy().reshape(-1)

    def text_query(self, text: str) -> Query:
        """A description as a query: its vector, the querybank of its kind and that kind's curve."""
        kind = query_kind(text)  # a checkpoint calibrated before phrases had their own curve: the sentences'
        return Query(self.embed_text(text), bank_for_query(text, self.banks),
                     self.curves.get(kind) or (self.curves.get("sentence") if kind == "phrase" else None))

    # ---------------------------------------------------------------------------------------------
    # what the page and the logs say

    def details(self) -> dict[str, str]:
        """What is searched, and how, one line each: for the page's details fold and the log."""
        view = self._current
        recall = getattr(view.index, "recall_at_10", None)
        kind = view.index.kind if view.index is not None else "exact"
        how = "exact search" if recall is None else f"measured recall@10 {recall:.3f} against exact search"
        return {
            "collection": view.collection.describe(),
            "index": f"{kind} ({how})",
            "backbones": self._backbones_line(),
            "querybank normalisation": ", ".join(self.banks) or "off",
            "match confidence": ("calibrated (" + ", ".join(self.curves) + " queries)") if self.curves
                                else "not calibrated: scores only",
            "checkpoint": str(self.checkpoint),
        }

    def _backbones_line(self) -> str:
        image, text = self.backbones["image"]["backbone"], self.backbones["text"]["backbone"]
        if self.model.config_dict().get("zero_shot"):
            return f"{image}, zero-shot (its own embedding space, no trained heads)"
        return image if image == text else f"{image} + {text}"

    def describe(self) -> str:
        """One line: what is searched, with which index and models."""
        return " · ".join(self.details().values())

    def duplicate_groups(self, threshold: float) -> list:
        """Groups of near-duplicate photos of the collection, from its backbone vectors (``crossmodal.duplicates``)."""
        from crossmodal.duplicates import duplicate_groups

        return duplicate_groups(self.current().collection, threshold)

    def close(self) -> None:
        self._current.collection.close()

