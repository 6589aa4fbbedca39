"""Querybank normalisation (crossmodal.querybank): the bias formula, biased metrics and biased search."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crossmodal.index import ExactIndex, build_index
from crossmodal.metrics import retrieval_metrics, word_query_metrics
from crossmodal.querybank import (
    bank_for_query,
    caption_bias,
    image_biases,
    make_querybank,
    querybank_bias,
    sample_bank,
    text_banks,
)


def test_bias_is_the_inverted_softmax_log_partition():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bank = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, -1.0]])
    beta = 10.0
    got = querybank_bias(gallery, bank, beta)
    # by hand: row 0 scores 1, 0.6, 0 against the bank; row 1 scores 0, 0.8, -1
    want = [math.log(math.exp(10) + math.exp(6) + 1) / 10, math.log(1 + math.exp(8) + math.exp(-10)) / 10]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.dtype == np.float32


def test_bias_blocks_and_numpy_input_agree(monkeypatch):
    from crossmodal import querybank
    g = torch.nn.functional.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    bank = torch.nn.functional.normalize(torch.randn(30, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    whole = querybank_bias(g, bank, 20.0)
    monkeypatch.setattr(querybank, "BIAS_BLOCK", 7)
    np.testing.assert_allclose(querybank_bias(g.numpy().astype(np.float16), bank, 20.0), whole, atol=2e-3)
    np.testing.assert_allclose(querybank_bias(g, bank, 20.0), whole, rtol=1e-6)


def test_sample_bank_is_capped_seeded_and_float16():
    x = torch.arange(100, dtype=torch.float32)[:, None].repeat(1, 4)
    a, b = sample_bank(x, 10, seed=3), sample_bank(x, 10, seed=3)
    assert a.shape == (10, 4) and a.dtype == torch.float16 and torch.equal(a, b)
    assert len(set(a[:, 0].tolist())) == 10  # distinct rows, no repeats
    assert not torch.equal(a, sample_bank(x, 10, seed=4))
    assert torch.equal(sample_bank(x, 1000), x.half())  # fewer rows than the cap: all of them, in order
    bank = make_querybank(x, x[:5], temperature=0.05, size=10)
    assert bank["beta"] == pytest.approx(20.0) and len(bank["text"]) == 10 and len(bank["image"]) == 5
    assert "keywords" not in bank
    with_kw = make_querybank(x, x[:5], temperature=0.05, size=10, keyword_emb=x[:3])
    assert len(with_kw["keywords"]) == 3 and text_banks(with_kw) == ("text", "keywords")
    assert text_banks(bank) == ("text",) and text_banks(None) == ()
    with pytest.raises(ValueError, match="temperature"):
        make_querybank(x, x, temperature=0.0)


def test_short_queries_use_the_keyword_bank_only():
    both = ("text", "keywords")
    assert bank_for_query("dog", both) == "keywords"
    assert bank_for_query("  black   dog ", both) == "keywords"
    assert bank_for_query("a dog runs", both) == "text"
    assert bank_for_query("dog", ("text",)) is None  # no keyword bank: plain cosine, not the caption bank
    assert bank_for_query("a dog runs", ()) is None


def test_a_hub_image_loses_its_grip_with_the_bias():
    # Image 0 is a hub: the best match of both captions. Caption 1 belongs to image 1.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    cap_img = [0, 1]
    plain = retrieval_metrics(img, txt, cap_img)
    assert plain["t2i_r1"] == 50.0  # caption 1 ranks the hub first
    # a bias of 0.3 on the hub: caption 1 scores 0.8 - 0.3 = 0.5 < 0.6 for image 1; caption 0 keeps 0.7 > 0
    biased = retrieval_metrics(img, txt, cap_img, image_bias=np.array([0.3, 0.0]))
    assert biased["t2i_r1"] == 100.0
    # image 1 scores caption 0 at 0.0 and its own caption 1 at 0.6; a bias of 0.7 on caption 1 flips them
    assert retrieval_metrics(img, txt, cap_img)["i2t_r1"] == 100.0
    assert retrieval_metrics(img, txt, cap_img, text_bias=np.array([0.0, 0.7]))["i2t_r1"] == 50.0
    words = word_query_metrics(img, txt[1:], np.array([[False, True]]), image_bias=np.array([0.3, 0.0]))
    assert words["p5"] == 50.0 and words["map"] == 100.0  # image 1 now ranks first for "caption 1"
    with pytest.raises(ValueError, match="biases"):
        retrieval_metrics(img, txt, cap_img, image_bias=np.zeros(3))


def test_split_biases_use_the_other_modality_bank():
    img = torch.eye(3)[:2]
    txt = torch.eye(3)[1:]
    bank = {"text": torch.eye(3)[:1].half(), "image": torch.eye(3)[2:].half(), "beta": 5.0}
    ib, tb = image_biases(bank, img)["text"], caption_bias(bank, txt)
    np.testing.assert_allclose(ib, [1.0, 0.0], atol=1e-6)  # images against the caption bank
    np.testing.assert_allclose(tb, [0.0, 1.0], atol=1e-6)  # captions against the image bank


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_exact_search_with_bias_is_exact(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x = x.astype(dtype)
    q = rng.standard_normal((7, 16)).astype(np.float32)
    bias = rng.uniform(0, 0.5, 3000).astype(np.float32)
    index = ExactIndex(x, biases={"text": bias})
    scores, rows = index.search(q, 10, "text")
    ref = q @ x.astype(np.float32).T - bias[None]
    ref_rows = np.argsort(-ref, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, np.take_along_axis(ref, ref_rows, 1), atol=1e-5)
    plain = index.search(q, 10)[1]
    assert not np.array_equal(plain, rows)  # the bias changed the ranking
    with pytest.raises(ValueError, match="bias 'text' must be 3000"):
        ExactIndex(x, biases={"text": bias[:5]})
    with pytest.raises(ValueError, match="no querybank bias 'keywords'"):
        index.search(q, 10, "keywords")


def test_faiss_searches_the_biased_score_itself():
    """The bias travels inside the FAISS vectors: recall against exact biased search is what the
    build measured and tuned (>= 0.95), for each bank, and the scores are the biased ones."""
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    # biases large enough to reorder the top 10 of most queries
    biases = {"text": rng.uniform(0.5, 0.8, 6000).astype(np.float32),
              "keywords": rng.uniform(0.0, 0.3, 6000).astype(np.float32)}
    tuning = x[rng.choice(6000, 100, replace=False)] + 0.3 * rng.standard_normal((100, 32)).astype(np.float32)
    index = build_index(x, kind="faiss-ivf", target_recall=0.95, biases=biases, tuning_queries=lambda: tuning)
    assert index.banks == ["text", "keywords"] and index.recall_at_10 >= 0.95
    exact = ExactIndex(x, biases=biases)
    q = x[:60] + 0.3 * rng.standard_normal((60, 32)).astype(np.float32)
    for bank in ("text", "keywords", None):
        scores, rows = index.search(q, 10, bank)
        truth = exact.search(q, 10, bank)[1]
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, truth)])
        assert recall >= 0.9, (bank, recall)
        plain = q @ x.T
        ref = plain - (biases[bank][None] if bank else 0)
        np.testing.assert_allclose(scores, np.take_along_axis(ref, rows, 1), atol=1e-4)
    moved = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact.search(q, 10, "text")[1],
                                                                   exact.search(q, 10)[1])])
    assert moved < 0.8  # the bias really changes the answers
