"""Training and evaluation data from the feature caches: loaded once, batches gathered by index.

The original design read one ``.npy`` per sample; here each cache is memory-mapped once, copied
into a tensor, and a batch is one fancy-index per matrix. Caches are checked against each other
(same image list, same backbones) before anything is trained on them. Training a text top
(``--text-top-layers``) reads the texts' cached token states beside their pooled features.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from crossmodal.backbones import views_mismatch
from crossmodal.captions import CaptionSet, DatasetError, image_of_row_id, load_splits, read_captions
from crossmodal.features.cache import FeatureCache, StaleCacheError, load_cache
from crossmodal.features.states import TextStates, load_text_states, states_dir
from crossmodal.paths import Layout

log = logging.getLogger(__name__)

@dataclass
class Caches:
    """The three caches of one dataset, checked to belong together."""

    images: FeatureCache
    captions: FeatureCache
    keywords: FeatureCache | None = None
    caption_states: TextStates | None = None  # with a text top: the captions' token states, row for row
    keyword_states: TextStates | None = None

    @property
    def backbones(self) -> dict:
        """What a checkpoint records so the app and evaluation use the same encoders."""
        m_img, m_txt = self.images.manifest, self.captions.manifest
        image = {k: m_img[k] for k in ("backbone", "weights", "preprocess")}
        image["dim"] = self.images.pooled_dim  # the heads see one cell- or view-sized vector
        return {"image": image, "text": {k: m_txt[k] for k in ("backbone", "weights", "dim", "preprocess")}}

    @property
    def identity(self) -> dict:
        """The rows' identities (hashes of the caches' id lists), which a checkpoint records so that a
        resume on other data is refused."""
        caches = {"image": self.images, "caption": self.captions, "keyword": self.keywords}
        return {f"{kind}_ids_sha256": cache.manifest["ids_sha256"] for kind, cache in caches.items()
                if cache is not None}


def open_caches(image_dir: Path, text_dir: Path, keyword_dir: Path | None = None,
                rerun_hint: str = "", expected_backbones: dict | None = None, rebuild: str | None = None,
                text_top_layers: int = 0) -> Caches:
    """Load the caches, refusing ones that do not belong together or to the expected backbones;
    with ``text_top_layers``, the texts' token states for a top of that many layers too.

    An error names the command that rebuilds the cache: its extraction stage with the data flags
    ``rerun_hint``, or ``rebuild`` when given (one command for all three).
    """
    def rerun(stage: str) -> str:
        return rebuild or f"python {stage} {rerun_hint}".strip()

    # backbone + weights identify the encoder; dims follow from them (a views cache's rows are wider)
    exp_img = {k: v for k, v in (expected_backbones or {}).get("image", {}).items() if k in ("backbone", "weights")}
    exp_txt = {k: v for k, v in (expected_backbones or {}).get("text", {}).items() if k in ("backbone", "weights")}
    images = load_cache(image_dir, exp_img, rerun("batch_image_feature_extract.py"))
    why = None
    if expected_backbones:
        why = views_mismatch(images.manifest["preprocess"], expected_backbones["image"].get("preprocess"))
    if why:
        raise StaleCacheError(f"{image_dir}: {why}; "
                              + (f"rebuild it with: {rebuild}" if rebuild
                                 else "rerun batch_image_feature_extract.py with that --views"))
    captions = load_cache(text_dir, exp_txt, rerun("batch_text_feature_extract.py"))
    keywords = None
    if keyword_dir is not None:
        keywords = load_cache(keyword_dir, {k: captions.manifest[k] for k in ("backbone", "weights", "dim")},
                              rerun("extract_aug_text_features.py"))
    cap_images = captions.manifest.get("image_ids_sha256")
    if cap_images is not None and cap_images != images.manifest["ids_sha256"]:
        raise StaleCacheError(
            f"{text_dir} was extracted from a caption file whose image list differs from the images "
            f"cached in {image_dir}; rerun both extraction stages on the same --captions")
    found = Caches(images, captions, keywords)
    if text_top_layers:
        def states_of(cache: FeatureCache, stage: str) -> TextStates:
            expected = {k: cache.manifest[k] for k in ("backbone", "weights", "rows", "ids_sha256")}
            return load_text_states(states_dir(cache.directory, text_top_layers),
                                    {**expected, "top_layers": text_top_layers},
                                    f"python {stage} {rerun_hint} --text-top-layers {text_top_layers}".strip())
        found.caption_states = states_of(captions, "batch_text_feature_extract.py")
        if keywords is not None:
            found.keyword_states = states_of(keywords, "extract_aug_text_features.py")
    return found


@dataclass
class SplitData:
    """Features of one split, as tensors, with each text row's image index (into this split)."""

    image_names: list[str]
    image_features: torch.Tensor  # (n_images, D_img) float16
    caption_features: torch.Tensor  # (n_captions, D_txt) float16
    caption_image: np.ndarray  # (n_captions,) index into image_names
    keyword_features: torch.Tensor | None = None  # (n_keywords, D_txt)
    keyword_image: np.ndarray | None = None
    image_views: torch.Tensor | None = None  # (n_images, V, D_img) from a --views cache, else None
    caption_states: TextStates | None = None  # with a text top: token states, row for row with the features
    keyword_states: TextStates | None = None

    @property
    def n_captions(self) -> int:
        return len(self.caption_image)

    def pool_text(self, top: torch.nn.Module) -> None:
        """Make the text features the trained top's output for the cached token states (what
        validation, the querybank and calibration then read)."""
        if self.caption_states is not None:
            self.caption_features = self.caption_states.pooled(top)
        if self.keyword_states is not None and self.keyword_features is not None:
            self.keyword_features = self.keyword_states.pooled(top)

    def text_states(self, sample_index: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states of sampler indices (captions, then keywords, as ``gather``): (B, T, D) and mask."""
        idx = np.asarray(sample_index)
        is_cap = idx < self.n_captions
        if is_cap.all():
            return self.caption_states.batch(idx)
        parts = [self.caption_states.subset(idx[is_cap]), self.keyword_states.subset(idx[~is_cap] - self.n_captions)]
        joined = TextStates.concat(parts)
        order = np.concatenate([np.flatnonzero(is_cap), np.flatnonzero(~is_cap)])
        return joined.batch(np.argsort(order))

    def image_index(self, sample_index: Sequence[int] | np.ndarray) -> torch.Tensor:
        """The image row of each sampler index (a caption's or a keyword sample's image)."""
        idx = np.asarray(sample_index)
        is_cap = idx < self.n_captions
        image_idx = np.empty(len(idx), dtype=np.int64)
        image_idx[is_cap] = self.caption_image[idx[is_cap]]
        if (~is_cap).any():
            image_idx[~is_cap] = self.keyword_image[idx[~is_cap] - self.n_captions]
        return torch.from_numpy(image_idx)

    def gather(self, sample_index: Sequence[int] | np.ndarray,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One training batch: (image features, text features, image index) for sampler indices.

        Index i < n_captions is caption row i; larger indices are keyword rows (i - n_captions).
        With a views cache, each image feature is one of its views, drawn at random per sample.
        """
        idx = np.asarray(sample_index)
        is_cap = idx < self.n_captions
        text = torch.empty((len(idx), self.caption_features.shape[1]), dtype=self.caption_features.dtype)
        text[torch.from_numpy(is_cap)] = self.caption_features[torch.from_numpy(idx[is_cap])]
        if (~is_cap).any():
            kw = idx[~is_cap] - self.n_captions
            text[torch.from_numpy(~is_cap)] = self.keyword_features[torch.from_numpy(kw)]
        image_idx_t = self.image_index(idx)
        if self.image_views is not None:
            view = torch.randint(0, self.image_views.shape[1], (len(idx),), generator=generator)
            return self.image_views[image_idx_t, view], text, image_idx_t
        return self.image_features[image_idx_t], text, image_idx_t


def split_data(caches: Caches, image_names: Sequence[str], use_keywords: bool = True) -> SplitData:
    """The rows of the given images (unreadable images left out, with a warning)."""
    row_of = {n: i for i, n in enumerate(caches.images.ids)}
    failed = caches.images.failed_ids
    dropped = [n for n in image_names if n in failed]
    if dropped:
        log.warning("%d image(s) of this split could not be read at extraction and are left out (e.g. %s)",
                    len(dropped), dropped[:3])
    missing = [n for n in image_names if n not in row_of]
    if missing:
        raise StaleCacheError(f"{len(missing)} image(s) of the split are not in the image cache "
                              f"{caches.images.directory} (e.g. {missing[:3]}); rerun the extraction stages")
    names = [n for n in image_names if n not in failed]
    local = {n: i for i, n in enumerate(names)}
    img_rows = np.array([row_of[n] for n in names], dtype=np.int64)
    image_features = torch.from_numpy(np.ascontiguousarray(caches.images.features[np.sort(img_rows)]))
    # rows were read sorted (fast memmap access); put them back in split order
    image_features = image_features[torch.from_numpy(np.argsort(np.argsort(img_rows)))]
    views = caches.images.manifest.get("views")
    view_rows = None
    if views:  # V views per row: training samples them; the plain feature is their mean
        view_rows = image_features.view(len(names), len(views), -1)
        image_features = view_rows.float().mean(1).to(torch.float16)

    def rows_for(cache: FeatureCache) -> tuple[np.ndarray, np.ndarray]:
        rows, owners = [], []
        for r, rid in enumerate(cache.ids):
            j = local.get(image_of_row_id(rid))
            if j is not None:
                rows.append(r)
                owners.append(j)
        return np.asarray(rows, dtype=np.int64), np.asarray(owners, dtype=np.int64)

    cap_rows, cap_owner = rows_for(caches.captions)
    data = SplitData(names, image_features,
                     torch.from_numpy(np.ascontiguousarray(caches.captions.features[cap_rows])),
                     cap_owner, image_views=view_rows)
    if caches.caption_states is not None:
        data.caption_states = caches.caption_states.subset(cap_rows)
    if use_keywords and caches.keywords is not None:
        kw_rows, kw_owner = rows_for(caches.keywords)
        data.keyword_features = torch.from_numpy(np.ascontiguousarray(caches.keywords.features[kw_rows]))
        data.keyword_image = kw_owner
        if caches.keyword_states is not None:
            data.keyword_states = caches.keyword_states.subset(kw_rows)
    return data


def concat_splits(parts: Sequence[SplitData], sources: Sequence[str]) -> SplitData:
    """One training split of several sources' splits (image names prefixed ``<source>:`` where a
    source is named, so two sources' ``1.jpg`` stay two images)."""
    if len({p.image_features.shape[1] for p in parts}) != 1 or len({p.caption_features.shape[1] for p in parts}) != 1:
        raise StaleCacheError("the training sources' features have different widths: extract them all with the "
                              "same backbones and --views")
    offsets = np.cumsum([0] + [len(p.image_names) for p in parts])
    names = [f"{source}:{n}" if source else n for p, source in zip(parts, sources) for n in p.image_names]
    views = [p.image_views for p in parts]
    keywords = [p for p in parts if p.keyword_features is not None]
    if len({p.caption_states is None for p in parts}) != 1 or len({p.keyword_states is None for p in keywords}) > 1:
        raise StaleCacheError("some training sources have text states and others not: extract them all with the "
                              "same --text-top-layers")
    return SplitData(
        names, torch.cat([p.image_features for p in parts]), torch.cat([p.caption_features for p in parts]),
        np.concatenate([p.caption_image + off for p, off in zip(parts, offsets)]),
        keyword_features=torch.cat([p.keyword_features for p in keywords]) if keywords else None,
        keyword_image=(np.concatenate([p.keyword_image + off for p, off in zip(parts, offsets)
                                       if p.keyword_features is not None]) if keywords else None),
        image_views=torch.cat(views) if all(v is not None for v in views) else None,
        caption_states=(TextStates.concat([p.caption_states for p in parts])
                        if parts[0].caption_states is not None else None),
        keyword_states=(TextStates.concat([p.keyword_states for p in keywords])
                        if keywords and keywords[0].keyword_states is not None else None))


def open_source(work_dir: Path, backbones: dict, use_keywords: bool,
                text_top_layers: int = 0) -> tuple[SplitData, SplitData, CaptionSet]:
    """The train and validation splits of another dataset whose extraction stages wrote ``work_dir``
    (its split lists in ``work_dir/splits``), and the validation split's captions; refused unless
    its features come from ``backbones``."""
    lay = Layout(Path(work_dir))
    caches = open_caches(lay.image_features, lay.text_features, lay.aug_text_features if use_keywords else None,
                         rerun_hint=f"--work-dir {work_dir}", text_top_layers=text_top_layers)
    if caches.backbones != backbones:
        raise StaleCacheError(f"{work_dir}: its features come from {caches.backbones['image']['backbone']} + "
                              f"{caches.backbones['text']['backbone']} ({caches.backbones}), the training data's from "
                              f"{backbones}; extract every source with the same backbones and --views")
    captions_file = caches.images.manifest.get("captions_file")
    if not captions_file:
        raise StaleCacheError(f"{lay.image_features} records no caption file; rerun batch_image_feature_extract.py")
    captions = read_captions(captions_file)
    splits = load_splits(captions, lay.default_splits())
    if not splits["train"] or not splits["val"]:
        raise DatasetError(f"{lay.default_splits()}: need non-empty train and val (or dev) splits")
    val = split_data(caches, splits["val"], False)
    return split_data(caches, splits["train"], use_keywords), val, captions.subset(val.image_names)
