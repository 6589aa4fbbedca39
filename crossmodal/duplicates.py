"""Near-duplicate photos: groups of photos whose image vectors are almost the same.

Two photos are linked when the cosine similarity of their vectors is above a threshold (a FAISS
range search over the L2-normalised vectors, inner product); a group is a connected set of linked
photos, so a photo, its resized copy and a re-encode of that copy form one group even if the
first and last are a little further apart.

The vectors are a collection's backbone vectors (``crossmodal.collection``: the frozen image
encoder's output, the mean of the trained views; in the photo index exact copies share one row), not
the projected search embeddings: the projection is trained to keep what captions say and discards
the detail that tells two similar scenes apart (bench/bench_duplicates.py measures both).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crossmodal.collection import Collection, backbone_vectors

# Cosine similarity of backbone features above which two photos are near-duplicates: the middle of
# the thresholds reaching precision >= 0.95 and recall >= 0.9 in bench/bench_duplicates.py (real
# photos: exact copies, JPEG re-encodes, 50% and 25% resizes, 5-10% crops and brightened copies,
# against the most similar different photos). Missed most: a 25% resize (a 125-pixel thumbnail) is
# grouped with its original mostly through a larger copy; the two alone are rarely linked.
DUPLICATE_THRESHOLD = 0.78


def normalised(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float32 unit rows of ``vectors`` (n, d), and which rows are usable (non-zero and finite:
    an unreadable photo's features are zeros)."""
    x = np.array(vectors, dtype=np.float32, copy=True)
    if x.ndim != 2:
        raise ValueError(f"vectors must be (n, d), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1)
    ok = np.isfinite(norms) & (norms > 0)
    x[ok] /= norms[ok, None]
    x[~ok] = 0.0
    return x, ok


def similar_pairs(vectors: np.ndarray, threshold: float = DUPLICATE_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (m, 2) with i < j, their cosine similarities (m,)) for every pair of usable rows
    whose similarity is above ``threshold``."""
    import faiss

    x, ok = normalised(vectors)
    if not (-1.0 <= threshold < 1.0):
        raise ValueError(f"threshold must be in [-1, 1), got {threshold}")
    if len(x) < 2 or ok.sum() < 2:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    lims, sims, cols = index.range_search(x, float(threshold))  # inner product: results above the radius
    rows = np.repeat(np.arange(len(x)), np.diff(lims.astype(np.int64)))
    keep = (rows < cols) & ok[rows] & ok[cols]
    return np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64), sims[keep]


def find_duplicate_groups(vectors: np.ndarray, threshold: float = DUPLICATE_THRESHOLD) -> list[list[int]]:
    """Groups of two or more rows of ``vectors`` (n, d) linked by cosine similarity above
    ``threshold``, directly or through other rows; each group sorted, groups by first row."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(vectors)
    pairs, _ = similar_pairs(vectors, threshold)
    if not len(pairs):
        return []
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for row in np.unique(pairs):  # only linked rows can be in a group of two or more
        members.setdefault(int(labels[row]), []).append(int(row))
    return sorted(members.values())


@dataclass(frozen=True)
class DuplicateGroup:
    """Near-duplicate photos: their ``names`` (paths below the collection's root, sorted) and, for each
    photo after the first, (the position in ``names`` of its most similar photo before it, their
    similarity)."""

    names: list[str]
    closest: list[tuple[int, float]]


def duplicate_groups(collection: Collection, threshold: float = DUPLICATE_THRESHOLD) -> list[DuplicateGroup]:
    """The near-duplicate groups among a collection's photos, from their backbone vectors (nothing is
    decoded); photos named as the collection names them (their path below its root)."""
    vectors = backbone_vectors(collection)
    out = []
    for rows in find_duplicate_groups(vectors, threshold):
        unit, _ = normalised(vectors[rows])  # the group's rows only: no second copy of the whole matrix
        sims = unit @ unit.T
        closest = [(int(np.argmax(sims[i, :i])), float(sims[i, :i].max())) for i in range(1, len(rows))]
        out.append(DuplicateGroup([collection.names[r] for r in rows], closest))
    return out
