"""Evaluation of trained heads on cached features: the standard retrieval protocol and one-word queries.

Text→image R@1/5/10 (every caption a query), image→text R@1/5/10 (an image query is correct when
any of its captions ranks in the top K), rsum and median ranks; plus one-word queries: the split's
most frequent caption nouns, where an image is relevant when one of its captions contains the noun
(mAP and P@5). A model is anything with ``encode_image`` and ``encode_text`` (the heads of
``model.py``); a split's data anything with ``image_features``, ``caption_features``,
``caption_image`` and ``image_names`` (``data_loader.SplitData``).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import numpy as np
import torch

from crossmodal.captions import CaptionSet
from crossmodal.metrics import retrieval_metrics, word_query_metrics
from crossmodal.querybank import caption_bias, image_biases

N_WORD_QUERIES = 200


def encode_rows(encode: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor,
                batch_size: int = 4096) -> torch.Tensor:
    """``encode`` (a head) over float16 feature rows, in batches."""
    return torch.cat([encode(features[i : i + batch_size].float()) for i in range(0, len(features), batch_size)])


def embed_split(model: Any, data: Any, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected, normalised image and caption embeddings of a split."""
    model.eval()
    return (encode_rows(model.encode_image, data.image_features, batch_size),
            encode_rows(model.encode_text, data.caption_features, batch_size))


def plain_metrics(metrics: dict) -> dict[str, float]:
    """Metrics as Python floats: what checkpoints and JSON reports hold."""
    return {k: float(v) for k, v in metrics.items()}


def word_queries(data: Any, captions: CaptionSet, n_words: int = N_WORD_QUERIES) -> tuple[list[str], np.ndarray]:
    """The split's most frequent caption nouns and which images each is relevant to."""
    from crossmodal.keywords import nouns_of

    image_index = {n: i for i, n in enumerate(data.image_names)}
    nouns_per_image: list[set[str]] = [set() for _ in data.image_names]
    for cap in captions.captions:
        j = image_index.get(cap.image)
        if j is not None:
            nouns_per_image[j].update(nouns_of(cap.text))
    counts = Counter(w for s in nouns_per_image for w in s)
    # Ties in count go alphabetically: set iteration order changes with each process's string hash
    # seed, and most_common() alone then picked different words at the cutoff from run to run.
    ranked = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))
    # A word relevant to nearly every image says nothing about ranking; keep informative ones.
    words = [w for w, c in ranked if 2 <= c <= 0.5 * len(data.image_names)][:n_words]
    relevance = np.array([[w in s for s in nouns_per_image] for w in words], dtype=bool)
    return words, relevance


def evaluate_model(model: Any, data: Any, word_feats: torch.Tensor | None,
                   relevance: np.ndarray | None, querybank: dict | None = None) -> dict:
    """Metrics of one model; with a ``querybank`` (``querybank.py``) every score is normalised by it."""
    img, txt = embed_split(model, data)
    image_bias = text_bias = word_bias = None
    if querybank is not None:  # one-word queries use the keyword bank, as search does (querybank.bank_for_query)
        biases = image_biases(querybank, img)
        image_bias, word_bias = biases["text"], biases.get("keywords")
        # a shipped model keeps no image bank (crossmodal.pretrained): its image->text ranks are plain
        text_bias = caption_bias(querybank, txt) if "image" in querybank else None
    out = retrieval_metrics(img, txt, data.caption_image, image_bias, text_bias)
    if word_feats is not None:
        with torch.inference_mode():
            words = model.encode_text(word_feats)
        wm = word_query_metrics(img, words, relevance, word_bias)
        out.update({"word_map": wm["map"], "word_p5": wm["p5"]})
    return plain_metrics(out)


def clip_benchmark_keys(metrics: dict) -> dict[str, float]:
    """The recalls under CLIP_benchmark's names, as fractions: ``image_retrieval_recall@K`` is
    text→image (a caption finds its image), ``text_retrieval_recall@K`` image→text."""
    return {**{f"image_retrieval_recall@{k}": metrics[f"t2i_r{k}"] / 100 for k in (1, 5, 10)},
            **{f"text_retrieval_recall@{k}": metrics[f"i2t_r{k}"] / 100 for k in (1, 5, 10)}}


COLUMNS = [("t2i_r1", "T→I R@1"), ("t2i_r5", "R@5"), ("t2i_r10", "R@10"), ("i2t_r1", "I→T R@1"),
           ("i2t_r5", "R@5"), ("i2t_r10", "R@10"), ("rsum", "rsum"), ("t2i_medr", "T→I medr"),
           ("word_map", "word mAP"), ("word_p5", "word P@5")]


def markdown_table(rows: dict[str, dict]) -> str:
    head = "| model | " + " | ".join(c for _, c in COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(COLUMNS)
    lines = [head, sep]
    for name, m in rows.items():
        cells = [f"{m[k]:.1f}" if k in m else "–" for k, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
