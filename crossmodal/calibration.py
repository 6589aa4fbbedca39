"""Match confidence: the probability that a hit shows what the query describes, from its score.

A cosine score means little to a person (is 0.31 good?), and its scale differs between models. So
after training a logistic curve (Platt scaling) maps the score search ranks by (the cosine minus
the querybank bias, when the checkpoint has a querybank) to a probability, fitted on held-out dev
pairs and stored in the checkpoint as plain numbers.

The population is what a person sees: the top ``CALIBRATION_TOP_K`` hits of each dev query of
three kinds (``querybank.query_kind``), each scored as search scores its kind: the dev captions
of nine words or more as sentences, the captions' leading words ("a man climbing a rock" of
"A man climbing a rock face .") as phrases, and the dev captions' most frequent nouns as one-word
queries. A phrase fits many photos where a sentence fits one or a few, so the same score means a
likelier match for a phrase. Every hit is labelled by a rule from the photo's captions: its own
photo, or a photo with a caption close in meaning to the query (``LABEL_SIMILARITY``), or for a
word one whose captions name it.
The thresholds were chosen on query–photo pairs people judged by looking at the photos
(``bench/judgments/``): counting only a caption's own photo as a match calls most fitting photos
misses, and the curve then says "weak" to hits people call good.

Dev images are split in two by a seeded shuffle: the curve is fitted on one half (its images as the
gallery, their captions as queries) and its expected calibration error, and the precision and
recall of the ``CONFIDENT`` threshold, are reported on the other half. ``python -m
bench.judged_confidence`` measures the curves against the judged pairs themselves.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

CALIBRATION_TOP_K = 10  # hits per query in the fitted population: about what a page of results shows
CONFIDENT = 0.5  # a hit at or above this confidence is a good match; below it the page marks it weak
ECE_BINS = 10  # equal-width probability bins of the expected calibration error
FIT_FRACTION = 0.5  # share of dev images the curve is fitted on; the rest measure it
SEED = 0
QUERY_KINDS = ("sentence", "phrase", "short")  # calibrated apart (querybank.query_kind)
# The labelling rule: a photo matches a query when one of its captions is this close in meaning to
# the query (cosine of the text backbone's features). Chosen so that the curves fitted on the labels
# agree best with half of the judged pairs of bench/judgments/ (python -m bench.label_threshold);
# the other half measures them (python -m bench.judged_confidence).
LABEL_SIMILARITY = {"sentence": 0.95, "phrase": 0.55, "short": 0.25}


@dataclass(frozen=True)
class Calibration:
    """sigmoid(slope * score + intercept): a hit's match probability from its ranking score."""

    slope: float
    intercept: float

    def confidence(self, scores: np.ndarray | float) -> np.ndarray:
        z = self.slope * np.asarray(scores, dtype=np.float64) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def to_dict(self) -> dict:
        return {"method": "platt", "slope": float(self.slope), "intercept": float(self.intercept)}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        if d.get("method") != "platt":
            raise ValueError(f"unknown calibration method {d.get('method')!r}")
        return cls(float(d["slope"]), float(d["intercept"]))


def fit_platt(scores: np.ndarray, labels: np.ndarray) -> Calibration:
    """The logistic curve of ``labels`` (match or not) on ``scores`` (maximum likelihood)."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        raise ValueError("calibration needs both matches and misses among the hits")
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(np.asarray(scores, dtype=np.float64).reshape(-1, 1), labels)
    return Calibration(float(lr.coef_[0, 0]), float(lr.intercept_[0]))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |predicted − observed match rate| over equal-width probability bins, weighted by size."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    which = np.minimum((probs * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(probs[inside].mean() - labels[inside].mean())
    return float(total / max(len(probs), 1))


def threshold_quality(probs: np.ndarray, labels: np.ndarray, threshold: float = CONFIDENT) -> dict[str, float]:
    """Precision and recall of calling hits at or above ``threshold`` good matches (within the top-K hits)."""
    probs, labels = np.asarray(probs), np.asarray(labels, dtype=bool)
    called = probs >= threshold
    return {"precision": float(labels[called].mean()) if called.any() else float("nan"),
            "recall": float(called[labels].mean()) if labels.any() else float("nan"),
            "called": float(called.mean())}


def top_hits(query_emb: torch.Tensor, image_emb: torch.Tensor, relevant: np.ndarray,
             image_bias: torch.Tensor | np.ndarray | None = None,
             k: int = CALIBRATION_TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of each query's top ``k`` images, ranked as search ranks them (cosine
    minus ``image_bias``); ``relevant[q, i]`` says whether image i matches query q."""
    sim = query_emb.float() @ image_emb.float().T
    if image_bias is not None:
        sim = sim - torch.as_tensor(np.asarray(image_bias), dtype=torch.float32)[None, :]
    scores, rows = sim.topk(min(k, sim.shape[1]), dim=1)
    labels = np.take_along_axis(np.asarray(relevant, dtype=bool), rows.numpy(), axis=1)
    return scores.numpy().ravel(), labels.ravel()


def split_images(n_images: int, fraction: float = FIT_FRACTION, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Image indices of the fitting half and the measuring half (seeded, disjoint)."""
    order = np.random.default_rng(seed).permutation(n_images)
    cut = int(round(n_images * fraction))
    return np.sort(order[:cut]), np.sort(order[cut:])


def fit_and_report(populations: dict[str, tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]]
                   ) -> dict[str, Any]:
    """For each query kind, (fit scores, fit labels) and (held-out scores, labels) -> what a
    checkpoint stores: the curve, and its quality on the held-out hits."""
    out: dict[str, Any] = {"top_k": CALIBRATION_TOP_K, "threshold": CONFIDENT}
    for kind, ((fit_s, fit_y), (held_s, held_y)) in populations.items():
        curve = fit_platt(fit_s, fit_y)
        probs = curve.confidence(held_s)
        out[kind] = {**curve.to_dict(),
                     "held_out": {"ece": expected_calibration_error(probs, held_y), "hits": int(len(held_y)),
                                  "match_rate": float(np.mean(held_y)), **threshold_quality(probs, held_y)}}
    return out


def read_judged(path: str | os.PathLike) -> list[dict]:
    """Query–photo pairs people judged by looking at the photos (``bench/judgments/*.tsv``: columns
    sheet, kind, query, photo, match 0/1, ...), one dict per pair; a bad ``match`` is refused naming its row."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for line, row in enumerate(rows, start=2):
        if row.get("match") not in ("0", "1") or not row.get("query") or not row.get("photo"):
            raise ValueError(f"{path}, line {line}: a judged pair needs a query, a photo and match 0 or 1")
    return rows


def in_fit_half(rows: list[dict]) -> dict[str, bool]:
    """Sheet -> whether it is in the fitting half: alternate sheets within each sheet kind, in file
    order. The other half measures what was fitted."""
    sheets: dict[str, list[str]] = {}
    for r in rows:
        kind = sheets.setdefault(r["kind"], [])
        if r["sheet"] not in kind:
            kind.append(r["sheet"])
    return {sheet: i % 2 == 0 for kind in sheets.values() for i, sheet in enumerate(kind)}


def calibrate_judged(rows: list[dict], score: Callable[[Sequence[dict]], np.ndarray]) -> dict[str, Any]:
    """The curves of each query kind (``querybank.query_kind``) fitted on judged pairs (``read_judged``):
    on the fitting half of the sheets (``in_fit_half``), measured on the other. ``score`` gives the
    pairs' ranking scores as search computes them. A kind needs matches and misses in both halves;
    a kind without judged pairs gets no curve (phrases then use the sentences')."""
    from crossmodal.querybank import query_kind

    scores = np.asarray(score(rows), dtype=np.float64)
    fit_half = in_fit_half(rows)
    kinds = np.array([query_kind(r["query"]) for r in rows])
    labels = np.array([r["match"] == "1" for r in rows])
    fit = np.array([fit_half[r["sheet"]] for r in rows])
    populations = {}
    for kind in QUERY_KINDS:
        mine = kinds == kind
        if (labels[mine & fit].any() and not labels[mine & fit].all()
                and labels[mine & ~fit].any() and not labels[mine & ~fit].all()):
            populations[kind] = ((scores[mine & fit], labels[mine & fit]), (scores[mine & ~fit], labels[mine & ~fit]))
    if not populations:
        raise ValueError("the judged pairs hold no query kind with both matches and misses in both halves")
    report = fit_and_report(populations)
    report["labels"] = {"rule": "people's judgments", "pairs": int(len(rows))}
    return report


def curves_of(stored: dict | None) -> dict[str, Calibration]:
    """The query kinds' curves from a checkpoint's ``calibration`` entry (empty when it has none)."""
    if not stored:
        return {}
    return {kind: Calibration.from_dict(stored[kind]) for kind in QUERY_KINDS if kind in stored}


def best_caption_similarity(query_feats: np.ndarray | torch.Tensor, caption_feats: np.ndarray | torch.Tensor,
                            caption_image: np.ndarray, n_images: int) -> np.ndarray:
    """(n_queries, n_images) float32: for each query and photo, the highest cosine between the query's
    and one of the photo's captions' text-backbone features (-1 for a photo without captions)."""
    q = torch.nn.functional.normalize(torch.as_tensor(query_feats).float(), dim=1)
    c = torch.nn.functional.normalize(torch.as_tensor(caption_feats).float(), dim=1)
    best = torch.full((len(q), n_images), -1.0)
    owner = torch.as_tensor(np.asarray(caption_image), dtype=torch.int64)
    for start in range(0, len(q), 512):  # (queries x captions) in blocks: all dev at once is large
        sim = q[start:start + 512] @ c.T
        best[start:start + 512].scatter_reduce_(1, owner.expand(len(sim), -1), sim, "amax")
    return best.numpy()


def sentence_relevance(data: Any) -> np.ndarray:
    """(n_captions, n_images) bool, the labelling rule for caption queries: a caption matches its own
    photo, and any photo with a caption close in meaning (``LABEL_SIMILARITY``)."""
    n_images = len(data.image_names)
    relevance = best_caption_similarity(data.caption_features, data.caption_features, data.caption_image,
                                        n_images) >= LABEL_SIMILARITY["sentence"]
    relevance[np.arange(len(relevance)), np.asarray(data.caption_image)] = True
    return relevance


def short_relevance(word_feats: np.ndarray, noun_relevance: np.ndarray, data: Any) -> np.ndarray:
    """(n_words, n_images) bool, the labelling rule for one-word queries: a photo whose captions name
    the word, or one with a caption close to it in meaning (``LABEL_SIMILARITY``)."""
    close = best_caption_similarity(word_feats, data.caption_features, data.caption_image, len(data.image_names))
    return np.asarray(noun_relevance, dtype=bool) | (close >= LABEL_SIMILARITY["short"])


def calibrate_dev(model: Any, sets: list[tuple[Any, Any]], encode_words: Any,
                  querybank: dict | None = None) -> dict[str, Any]:
    """Fit and measure the curves on dev splits: ``sets`` holds (``data_loader.SplitData``, its
    ``CaptionSet``) per dataset; ``encode_words``: list of words -> text backbone features. Each
    query kind is scored as search scores it (``querybank.bank_for_query``) and labelled by its rule;
    the hits of every dataset's two halves are pooled."""
    from crossmodal.evaluation import embed_split, word_queries
    from crossmodal.keywords import leading_phrase
    from crossmodal.querybank import image_biases, query_kind

    populations: dict[str, list] = {kind: [[], []] for kind in QUERY_KINDS}
    described = {"dev_images": [], "short_queries": [], "phrase_queries": []}
    for data, captions in sets:
        with torch.inference_mode():
            img, txt = embed_split(model, data)
        words, noun_relevance = word_queries(data, captions)
        word_feats = np.asarray(encode_words(words), dtype=np.float32)
        with torch.inference_mode():
            word_emb = model.encode_text(torch.as_tensor(word_feats))
        biases = image_biases(querybank, img) if querybank is not None else {}
        caption_relevance = sentence_relevance(data)
        word_relevance = short_relevance(word_feats, noun_relevance, data)
        # phrases: each caption's leading words ("a man climbing a rock"), a match for its own photo and
        # for photos with a caption close to it
        image_index = {n: i for i, n in enumerate(data.image_names)}
        caption_image = np.asarray(data.caption_image)
        if [image_index.get(c.image) for c in captions.captions] != caption_image.tolist():
            raise ValueError("the captions do not match the split's caption rows")
        is_sentence = np.array([query_kind(c.text) == "sentence" for c in captions.captions], dtype=bool)
        phrase_of = [leading_phrase(c.text) for c in captions.captions]
        texts = sorted({p for p in phrase_of if p})
        row_of = {t: i for i, t in enumerate(texts)}
        phrase_feats = np.asarray(encode_words(texts), dtype=np.float32).reshape(len(texts), -1)
        with torch.inference_mode():
            phrase_emb = model.encode_text(torch.as_tensor(phrase_feats))
        phrase_relevance = best_caption_similarity(phrase_feats, data.caption_features, data.caption_image,
                                                   len(img)) >= LABEL_SIMILARITY["phrase"]
        phrase_owner = np.full(len(texts), -1)  # the photo of a phrase's first caption: its half
        for phrase, owner in zip(phrase_of, caption_image):
            if phrase:
                phrase_relevance[row_of[phrase], owner] = True
                if phrase_owner[row_of[phrase]] < 0:
                    phrase_owner[row_of[phrase]] = owner
        halves = split_images(len(img))
        for h, half in enumerate(halves):
            # this half's captions of a sentence's length query this half's images
            own = np.isin(caption_image, half) & is_sentence
            cols = torch.as_tensor(half)

            def bias_of(bank: str, cols: torch.Tensor = cols) -> np.ndarray | None:
                return biases[bank][cols.numpy()] if bank in biases else None

            populations["sentence"][h].append(top_hits(txt[torch.as_tensor(own)], img[cols],
                                                       caption_relevance[own][:, half], bias_of("text")))
            populations["short"][h].append(top_hits(word_emb, img[cols], word_relevance[:, half],
                                                    bias_of("keywords")))
            mine = np.isin(phrase_owner, half)  # phrases of this half's captions
            populations["phrase"][h].append(top_hits(phrase_emb[torch.as_tensor(mine)], img[cols],
                                                     phrase_relevance[mine][:, half], bias_of("text")))
        described["dev_images"].append([len(h) for h in halves])
        described["short_queries"].append(len(words))
        described["phrase_queries"].append(len(texts))

    def pooled(parts: list) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    report = fit_and_report({kind: (pooled(fit), pooled(held)) for kind, (fit, held) in populations.items()})
    report.update(described)
    report["labels"] = {"rule": "own caption, or a caption with text-backbone cosine >= threshold",
                        "thresholds": dict(LABEL_SIMILARITY)}
    return report
