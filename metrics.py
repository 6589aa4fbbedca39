"""Retrieval metrics (Recall@K, median rank, word-query mAP) and their random-ranking baselines.

Everything is computed block-wise over query rows, so a 25,000 x 5,000 similarity matrix never has
to exist at once. Scores are cosine similarities (embeddings are L2-normalised); ties are broken
pessimistically (a tied wrong item counts as ranked above the right one), so a degenerate
constant embedding cannot look good.
"""
from __future__ import annotations

from math import comb

import numpy as np
import torch

KS = (1, 5, 10)
BLOCK = 512  # query rows per similarity block: 512 x 25,000 floats = 50 MB (a few such temporaries live at once)


def _tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x) if isinstance(x, np.ndarray) else x
    return t.detach().float().cpu()


def _t2i_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_image: torch.Tensor) -> torch.Tensor:
    """0-based rank of each caption's image among all images."""
    ranks = []
    for s in range(0, len(text_emb), BLOCK):
        sim = text_emb[s : s + BLOCK] @ image_emb.T  # (b, N_img)
        own = sim.gather(1, caption_image[s : s + BLOCK, None])  # score of the right image
        # rank = how many other images score >= the right one (ties pessimistic)
        ranks.append((sim >= own).sum(1) - 1)
    return torch.cat(ranks)


def _i2t_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_image: torch.Tensor) -> torch.Tensor:
    """0-based rank of each image's best-ranked own caption among all captions."""
    ranks = []
    for s in range(0, len(image_emb), BLOCK):
        sim = image_emb[s : s + BLOCK] @ text_emb.T  # (b, N_cap)
        mine = caption_image[None, :] == torch.arange(s, s + len(sim))[:, None]  # (b, N_cap) own captions
        best_own = sim.masked_fill(~mine, float("-inf")).max(1, keepdim=True).values
        # wrong captions at or above the best own caption (ties pessimistic)
        ranks.append(((sim >= best_own) & ~mine).sum(1))
    return torch.cat(ranks)


def retrieval_metrics(image_emb: torch.Tensor | np.ndarray, text_emb: torch.Tensor | np.ndarray,
                      caption_image: np.ndarray) -> dict:
    """Recall@{1,5,10} both ways, rsum and 1-based median ranks, in percent, as python floats.

    Text->image: every caption is a query, correct if its image is in the top K.
    Image->text: every image is a query, correct if ANY of its captions is in the top K.
    Images with no caption are still candidates for text->image but are not image queries.
    """
    img, txt = _tensor(image_emb), _tensor(text_emb)
    cap_img = torch.as_tensor(np.asarray(caption_image), dtype=torch.long)
    if len(cap_img) != len(txt):
        raise ValueError(f"caption_image has {len(cap_img)} entries for {len(txt)} caption rows")
    t2i = _t2i_ranks(img, txt, cap_img)
    has_caption = torch.bincount(cap_img, minlength=len(img)) > 0
    i2t = _i2t_ranks(img, txt, cap_img)[has_caption]
    out: dict[str, float] = {}
    for name, ranks in (("t2i", t2i), ("i2t", i2t)):
        for k in KS:
            out[f"{name}_r{k}"] = 100.0 * float((ranks < k).double().mean())
    out["rsum"] = sum(out[f"{n}_r{k}"] for n in ("t2i", "i2t") for k in KS)
    # float median (the mean of the two middle values for even counts), 1-based
    out["t2i_medr"] = float(np.median(t2i.numpy())) + 1.0
    out["i2t_medr"] = float(np.median(i2t.numpy())) + 1.0
    return out


def word_query_metrics(image_emb: torch.Tensor | np.ndarray, word_emb: torch.Tensor | np.ndarray,
                       relevance: np.ndarray) -> dict:
    """One-word queries against all images: mean average precision and precision@5, in percent.

    ``relevance[w, i]`` says whether image i is relevant to word w. Returns ``map``, ``p5``
    (means over words with at least one relevant image) and ``ap``, the per-word AP list
    (percent; NaN for a word with no relevant image).
    """
    img, words = _tensor(image_emb), _tensor(word_emb)
    rel = np.asarray(relevance, dtype=bool)
    if rel.shape != (len(words), len(img)):
        raise ValueError(f"relevance must be (n_words, n_images) = {(len(words), len(img))}, got {rel.shape}")
    aps, p5s = [], []
    for s in range(0, len(words), BLOCK):
        sim = (words[s : s + BLOCK] @ img.T).numpy()
        r = rel[s : s + BLOCK]
        # stable sort of -sim: ties keep image order, deterministic
        order = np.argsort(-sim, axis=1, kind="stable")
        hits = np.take_along_axis(r, order, axis=1).astype(np.float64)  # relevance in ranked order
        cum = hits.cumsum(1)
        n_rel = hits.sum(1)
        prec_at = cum / np.arange(1, hits.shape[1] + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            aps.extend(((prec_at * hits).sum(1) / n_rel).tolist())  # AP = mean precision at each hit
        p5s.extend((hits[:, :5].sum(1) / 5.0).tolist())
    ap = np.asarray(aps) * 100.0
    valid = ~np.isnan(ap)
    return {"map": float(ap[valid].mean()) if valid.any() else float("nan"),
            "p5": float(np.asarray(p5s)[valid].mean() * 100.0) if valid.any() else float("nan"),
            "ap": [float(a) for a in ap]}


def chance_retrieval_metrics(n_images: int, captions_per_image: int) -> dict:
    """Expected metrics of a uniformly random ranking, in percent (same keys as retrieval_metrics).

    With N images and c captions each (N_cap = N*c):
      t2i R@K = K/N (one right image among N);
      i2t R@K = 1 - C(N_cap - c, K) / C(N_cap, K) (chance that the top K captions, a random
      K-subset, miss all c own captions).
    Median ranks are the expected rank of the first hit: t2i (N+1)/2, i2t (N_cap+1)/(c+1)
    (the expected minimum position of c random items among N_cap).
    """
    n, c = int(n_images), int(captions_per_image)
    n_cap = n * c
    out: dict[str, float] = {}
    for k in KS:
        out[f"t2i_r{k}"] = 100.0 * min(k, n) / n
    for k in KS:
        k_ = min(k, n_cap)
        out[f"i2t_r{k}"] = 100.0 * (1.0 - comb(n_cap - c, k_) / comb(n_cap, k_))
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("t2i", "i2t") for k in KS)
    out["t2i_medr"] = (n + 1) / 2
    out["i2t_medr"] = (n_cap + 1) / (c + 1)
    return out


def chance_word_metrics(relevance: np.ndarray) -> dict:
    """Expected word-query metrics of a uniformly random ranking, in percent.

    For a word with R relevant images among N:
      P@5 = R/N exactly (each of the top 5 is relevant with probability R/N);
      E[AP] = (R-1)/(N-1) + (N-R)/(N-1) * H_N/N, H_N the N-th harmonic number. (Derivation: a
      relevant item at uniform position p has 1 + (p-1)(R-1)/(N-1) relevant items expected at or
      above it, so E[AP] = (1/N) sum_p [1/p + (R-1)/(N-1) (1 - 1/p)].) This is ~= R/N unless R/N
      is tiny, where the H_N/N term (the chance of a lucky first hit) dominates.
    Means are over words with at least one relevant image, as in word_query_metrics.
    """
    rel = np.asarray(relevance, dtype=bool)
    n = rel.shape[1]
    r = rel.sum(1).astype(np.float64)
    r = r[r > 0]
    if len(r) == 0:
        return {"map": float("nan"), "p5": float("nan")}
    if n == 1:
        ap = np.ones_like(r)
    else:
        h_n = float(np.sum(1.0 / np.arange(1, n + 1)))
        ap = (r - 1) / (n - 1) + (n - r) / (n - 1) * h_n / n
    return {"map": float(ap.mean() * 100.0), "p5": float((r / n).mean() * 100.0)}
