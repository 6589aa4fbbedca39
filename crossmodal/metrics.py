"""Retrieval metrics (Recall@K, median/mean rank, word-query mAP) and their random-ranking baselines.

Everything is computed block-wise over query rows, so a 25,000 x 5,000 similarity matrix never has
to exist at once. Scores are dot products (cosine similarities for L2-normalised embeddings); ties
are broken pessimistically (a tied wrong item counts as ranked above the right one), so a
degenerate constant embedding cannot look good. Tensors stay on their device (a GPU makes large
evaluations fast); numpy arrays are computed on the CPU.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

KS = (1, 5, 10)
BLOCK = 512  # at most this many query rows per similarity block
BLOCK_ELEMS = 2**21  # and at most this many scores per block (8 MB float32): memory stays flat at any size


def _rows_per_block(n_cols: int) -> int:
    return max(1, min(BLOCK, BLOCK_ELEMS // max(1, n_cols)))


def _tensor(x: torch.Tensor | np.ndarray, device: torch.device | None = None) -> torch.Tensor:
    t = torch.as_tensor(x) if isinstance(x, np.ndarray) else x
    t = t.detach().float()
    return t if device is None else t.to(device)


def _t2i_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_image: torch.Tensor,
               image_bias: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each caption's image among all images (scores minus ``image_bias``)."""
    ranks = []
    step = _rows_per_block(len(image_emb))
    for s in range(0, len(text_emb), step):
        sim = text_emb[s : s + step] @ image_emb.T  # (b, N_img)
        if image_bias is not None:
            sim = sim - image_bias[None, :]
        own = sim.gather(1, caption_image[s : s + step, None])  # score of the right image
        # rank = how many other images score >= the right one (ties pessimistic)
        ranks.append((sim >= own).sum(1) - 1)
    return torch.cat(ranks)


def _i2t_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_image: torch.Tensor,
               text_bias: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each image's best-ranked own caption among all captions (scores minus ``text_bias``)."""
    ranks = []
    step = _rows_per_block(len(text_emb))
    for s in range(0, len(image_emb), step):
        sim = image_emb[s : s + step] @ text_emb.T  # (b, N_cap)
        if text_bias is not None:
            sim = sim - text_bias[None, :]
        rows = torch.arange(s, s + len(sim), device=sim.device)
        mine = caption_image[None, :] == rows[:, None]  # (b, N_cap) own captions
        best_own = sim.masked_fill(~mine, float("-inf")).max(1, keepdim=True).values
        # wrong captions at or above the best own caption (ties pessimistic)
        ranks.append(((sim >= best_own) & ~mine).sum(1))
    return torch.cat(ranks)


def retrieval_metrics(image_emb: torch.Tensor | np.ndarray, text_emb: torch.Tensor | np.ndarray,
                      caption_image: np.ndarray | Sequence[int],
                      image_bias: torch.Tensor | np.ndarray | None = None,
                      text_bias: torch.Tensor | np.ndarray | None = None) -> dict:
    """Recall@{1,5,10} both ways and rsum in percent, 1-based median and mean ranks; python floats.

    ``image_emb`` (N_img, d), ``text_emb`` (N_cap, d), ``caption_image`` (N_cap,): each caption's
    row in ``image_emb``. Text->image: every caption is a query, correct if its image is in the
    top K. Image->text: every image is a query, correct if ANY of its captions is in the top K (its
    rank is that of its best-ranked caption). Images with no caption are still candidates for
    text->image but are not image queries. Keys: t2i_r1 t2i_r5 t2i_r10 i2t_r1 i2t_r5 i2t_r10 rsum
    t2i_medr i2t_medr t2i_meanr i2t_meanr. Optional per-item biases are subtracted from the scores
    of the item being ranked (``querybank.py``): ``image_bias`` (N_img,) for text->image,
    ``text_bias`` (N_cap,) for image->text.
    """
    img = _tensor(image_emb)
    txt = _tensor(text_emb, img.device)
    cap_img = torch.as_tensor(np.asarray(caption_image), dtype=torch.long, device=img.device)
    if len(cap_img) != len(txt):
        raise ValueError(f"caption_image has {len(cap_img)} entries for {len(txt)} caption rows")
    if len(cap_img) and not 0 <= int(cap_img.min()) <= int(cap_img.max()) < len(img):
        raise ValueError(f"caption_image must index the {len(img)} image rows")
    ib = None if image_bias is None else _tensor(image_bias, img.device)
    tb = None if text_bias is None else _tensor(text_bias, img.device)
    if ib is not None and ib.shape != (len(img),) or tb is not None and tb.shape != (len(txt),):
        raise ValueError(f"biases must be ({len(img)},) for images and ({len(txt)},) for captions")
    t2i = _t2i_ranks(img, txt, cap_img, ib).cpu()
    has_caption = (torch.bincount(cap_img, minlength=len(img)) > 0).cpu()
    i2t = _i2t_ranks(img, txt, cap_img, tb).cpu()[has_caption]
    out: dict[str, float] = {}
    for name, ranks in (("t2i", t2i), ("i2t", i2t)):
        for k in KS:
            out[f"{name}_r{k}"] = 100.0 * float((ranks < k).double().mean())
    out["rsum"] = sum(out[f"{n}_r{k}"] for n in ("t2i", "i2t") for k in KS)
    for name, ranks in (("t2i", t2i), ("i2t", i2t)):
        # float median (the mean of the two middle values for even counts), 1-based
        out[f"{name}_medr"] = float(np.median(ranks.numpy())) + 1.0
        out[f"{name}_meanr"] = float(ranks.double().mean()) + 1.0
    return out


def word_query_metrics(image_emb: torch.Tensor | np.ndarray, word_emb: torch.Tensor | np.ndarray,
                       relevance: np.ndarray, image_bias: torch.Tensor | np.ndarray | None = None) -> dict:
    """One-word queries against all images: mean average precision and precision@5, in percent.

    ``relevance[w, i]`` says whether image i is relevant to word w. AP = the mean, over the
    word's relevant images, of the precision at each one's rank. Returns ``map``, ``p5`` (means
    over words with at least one relevant image; P@5 = relevant among the top min(5, N_img)) and
    ``ap``, the per-word AP list (percent; NaN for a word with no relevant image). ``image_bias``
    is subtracted from every image's score, as in ``retrieval_metrics``.
    """
    img = _tensor(image_emb)
    words = _tensor(word_emb, img.device)
    rel = np.asarray(relevance, dtype=bool)
    if rel.shape != (len(words), len(img)):
        raise ValueError(f"relevance must be (n_words, n_images) = {(len(words), len(img))}, got {rel.shape}")
    n_img = len(img)
    positions = np.arange(1, n_img + 1)
    top = min(5, n_img)
    bias = None if image_bias is None else _tensor(image_bias, img.device)
    aps, p5s = [], []
    step = _rows_per_block(n_img)
    for s in range(0, len(words), step):
        sim = words[s : s + step] @ img.T
        if bias is not None:
            sim = sim - bias[None, :]
        sim = sim.cpu().numpy()
        r = rel[s : s + step]
        # sort by score descending; within a tie irrelevant images first (pessimistic, as above)
        order = np.lexsort((r, -sim), axis=-1)
        hits = np.take_along_axis(r, order, axis=1)  # relevance in ranked order
        cum = hits.cumsum(1)
        n_rel = hits.sum(1)
        prec_sum = np.where(hits, cum / positions, 0.0).sum(1)  # sum of precision at each hit
        with np.errstate(invalid="ignore", divide="ignore"):
            aps.extend((prec_sum / n_rel).tolist())
        p5s.extend((hits[:, :top].sum(1) / top).tolist())
    ap = np.asarray(aps, dtype=np.float64) * 100.0
    valid = ~np.isnan(ap)
    return {"map": float(ap[valid].mean()) if valid.any() else float("nan"),
            "p5": float(np.asarray(p5s)[valid].mean() * 100.0) if valid.any() else float("nan"),
            "ap": [float(a) for a in ap]}


def _median_of(survival: np.ndarray) -> float:
    """Median of a distribution on 1, 2, ... given ``survival[r] = P(rank > r)`` for r = 0, 1, ...

    The smallest r with P(rank <= r) >= 1/2; where that probability is exactly 1/2 the median is
    the midpoint r + 1/2 (as numpy's median of an even-sized sample).
    """
    r = int(np.argmax(survival <= 0.5 + 1e-12))
    return r + 0.5 if np.isclose(survival[r], 0.5, rtol=0, atol=1e-12) else float(r)


def chance_retrieval_metrics(n_images: int, captions_per_image: int | Sequence[int] | np.ndarray) -> dict:
    """Exact expected metrics of a uniformly random ranking, in percent (same keys as retrieval_metrics).

    ``captions_per_image``: one count for every image, or the (n_images,) counts per image (images
    with 0 are candidates, not image queries, as in retrieval_metrics). N images, c_i captions each,
    N_cap = sum c_i:
      t2i R@K = K/N (one right image among N, whatever the counts);
      i2t R@K = mean_i [1 - C(N_cap - c_i, K) / C(N_cap, K)] (1 minus the chance that the top K
      captions, a random K-subset, miss all c_i own captions);
      t2i meanr = (N+1)/2; i2t meanr = mean_i (N_cap+1)/(c_i+1) (expected first position of c_i
      random items among N_cap);
      medr = the median of that rank distribution (t2i (N+1)/2; i2t from the survival function
      P(rank > r) = C(N_cap - c, r)/C(N_cap, r), averaged over images). A measured medr is a sample
      median over queries, which this is the large-sample value of.
    """
    n = int(n_images)
    if n < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    counts = np.asarray(captions_per_image, dtype=np.int64)
    counts = np.full(n, int(counts)) if counts.ndim == 0 else counts.reshape(-1)
    if len(counts) != n or (counts < 0).any() or not (counts > 0).any():
        raise ValueError("captions_per_image: one count >= 1, or n_images counts >= 0 (not all 0)")
    n_cap = int(counts.sum())
    queries = counts[counts > 0]
    # survival S_c(r) = P(first own caption below position r) = prod_{j<r} (N_cap - c - j)/(N_cap - j),
    # for r = 0 .. N_cap; averaged over the image queries (grouped by their count)
    j = np.arange(n_cap, dtype=np.float64)
    survival = np.zeros(n_cap + 1)
    for c, w in zip(*np.unique(queries, return_counts=True)):
        ratio = np.clip((n_cap - c - j) / (n_cap - j), 0.0, None)
        survival += w * np.concatenate([[1.0], np.cumprod(ratio)])
    survival /= len(queries)
    out: dict[str, float] = {}
    for k in KS:
        out[f"t2i_r{k}"] = 100.0 * min(k, n) / n
    for k in KS:
        out[f"i2t_r{k}"] = 100.0 * (1.0 - survival[min(k, n_cap)])
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("t2i", "i2t") for k in KS)
    out["t2i_medr"] = (n + 1) / 2
    out["i2t_medr"] = _median_of(survival)
    out["t2i_meanr"] = (n + 1) / 2
    out["i2t_meanr"] = float(np.mean((n_cap + 1) / (queries + 1)))
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
