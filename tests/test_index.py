"""crossmodal.index: exact search against brute force, FAISS recall, the automatic choice."""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

import crossmodal.index as si
from crossmodal.index import ExactIndex, FaissIndex, build_index, recall_at


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int, bias: np.ndarray | None = None):
    """Reference top-k: the full float64 score matrix, stably sorted (score desc, then row asc)."""
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    if bias is not None:
        scores -= bias.astype(np.float64)
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, 1), rows, scores


def dyadic(rng: np.random.Generator, shape, dtype=np.float32) -> np.ndarray:
    """Random multiples of 1/8 in [-1, 1]: exact in float16, and their dot products (and sums with
    multiples of 1/64) are exact in float32 in any order, so there is one right answer, with ties."""
    return (rng.integers(-8, 9, shape) / 8).astype(dtype)


def clustered(n: int, d: int, n_clusters: int = 200, rank: int = 6, seed: int = 0) -> np.ndarray:
    """Small clustered, L2-normalised data (Gaussian clusters with a low-rank spread)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    bases = rng.standard_normal((n_clusters, rank, d)).astype(np.float32) / np.sqrt(d)
    c = rng.integers(0, n_clusters, n)
    z = rng.standard_normal((n, rank)).astype(np.float32) * 0.5
    x = centers[c] + np.einsum("nr,nrd->nd", z, bases[c])
    x += rng.standard_normal(x.shape).astype(np.float32) * (0.2 / np.sqrt(d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def small_clustered() -> np.ndarray:
    return clustered(20_000, 64)


@pytest.fixture(scope="module")
def ivf(small_clustered) -> FaissIndex:
    index = build_index(small_clustered, exact_max=1_000, target_recall=0.95)  # forces FAISS
    assert isinstance(index, FaissIndex)
    return index


# --------------------------------------------------------------------------------------------------
# exact search

def assert_exact_top_k(scores, rows, full, k):
    """``rows`` hold k distinct rows whose true scores (``full``) are the k best, returned exactly
    and in order; rows tied in score may come in any order."""
    ref = -np.sort(-full, axis=1)[:, :k]
    assert rows.shape == (len(full), k) and rows.dtype == np.int64 and scores.dtype == np.float32
    assert all(len(set(r.tolist())) == k for r in rows)
    np.testing.assert_array_equal(np.take_along_axis(full, rows, 1), ref)
    np.testing.assert_array_equal(scores, ref)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("with_bias", [False, True])
def test_exact_equals_brute_force_with_ties(dtype, with_bias):
    rng = np.random.default_rng(0)
    vectors = dyadic(rng, (2_000, 16), dtype)
    dups = [5, 300, 301, 900, 1999]
    vectors[dups] = 1.0
    queries = dyadic(rng, (40, 16))
    queries[0] = 1.0  # its best rows are the duplicates, all tied
    bias = None
    if with_bias:
        bias = (rng.integers(0, 8, 2_000) / 64).astype(np.float32)
        bias[dups] = 0.0
    index = ExactIndex(vectors, biases={"text": bias} if with_bias else None)
    bank = "text" if with_bias else None
    _, _, full = brute_force(vectors, queries, 1, bias)
    for k in (1, 10, 300):
        scores, rows = index.search(queries, k, bank)
        assert_exact_top_k(scores, rows, full, k)  # exact: no rounding in this data
        for i in (0, 17, 39):  # one query at a time: the same scores as in the batch
            np.testing.assert_array_equal(index.search(queries[i : i + 1], k, bank)[0][0], scores[i])
    assert sorted(index.search(queries[:1], 5, bank)[1][0].tolist()) == dups


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_exact_on_continuous_data_finds_the_true_top_k(dtype):
    # Unit vectors as the app stores them: float32 rounding may swap rows whose scores are within
    # ~1e-7, so the check is that the rows returned have the k best true scores, in order.
    x = clustered(3_000, 64, seed=1).astype(dtype)
    q = si.recall_queries(x.astype(np.float32), 40, seed=2)
    bias = np.random.default_rng(3).uniform(0, 0.2, 3_000).astype(np.float32)
    index = ExactIndex(x, biases={"text": bias})
    for bank, b in ((None, None), ("text", bias)):
        scores, rows = index.search(q, 20, bank)
        ref_scores, ref_rows, full = brute_force(x, q, 20, b)
        np.testing.assert_allclose(np.take_along_axis(full, rows, 1), ref_scores, rtol=0, atol=1e-6)
        np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-6)
        assert (rows == ref_rows).mean() > 0.99


def test_k_larger_than_size():
    vectors = np.eye(4, dtype=np.float32)
    scores, rows = ExactIndex(vectors).search(vectors[:2], 10)
    assert rows.shape == (2, 4) and scores.shape == (2, 4)
    assert rows[0][0] == 0 and rows[1][0] == 1 and all(sorted(r.tolist()) == [0, 1, 2, 3] for r in rows)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_exact_over_a_memory_map(tmp_path, dtype):
    x = clustered(5_000, 32, seed=4).astype(dtype)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    q = si.recall_queries(x.astype(np.float32), 20, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's warning about a read-only array
        s1, r1 = ExactIndex(mapped).search(q, 10)
    s2, r2 = ExactIndex(x).search(q, 10)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(s1, s2)


def test_read_only_queries_are_accepted():
    x = np.eye(8, dtype=np.float32)
    q = x[:2].copy()
    q.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps a read-only array
        np.testing.assert_array_equal(ExactIndex(x).search(q, 1)[1], [[0], [1]])


@pytest.mark.parametrize("bad, message", [
    (np.zeros(8, np.float32), "2-D"),
    (np.zeros((2, 3, 8), np.float32), "2-D"),
    (np.zeros((2, 7), np.float32), "dimension 7"),
    (np.full((1, 8), np.nan, np.float32), "NaN"),
    (np.array([["a"] * 8]), "numeric"),
])
def test_bad_queries(bad, message):
    index = ExactIndex(np.eye(8, dtype=np.float32))
    with pytest.raises(ValueError, match=message):
        index.search(bad, 3)


def test_bad_vectors_k_and_banks():
    with pytest.raises(ValueError, match="2-D"):
        build_index(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="no vectors"):
        build_index(np.zeros((0, 8), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        build_index(np.full((3, 8), np.inf, np.float32))
    with pytest.raises(ValueError, match="unknown index kind"):
        build_index(np.eye(4, dtype=np.float32), kind="faiss-hnsw")
    with pytest.raises(ValueError, match="positive integer"):
        ExactIndex(np.eye(4, dtype=np.float32)).search(np.eye(4, dtype=np.float32), 0)
    with pytest.raises(ValueError, match="bias 'text' must be 4"):
        ExactIndex(np.eye(4, dtype=np.float32), biases={"text": np.zeros(3)})
    with pytest.raises(ValueError, match="no querybank bias 'text'"):
        ExactIndex(np.eye(4, dtype=np.float32)).search(np.eye(4, dtype=np.float32), 1, "text")


# --------------------------------------------------------------------------------------------------
# FAISS

def test_faiss_ivf_recall_meets_target(ivf, small_clustered):
    import faiss

    assert ivf.kind == "faiss-ivf"
    assert isinstance(faiss.downcast_index(ivf.index), faiss.IndexIVFFlat)
    assert ivf.index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert ivf.params["nlist"] == si.default_nlist(20_000) == faiss.extract_index_ivf(ivf.index).nlist
    assert 1 <= ivf.params["nprobe"] < ivf.params["nlist"]  # tuned: fewer than all lists
    assert ivf.recall_at_10 is not None and ivf.recall_at_10 >= 0.95
    # Independently measured on other queries (different seed) it holds up too.
    queries = si.recall_queries(small_clustered, 200, seed=11)
    truth = ExactIndex(small_clustered).search(queries, 10)[1]
    assert recall_at(ivf.search(queries, 10)[1], truth) >= 0.93


def test_faiss_nprobe_is_the_smallest_that_reaches_the_target(ivf, small_clustered):
    # the step below the tuned nprobe measures under the target on the same (default) queries
    steps = [s for s in si.NPROBE_STEPS if s < ivf.params["nprobe"]]
    assert steps  # this data needs more than one list per query
    queries = si.recall_queries(small_clustered, seed=0)
    truth = ExactIndex(small_clustered).search(queries, 10)[1]
    assert recall_at(ivf._raw_search(queries, 10, steps[-1])[1], truth) < 0.95
    tuned = recall_at(ivf._raw_search(queries, 10, ivf.params["nprobe"])[1], truth)
    assert tuned == pytest.approx(ivf.recall_at_10, abs=1e-4)  # the recall the build reports


def test_faiss_k_larger_than_size_and_than_probed_lists(ivf, small_clustered):
    _, rows = ivf.search(small_clustered[:3], 500)  # more than a few lists hold
    assert rows.shape == (3, 500) and (rows >= 0).all()
    assert all(len(set(r.tolist())) == 500 for r in rows)
    tiny = build_index(small_clustered[:100], kind="faiss-ivf", nlist=2)
    assert tiny.search(small_clustered[:1], 1000)[1].shape == (1, 100)
    with pytest.raises(ValueError, match="nlist must be in"):
        build_index(small_clustered[:100], kind="faiss-ivf", nlist=101)


def test_faiss_sq8_pads_to_whole_simd_blocks(small_clustered):
    # one bank on 64-d vectors: 65 columns would take FAISS's slow non-SIMD SQ8 path; 80 are held
    bias = np.random.default_rng(5).uniform(0, 0.05, len(small_clustered)).astype(np.float32)
    index = build_index(small_clustered, kind="faiss-ivf-sq8", biases={"text": bias}, target_recall=0.9)
    assert index.index.d == 80 == si.faiss_width("faiss-ivf-sq8", 64, 1)
    assert si.faiss_width("faiss-ivf", 64, 1) == 65 and si.faiss_width("faiss-ivf-sq8", 48, 0) == 48
    q = si.recall_queries(small_clustered, 50, seed=7)
    exact = ExactIndex(small_clustered, biases={"text": bias})
    for bank in (None, "text"):
        assert recall_at(index.search(q, 10, bank)[1], exact.search(q, 10, bank)[1]) >= 0.85


# --------------------------------------------------------------------------------------------------
# choosing

def test_auto_choice_by_size(small_clustered, caplog):
    with caplog.at_level(logging.INFO, logger="crossmodal.index"):
        assert build_index(small_clustered[:3_000], exact_max=3_000).kind == "exact"
        assert build_index(small_clustered[:3_001], exact_max=3_000).kind == "faiss-ivf"
    assert "exact_max=3,000" in caplog.text and "recall@10=" in caplog.text
    # Above IVF_FLAT_MAX_BYTES of float32, "faiss" stores 8-bit codes instead.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(si, "IVF_FLAT_MAX_BYTES", 1_000)
        assert build_index(small_clustered[:3_001], exact_max=3_000).kind == "faiss-ivf-sq8"
