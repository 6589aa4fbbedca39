"""The search engine shared by the app, the command line and the own-photo indexer.

``Retriever.from_checkpoint`` is handed the trained heads and the checkpoint's contents (loaded
by ``model.load_checkpoint``: the engine never imports training code), loads the cached image
features once, projects every readable image through the image head (cached on disk as
``<image cache>/projected_<hash>.npy``, rebuilt when the checkpoint or the features change),
builds a search index over them and loads the text backbone the checkpoint was trained with.
A text query is then one text encoding plus one index search::

    from model import load_checkpoint
    heads, state = load_checkpoint("work/demo/checkpoints/best.pt")
    r = Retriever.from_checkpoint("work/demo/checkpoints/best.pt", heads, state,
                                  "work/demo/image_embeddings", "work/demo/images", "work/demo/captions.token")
    for hit in r.search_text("a red circle on a striped background", k=5):
        print(hit.rank, f"{hit.score:.3f}", hit.path)

``open_retriever`` does the same for the page and the CLI, for a dataset or for a photo index
written by ``index_folder.py`` (``crossmodal.photos``, which records its checkpoint).

A model here is anything with ``encode_image``, ``folded_text_encoder``, ``config_dict`` and
``eval`` (the heads of ``model.py``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from crossmodal.atomic_io import atomic_save_npy, file_digest
from crossmodal.backbones import (
    ImageBackbone,
    TextBackbone,
    create_image_backbone,
    create_text_backbone,
    resolve_device,
    views_mismatch,
    views_of,
)
from crossmodal.calibration import CONFIDENT, curves_of
from crossmodal.captions import escapes_folder
from crossmodal.features.cache import FEATURES_FILE, FeatureCache, StaleCacheError, load_cache, read_manifest
from crossmodal.images import load_image
from crossmodal.querybank import bank_for_query, image_biases, is_short_query, text_banks

log = logging.getLogger(__name__)

TOP_K = 5  # hits per query by default
MAX_TOP_K = 50  # the most the page and the API return at once
MAX_QUERY_CHARS = 2000  # longer queries are refused; shorter long ones are truncated by the tokenizer
PROJECTED_FORMAT = 1  # bump when the projection (or its file layout) changes
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
PROJECT_BATCH = 2048  # rows projected per step (bounded memory even for a 7-view cache)


def check_k(k: Any, most: int | None = None) -> int:
    """``k`` (results per query) as an int; ValueError naming it unless it is a whole number from 1
    to ``most`` (no upper bound when None). 3.0 passes, 2.5, "3" and True do not."""
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be a whole number of results, got {k!r}")
    if k < 1 or (most is not None and k > most):
        allowed = f"from 1 to {most}" if most is not None else "at least 1"
        raise ValueError(f"k must be {allowed}, got {k}")
    return int(k)


class RetrieverError(RuntimeError):
    """A checkpoint, cache or backbone that cannot be served; the message says what to run."""


@dataclass
class Hit:
    rank: int  # 1-based
    path: str  # absolute path of the photo
    name: str  # its row id: file name (dataset) or path relative to the folder (collection)
    score: float  # cosine similarity in the shared space
    captions: list[str] = field(default_factory=list)  # known captions of the photo, if any
    # calibrated probability that the photo shows what the query says (calibration.py); None for a
    # photo query or a checkpoint without calibration
    confidence: float | None = None

    @property
    def confident(self) -> bool:
        """A good match: confidence at or above ``calibration.CONFIDENT``."""
        return self.confidence is not None and self.confidence >= CONFIDENT

    def to_dict(self) -> dict:
        return asdict(self)


def projected_key(ckpt_digest: str, cache: FeatureCache) -> str:
    """Identity of a projected matrix: the checkpoint's bytes and the features it was made from."""
    st = (cache.directory / FEATURES_FILE).stat()
    blob = json.dumps({"checkpoint": ckpt_digest, "manifest": cache.manifest, "format": PROJECTED_FORMAT,
                       "features": [st.st_size, st.st_mtime_ns]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def pooled_rows(cache: FeatureCache, rows: np.ndarray) -> torch.Tensor:
    """Float32 pooled backbone features of some rows; a views cache's views are averaged."""
    x = torch.from_numpy(np.asarray(cache.features[rows], dtype=np.float32))
    views = cache.manifest.get("views")
    if views:  # rows are V views, view-major; the image's feature is their mean
        x = x.view(len(rows), len(views), -1).mean(1)
    return x


@torch.inference_mode()
def project_cache(model: Any, cache: FeatureCache, rows: np.ndarray,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """(len(rows), embed_dim) float16 unit vectors: the image head over the cached features."""
    device = torch.device(device)
    model = model.to(device).eval()
    embed_dim = model.config_dict()["embed_dim"]
    out = np.empty((len(rows), embed_dim), dtype=np.float16)
    for start in range(0, len(rows), PROJECT_BATCH):
        chunk = rows[start : start + PROJECT_BATCH]
        out[start : start + len(chunk)] = model.encode_image(pooled_rows(cache, chunk).to(device)).cpu().numpy()
    return out


def load_or_project(model: Any, cache: FeatureCache, ckpt_digest: str,
                    device: torch.device | str = "cpu",
                    querybank: dict | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(valid row indices, their projected float16 embeddings, their querybank biases), from the
    on-disk cache if current.

    The file ``projected_<key>.npy`` in the feature cache folder holds the embeddings of the
    readable rows, and ``querybias_<key>.npy`` their float32 biases against each text bank of the
    checkpoint's ``querybank`` (``querybank.py``; biases: bank name -> (n,), empty without a
    querybank); they are rebuilt (atomically) when the checkpoint or the
    features change, and files made for other keys are removed. A read-only cache folder only
    costs a recompute.
    """
    rows = np.flatnonzero(cache.valid_mask())
    key = projected_key(ckpt_digest, cache)
    path = cache.directory / f"projected_{key}.npy"
    bias_path = cache.directory / f"querybias_{key}.npy"
    embed_dim = model.config_dict()["embed_dim"]

    def cached(p: Path, shape: tuple, dtype: type, what: str) -> np.ndarray | None:
        if not p.is_file():
            return None
        try:
            arr = np.load(p, mmap_mode="r")
            if arr.shape == shape and arr.dtype == dtype:
                log.info("%s: reusing %s", what, p.name)
                return arr
            log.warning("%s has shape %s, expected %s; recomputing", p, arr.shape, shape)
        except (OSError, ValueError) as err:
            log.warning("cannot read %s (%s); recomputing", p, err)
        return None

    def save(p: Path, arr: np.ndarray, prefix: str) -> None:
        try:
            atomic_save_npy(p, arr)
            for old in cache.directory.glob(f"{prefix}_*.npy"):
                if old != p:
                    old.unlink(missing_ok=True)
        except OSError as err:
            log.warning("could not save %s (%s); it will be recomputed on the next start", p, err)

    proj = cached(path, (len(rows), embed_dim), np.float16, "projected image embeddings")
    if proj is None:
        t0 = time.perf_counter()
        proj = project_cache(model, cache, rows, device)
        log.info("projected %d image embeddings in %.1f s", len(rows), time.perf_counter() - t0)
        save(path, proj, "projected")
    banks = text_banks(querybank)
    if not banks:
        return rows, proj, {}
    bias = cached(bias_path, (len(banks), len(rows)), np.float32, "querybank biases")
    if bias is None:
        t0 = time.perf_counter()
        bias = np.stack(list(image_biases(querybank, proj, progress=True).values()))  # text_banks order
        log.info("querybank biases of %d images (banks: %s) in %.1f s", len(rows),
                 ", ".join(f"{len(querybank[b])} {b}" for b in banks), time.perf_counter() - t0)
        save(bias_path, bias, "querybias")
    return rows, proj, {b: np.ascontiguousarray(bias[i]) for i, b in enumerate(banks)}


def _read_caption_map(captions_file: str | os.PathLike, names: set[str]) -> dict[str, list[str]]:
    from crossmodal.captions import read_captions

    out: dict[str, list[str]] = {}
    for cap in read_captions(captions_file).captions:
        if cap.image in names:
            out.setdefault(cap.image, []).append(cap.text)
    return out


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them after big temporary allocations)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def load_text_backbone(expected: dict, weights: str | os.PathLike | None, models_dir: str | os.PathLike | None,
                       device: torch.device | str = "cpu") -> TextBackbone:
    """The text backbone a checkpoint records (``expected``), on ``device``; refuses other weights."""
    backbone = create_text_backbone(expected["backbone"], weights, models_dir)
    check_identity("text", expected, backbone.name, backbone.weights, "found")
    backbone.model.to(device).eval()
    return backbone


def check_identity(kind: str, expected: dict, backbone_name: str, weights: str, where: str) -> None:
    """Refuse a backbone other than the one a checkpoint was trained on (RetrieverError says what to do)."""
    if expected.get("backbone") != backbone_name or expected.get("weights") != weights:
        raise RetrieverError(
            f"the {kind} backbone {where} is {backbone_name} ({weights}), but the checkpoint was trained on "
            f"{expected.get('backbone')} ({expected.get('weights')}); use the matching weights "
            f"(--{kind}-weights) or re-extract features and retrain with this backbone")


class Retriever:
    """Text-to-image (and image-to-image) search over one set of photos with one checkpoint."""

    def __init__(self, model: Any, backbones: dict, names: list[str], embeddings: np.ndarray,
                 images_root: str | os.PathLike, captions: dict[str, list[str]] | None = None,
                 text_backbone: TextBackbone | None = None, device: str | torch.device = "cpu",
                 image_weights: str | os.PathLike | None = None, index_kind: str = "auto",
                 source: str = "", biases: dict[str, np.ndarray] | None = None,
                 models_dir: str | os.PathLike | None = None, calibration: dict | None = None,
                 image_backbone: ImageBackbone | None = None):
        import crossmodal.index as search_index
        if len(names) != len(embeddings):
            raise ValueError(f"{len(names)} names but {len(embeddings)} embeddings")
        if not len(names):
            raise RetrieverError("no readable images to search")
        # Defense in depth (the stages refuse such names when they read them): a hit's path is
        # images_root joined with its name, so no name may lead out of the folder.
        escaping = next((n for n in names if escapes_folder(n)), None)
        if escaping is not None:
            raise RetrieverError(f"the image features name {escaping!r}, a path outside the photos folder "
                                 f"{images_root}; refused: rebuild them from captions without such names")
        self.model = model.eval()
        self._encode_text = self.model.folded_text_encoder()  # encode_text in fewer operations
        self.backbones = backbones
        self.names = names
        self.embeddings = embeddings  # (n, embed_dim) float16 unit vectors, row i = names[i]
        # bank name -> (n,) querybank bias subtracted from text-query scores (querybank.py); the
        # index checks their shapes
        self.biases = {b: np.asarray(v, dtype=np.float32) for b, v in (biases or {}).items()}
        self.calibration = curves_of(calibration)  # query kind -> score-to-confidence curve
        self.images_root = Path(images_root).resolve()
        # One newline-joined string per row instead of a list of strings per image: a third of the
        # memory for Flickr30K's 155,000 captions (caption lines never contain a newline).
        captions = captions or {}
        self._captions = ["\n".join(captions.get(n, ())) for n in names] if captions else None
        self.device = resolve_device(device)
        self.source = source
        self._text_backbone = text_backbone
        self._image_backbone = image_backbone  # loaded on the first photo query unless given
        self._image_weights = image_weights
        self._models_dir = models_dir
        self._lock = threading.Lock()  # fast tokenizers and lazy loading are not thread-safe
        # logs its choice and recall; a FAISS index is tuned on real text queries where it has them
        self.index = search_index.build_index(
            embeddings, kind=index_kind, tuning_queries=self._text_queries if text_backbone is not None else None,
            biases=self.biases)

    # ---------------------------------------------------------------------------------------------
    # construction

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, model: Any, state: dict,
                        image_cache_dir: str | os.PathLike, images_root: str | os.PathLike,
                        captions_file: str | os.PathLike | None = None, device: str | torch.device = "auto", *,
                        text_weights: str | os.PathLike | None = None,
                        image_weights: str | os.PathLike | None = None,
                        models_dir: str | os.PathLike | None = None, load_text: bool = True,
                        index_kind: str = "auto") -> "Retriever":
        """Serve ``model`` (the heads loaded from ``checkpoint``, with its contents ``state``) over a
        feature cache. Refuses a feature cache or text backbone the checkpoint was not trained on."""
        checkpoint = Path(checkpoint)
        device = resolve_device(device)
        backbones = state.get("backbones")
        if not backbones or "image" not in backbones or "text" not in backbones:
            raise RetrieverError(f"{checkpoint} records no backbones; retrain it with `python run_train.py`")
        img_exp = backbones["image"]
        try:
            cache = load_cache(image_cache_dir, {"backbone": img_exp["backbone"], "weights": img_exp["weights"]},
                               rerun="python batch_image_feature_extract.py (with the checkpoint's backbone)")
        except StaleCacheError as err:
            raise RetrieverError(str(err)) from err
        if cache.pooled_dim != model.config_dict()["image_dim"]:
            raise RetrieverError(f"{image_cache_dir} holds {cache.pooled_dim}-d features but the checkpoint's image "
                                 f"head takes {model.config_dict()['image_dim']}-d")
        why = views_mismatch(cache.manifest["preprocess"], img_exp.get("preprocess"))
        if why:
            raise RetrieverError(f"{image_cache_dir}: {why}; extract them again with that --views")
        querybank = state.get("querybank")
        rows, proj, biases = load_or_project(model, cache, file_digest(checkpoint), device, querybank)
        names = [cache.ids[r] for r in rows]
        captions = _read_caption_map(captions_file, set(names)) if captions_file else {}
        text = load_text_backbone(backbones["text"], text_weights, models_dir, device) if load_text else None
        del cache  # only the projected embeddings stay resident
        retriever = cls(model, backbones, names, proj, images_root, captions, text, device, image_weights,
                        index_kind, source=str(checkpoint), biases=biases, models_dir=models_dir,
                        calibration=state.get("calibration"))
        del captions
        _release_free_memory()
        return retriever

    def _text_queries(self) -> np.ndarray:
        """Encoded text queries for tuning and stating a FAISS index's recall.

        Text queries do not fall where image vectors do (the modality gap; with random heads they
        fall anywhere), so recall measured with perturbed image rows, the index's own default, can
        overstate what a user gets. Queries are up to ``TUNING_QUERIES`` captions of the collection,
        else the built-in ``GENERIC_QUERIES``.
        """
        texts = [c for row in self._captions or () for c in row.split("\n") if c] or list(GENERIC_QUERIES)
        if len(texts) > TUNING_QUERIES:
            rng = np.random.default_rng(0)
            texts = [texts[i] for i in np.sort(rng.choice(len(texts), TUNING_QUERIES, replace=False))]
        feats = torch.from_numpy(self._text_backbone.encode(texts, device=self.device))
        with torch.inference_mode():
            queries = self._encode_text(feats.to(self.device)).float().cpu().numpy()
        log.info("FAISS recall is measured on %d text queries (%s)", len(texts),
                 "captions of the collection" if self._captions else "built-in descriptions")
        return queries

    # ---------------------------------------------------------------------------------------------
    # properties

    def __len__(self) -> int:
        return len(self.names)

    @property
    def has_captions(self) -> bool:
        return self._captions is not None

    def captions_of(self, row: int) -> list[str]:
        """The known captions of row ``row`` (an index into ``names``), possibly none."""
        if self._captions is None or not self._captions[row]:
            return []
        return self._captions[row].split("\n")

    @property
    def kind(self) -> str:
        return self.index.kind

    @property
    def recall_at_10(self) -> float | None:
        return getattr(self.index, "recall_at_10", None)

    def describe(self) -> str:
        """One line: what is searched, with which index, and its measured recall."""
        recall = self.recall_at_10
        rec = ("exact search, recall@10 1.000" if recall is None
               else f"measured recall@10 {recall:.3f} against exact search")
        qb = f" · querybank normalisation ({', '.join(self.biases)})" if self.biases else ""
        return (f"{len(self):,} photos · index: {self.kind} ({rec}) · "
                f"{self.backbones['image']['backbone']} + {self.backbones['text']['backbone']}{qb}")

    @property
    def text_backbone(self) -> TextBackbone:
        if self._text_backbone is None:
            with self._lock:
                if self._text_backbone is None:
                    self._text_backbone = load_text_backbone(self.backbones["text"], None, self._models_dir,
                                                             self.device)
        return self._text_backbone

    def served_photos(self) -> tuple[Path, list[str]]:
        """(the photos' folder, the row names): the files the page may serve (``serving.PhotoFiles``)."""
        return self.images_root, self.names

    @property
    def loaded_image_backbone(self) -> ImageBackbone | None:
        """The image backbone if a photo query has loaded it (a rebuilt Retriever can take it over)."""
        return self._image_backbone

    @property
    def image_backbone(self) -> ImageBackbone:
        """Loaded on first use (only image queries need it)."""
        if self._image_backbone is None:
            with self._lock:
                if self._image_backbone is None:
                    exp = self.backbones["image"]
                    backbone = create_image_backbone(exp["backbone"], self._image_weights, self._models_dir)
                    check_identity("image", exp, backbone.name, backbone.weights, "found")
                    backbone.set_views(views_of(exp.get("preprocess")))  # the mean of the trained views
                    backbone.model.to(self.device).eval()
                    self._image_backbone = backbone
        return self._image_backbone

    # ---------------------------------------------------------------------------------------------
    # search

    @staticmethod
    def check_query(query: str) -> str:
        if not isinstance(query, str) or not query.strip():
            raise ValueError("empty query: type a few words describing the photo you are looking for")
        if len(query) > MAX_QUERY_CHARS:
            raise ValueError(f"query too long: {len(query):,} characters (at most {MAX_QUERY_CHARS:,}); "
                             "describe the photo in a sentence or two")
        return " ".join(query.split())

    def _k(self, k: int) -> int:
        """k checked (a whole number, at least 1), then capped at the collection's size."""
        return min(check_k(k), len(self))

    def embed_text(self, query: str) -> np.ndarray:
        """(1, embed_dim) float32 unit vector of a query."""
        return self._embed_checked(self.check_query(query))

    @torch.inference_mode()
    def _embed_checked(self, query: str) -> np.ndarray:
        """``embed_text`` of a query that ``check_query`` has passed (search_text checks it once)."""
        backbone = self.text_backbone
        # What TextBackbone.encode does for one text, with only the tokenizer under the lock (a slow
        # tokenizer, or the first call building the private backend, is not thread-safe; the model is).
        with self._lock:
            batch = backbone.tokenize_one(query)
        if self.device.type == "cpu":  # (no transfers, no autocast context: ~15 us of a query)
            feats = backbone.forward_pooled(batch)
        else:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                feats = backbone.forward_pooled(batch)
        return self._encode_text(feats).float().cpu().numpy()

    @torch.inference_mode()
    def embed_image(self, image: "Image.Image | str | os.PathLike") -> np.ndarray:
        """(1, embed_dim) float32 unit vector of a PIL image, or of an image file decoded within a
        pixel budget (``crossmodal.images.load_image``: ImageRefused, a ValueError, if too large)."""
        backbone = self.image_backbone
        if not isinstance(image, Image.Image):
            image = load_image(image, backbone.image_size)
        x = backbone.pil_transform()(image.convert("RGB")).unsqueeze(0).to(self.device)
        with self._lock:
            feats = backbone.model(x).float()
            return self.model.encode_image(feats).float().cpu().numpy()

    def search_vector(self, query: np.ndarray, k: int = TOP_K, bank: str | None = None,
                      query_kind: str | None = None) -> list[Hit]:
        """The k best rows for a query vector; ``bank`` ranks with that querybank bias ("text" or
        "keywords", for text queries). Hits report the plain cosine similarity either way, and for a
        text query (``query_kind`` "sentence" or "short") a confidence from the ranking score."""
        bias = self.biases.get(bank) if bank else None
        curve = self.calibration.get(query_kind) if query_kind else None
        scores, rows = self.index.search(np.asarray(query, dtype=np.float32).reshape(1, -1), self._k(k),
                                         bank if bias is not None else None)
        root = str(self.images_root)  # os.path.join: cheaper than a Path join per hit
        hits = []
        for score, row in zip(np.asarray(scores)[0], np.asarray(rows)[0]):
            if row < 0:  # an approximate index may return fewer than k
                continue
            confidence = None if curve is None else float(curve.confidence(score))
            if bias is not None:
                score = score + bias[int(row)]
            name = self.names[int(row)]
            hits.append(Hit(len(hits) + 1, os.path.join(root, name), name, float(score),
                            self.captions_of(int(row)), confidence))
        return hits

    def search_text(self, query: str, k: int = TOP_K) -> list[Hit]:
        """The k photos that best match a description. ValueError for an empty or too long query."""
        k = self._k(k)
        query = self.check_query(query)
        return self.search_vector(self._embed_checked(query), k, bank_for_query(query, tuple(self.biases)),
                                  "short" if is_short_query(query) else "sentence")

    def search_image(self, image: "Image.Image | str | os.PathLike | None", k: int = TOP_K) -> list[Hit]:
        """The k indexed photos most similar to a PIL image or an image file (see ``embed_image``).
        ValueError for no image, a file that is not a readable image or one over the pixel budget."""
        if image is None:
            raise ValueError("no image: upload a photo to search with")
        k = self._k(k)
        return self.search_vector(self.embed_image(image), k)


def default_image_root(image_cache_dir: str | os.PathLike, fallback: str | os.PathLike) -> Path:
    """The photos folder recorded by the image extraction stage, else ``fallback``."""
    manifest = read_manifest(image_cache_dir) or {}
    recorded = manifest.get("images_dir") or manifest.get("root")
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    return Path(fallback)


def default_captions(candidates: Sequence[str | os.PathLike | None]) -> Path | None:
    """The first caption file that exists, else None (captions are optional for search)."""
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def open_retriever(load_model: Callable[[Path], tuple[Any, dict]], *, checkpoint: Path | None,
                   collection: Path | None, image_features: Path, images: Path | None, captions: Path | None,
                   default_images: Path, default_captions_file: Path | None, train_hint: str,
                   device: str = "auto", text_weights: Path | None = None, image_weights: Path | None = None,
                   models_dir: Path | None = None) -> Any:
    """What the page and the CLI serve: the photo index in ``collection`` (a ``photos.PhotoSearch``
    over the photos under ``images``, else every indexed folder; the checkpoint defaults to the one
    it was indexed with), else a Retriever over the dataset's image cache with ``checkpoint``.

    ``load_model`` loads a checkpoint (``model.load_checkpoint``). The photos default to the folder
    extraction recorded, the captions to the checkpoint's or extraction's caption file. Anything
    missing is a RetrieverError naming the command that builds it (``train_hint`` trains).
    """
    kw = dict(device=device, text_weights=text_weights, image_weights=image_weights, models_dir=models_dir)
    if collection:
        from crossmodal.photos.serving import PhotoSearch
        from crossmodal.photos.store import DB_FILE, PhotoStore

        if not (Path(collection) / DB_FILE).is_file():
            raise RetrieverError(f"no photo index in {collection}; index a folder first with: "
                                 f"python index_folder.py PHOTO_FOLDER --out {shlex.quote(str(collection))}")
        with PhotoStore(collection) as store:
            recorded, roots = store.checkpoint(), ([images] if images else store.roots())
        if not roots:
            raise RetrieverError(f"the photo index in {collection} holds no folder yet; index one with: "
                                 f"python index_folder.py PHOTO_FOLDER --out {shlex.quote(str(collection))}")
        if len(roots) > 1 and Path(os.path.commonpath(roots)) == Path(os.path.commonpath(roots)).parent:
            # The page serves files under the folder the roots share: never the whole file system.
            raise RetrieverError(f"the folders indexed in {collection} ({', '.join(roots)}) share no parent "
                                 "folder; choose one with --images FOLDER")
        checkpoint = Path(checkpoint or recorded or "")
        if not checkpoint.is_file():
            raise RetrieverError(f"checkpoint not found: {checkpoint}; train one first with: {train_hint}")
        model, state = load_model(checkpoint)
        return PhotoSearch(collection, checkpoint, model, state, roots=roots, **kw)
    if checkpoint is None or not checkpoint.is_file():
        raise RetrieverError(f"no trained checkpoint at {checkpoint}; train one first with: {train_hint}")
    model, state = load_model(checkpoint)
    root = images or default_image_root(image_features, default_images)
    recorded = (read_manifest(image_features) or {}).get("captions_file")
    caption_file = default_captions([captions, state.get("captions_file"), recorded, default_captions_file])
    if captions and caption_file != captions:
        log.warning("caption file %s not found; results are shown without captions", captions)
    return Retriever.from_checkpoint(checkpoint, model, state, image_features, root, caption_file, **kw)
