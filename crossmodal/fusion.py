"""Reciprocal rank fusion: several rankings of the same items combined into one.

An item's fused score is the sum over the rankings that hold it of ``weight / (k + rank)`` (rank
1-based); an item a ranking leaves out gets nothing from it. Only ranks count, so rankings with
incomparable scores (cosine similarity, words matched in a file name, OCR hits) combine without
calibration, and an empty ranking leaves the others' order exactly as it was.

A ranking may hold groups of tied items (a list or tuple in place of an item): each gets the mean
of the ranks the group spans, so a criterion that many items meet equally (a common word in many
file names) lifts each of them less than one that a single item meets.
"""
from __future__ import annotations

from typing import Sequence

RRF_K = 60  # the constant of the original RRF paper; a larger k flattens the gaps between top ranks


def rrf_fuse(rankings: Sequence[Sequence[int | Sequence[int]]], k: float = RRF_K,
             weights: Sequence[float] | None = None) -> list[int]:
    """The items of all ``rankings`` (each best first; an entry is an item or a group of tied items;
    an item appears once per ranking), best fused score first; equal scores keep the order in which
    the items first appear, rankings taken in turn."""
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights):
        rank = 1
        for entry in ranking:
            group = entry if isinstance(entry, (list, tuple)) else (entry,)
            share = weight / (k + rank + (len(group) - 1) / 2)  # the mean rank of the group
            for item in group:
                scores[item] = scores.get(item, 0.0) + share
            rank += len(group)
    return sorted(scores, key=scores.__getitem__, reverse=True)  # stable, also in reverse
