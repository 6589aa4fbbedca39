"""Retrieval and word-query metrics against hand-computed examples, perfect embeddings and chance."""
from math import comb

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crossmodal.metrics import chance_retrieval_metrics, chance_word_metrics, retrieval_metrics, word_query_metrics


def _e(*idx, d=4):
    """Unit basis vectors e_idx (rows)."""
    return np.eye(d, dtype=np.float32)[list(idx)]


def test_hand_computed_retrieval():
    # 3 images = e0, e1, e2 (d=3). 4 captions, caption_image = [0, 0, 1, 2]:
    #   cap0 = e0             -> sims to images (1, 0, 0):   own image 0 rank 1
    #   cap1 = (e1 + .5 e0)/n -> sims ∝ (.5, 1, 0):           own image 0 rank 2
    #   cap2 = (e2 + .5 e1)/n -> sims ∝ (0, .5, 1):           own image 1 rank 2
    #   cap3 = e0             -> sims (1, 0, 0):             own image 2 (sim 0, tied with image 1) rank 3
    #                                                        (ties pessimistic)
    # t2i ranks = [1, 2, 2, 3]: R@1 = 1/4 = 25 %, R@5 = R@10 = 100 %, medr = median(1,2,2,3) = 2
    # i2t (image query, best-ranked own caption among 4):
    #   img0 sims to captions (1, .447, 0, 1): own caps 0,1 -> best is cap0 = 1.0, tied with cap3 (wrong) -> rank 2
    #   img1 sims (0, .894, .447, 0): own cap2 .447, cap1 above it -> rank 2
    #   img2 sims (0, 0, .894, 0): own cap3 = 0, cap2 above, caps 0,1 tied -> rank 4
    # i2t ranks = [2, 2, 4]: R@1 = 0, R@5 = R@10 = 100 %, medr = 2
    # mean ranks: t2i (1+2+2+3)/4 = 2, i2t (2+2+4)/3 = 8/3
    img = np.eye(3, dtype=np.float32)
    txt = np.array([[1, 0, 0], [0.5, 1, 0], [0, 0.5, 1], [1, 0, 0]], dtype=np.float32)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    m = retrieval_metrics(img, txt, np.array([0, 0, 1, 2]))
    assert m["t2i_r1"] == pytest.approx(25.0)
    assert m["t2i_r5"] == m["t2i_r10"] == pytest.approx(100.0)
    assert m["i2t_r1"] == pytest.approx(0.0)
    assert m["i2t_r5"] == m["i2t_r10"] == pytest.approx(100.0)
    assert m["rsum"] == pytest.approx(25 + 100 + 100 + 0 + 100 + 100)
    assert m["t2i_medr"] == pytest.approx(2.0)
    assert m["i2t_medr"] == pytest.approx(2.0)
    assert m["t2i_meanr"] == pytest.approx(2.0)
    assert m["i2t_meanr"] == pytest.approx(8 / 3)
    assert all(type(v) is float for v in m.values())


def test_hand_computed_recall_at_k_cutoff():
    # 12 images e0..e11; one caption per image. caption i scores image i at 0.5 and images
    # 0..(i-1) at 1.0, so its own image is at rank i+1. R@1 = 1/12, R@5 = 5/12, R@10 = 10/12.
    n = 12
    img = np.eye(n, dtype=np.float32)
    txt = np.tril(np.ones((n, n), dtype=np.float32), -1) + 0.5 * np.eye(n, dtype=np.float32)
    m = retrieval_metrics(img, txt, np.arange(n))  # (not unit rows: ranking only needs the dot products)
    assert m["t2i_r1"] == pytest.approx(100 / 12)
    assert m["t2i_r5"] == pytest.approx(500 / 12)
    assert m["t2i_r10"] == pytest.approx(1000 / 12)
    assert m["t2i_medr"] == pytest.approx(6.5)  # ranks 1..12, median (6+7)/2
    assert m["t2i_meanr"] == pytest.approx(6.5)  # (1+...+12)/12 = 78/12


def test_image_without_captions_is_a_candidate_not_a_query():
    # images e0, e1, e2; captions only of images 0 and 2. cap0 = e0 + .9 e1 (scores image 0 at 1, image 1 at .9),
    # cap1 = e1 + .5 e2 (image 1 at 1 beats its own image 2 at .5): t2i ranks [1, 2].
    # i2t queries are images 0 and 2 only: image 0 scores (cap0 1, cap1 0) -> rank 1;
    # image 2 scores (cap0 0, cap1 .5) -> rank 1. Image 1 (no caption) is not averaged in.
    img = np.eye(3, dtype=np.float32)
    txt = np.array([[1, 0.9, 0], [0, 1, 0.5]], dtype=np.float32)
    m = retrieval_metrics(img, txt, np.array([0, 2]))
    assert m["t2i_r1"] == pytest.approx(50.0) and m["t2i_meanr"] == pytest.approx(1.5)
    assert m["i2t_r1"] == pytest.approx(100.0) and m["i2t_meanr"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        retrieval_metrics(img, txt, np.array([0, 3]))  # no image row 3
    with pytest.raises(ValueError):
        retrieval_metrics(img, txt, np.array([0]))  # one entry per caption row


def test_constant_embeddings_score_worst_not_best():
    # every score tied: pessimistic ties put every right answer last (rank 20 > 10: every recall is 0)
    n, c = 20, 2
    m = retrieval_metrics(np.ones((n, 4), np.float32), np.ones((n * c, 4), np.float32), np.repeat(np.arange(n), c))
    assert m["rsum"] == 0.0
    assert m["t2i_medr"] == n and m["i2t_medr"] == n * c - c + 1


def test_perfect_embeddings():
    # 1,000 images x 5 captions (5,000 caption queries): also checks the block-wise path at a real size
    n, c, d = 1000, 5, 64
    img = F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(0)), dim=-1)
    cap_img = np.repeat(np.arange(n), c)
    txt = img[torch.from_numpy(cap_img)] + 0.01 * torch.randn(n * c, d, generator=torch.Generator().manual_seed(1))
    m = retrieval_metrics(img, F.normalize(txt, dim=-1), cap_img)
    for k in ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10"):
        assert m[k] == pytest.approx(100.0)
    assert m["rsum"] == pytest.approx(600.0)
    assert m["t2i_medr"] == m["i2t_medr"] == 1.0


def test_blockwise_matches_single_block(monkeypatch):
    from crossmodal import metrics
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(140, 8)).astype(np.float32)
    cap_img = rng.integers(0, 50, 140)
    full = retrieval_metrics(img, txt, cap_img)
    monkeypatch.setattr(metrics, "BLOCK", 7)
    assert retrieval_metrics(torch.from_numpy(img), torch.from_numpy(txt), cap_img) == full
    monkeypatch.setattr(metrics, "BLOCK", 512)
    monkeypatch.setattr(metrics, "BLOCK_ELEMS", 300)  # element budget: 6 text rows of 50 images, 2 image rows of 140
    assert retrieval_metrics(img, txt, cap_img) == full
    rel = rng.random((30, 50)) < 0.2
    words = rng.normal(size=(30, 8)).astype(np.float32)
    monkeypatch.setattr(metrics, "BLOCK_ELEMS", 2**21)
    w_full = word_query_metrics(img, words, rel)
    monkeypatch.setattr(metrics, "BLOCK_ELEMS", 120)
    assert word_query_metrics(img, words, rel) == pytest.approx(w_full, nan_ok=True)


def test_random_embeddings_near_chance():
    n, c = 400, 5
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(n, 64, generator=g), dim=-1)
    txt = F.normalize(torch.randn(n * c, 64, generator=g), dim=-1)
    m = retrieval_metrics(img, txt, np.repeat(np.arange(n), c))
    ch = chance_retrieval_metrics(n, c)
    assert m["t2i_r10"] == pytest.approx(ch["t2i_r10"], abs=1.5)  # 2.5 %, sd ~0.35
    assert m["i2t_r10"] == pytest.approx(ch["i2t_r10"], abs=6.0)  # ~11.8 %, sd ~1.6
    assert m["t2i_medr"] == pytest.approx(ch["t2i_medr"], rel=0.15)  # 200.5
    assert m["i2t_medr"] == pytest.approx(ch["i2t_medr"], rel=0.25)  # ~259, sample-median sd ~17


def test_chance_retrieval_formulas():
    ch = chance_retrieval_metrics(1000, 5)
    assert ch["t2i_r1"] == pytest.approx(0.1)
    assert ch["t2i_r10"] == pytest.approx(1.0)
    # i2t R@1 = 1 - 4995/5000 = 0.1 %
    assert ch["i2t_r1"] == pytest.approx(100 * 5 / 5000)
    assert ch["i2t_r5"] == pytest.approx(100 * (1 - comb(4995, 5) / comb(5000, 5)))
    assert ch["rsum"] == pytest.approx(sum(ch[f"{d}_r{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10)))
    assert ch["t2i_medr"] == ch["t2i_meanr"] == pytest.approx(500.5)
    assert ch["i2t_meanr"] == pytest.approx(5001 / 6)  # (N_cap+1)/(c+1)
    # i2t median: P(first own caption below r) = C(4995, r)/C(5000, r) ~ (1 - r/5000)^5 = 1/2 at r ~ 647
    assert 640 < ch["i2t_medr"] < 655
    assert comb(4995, int(ch["i2t_medr"])) / comb(5000, int(ch["i2t_medr"])) <= 0.5
    assert comb(4995, int(ch["i2t_medr"]) - 1) / comb(5000, int(ch["i2t_medr"]) - 1) > 0.5
    # tiny case by enumeration: 2 images x 2 captions, N_cap = 4. An image's first own caption is at
    # position 1 w.p. 2/4, 2 w.p. (2/4)(2/3) = 1/3, 3 w.p. 1/6: i2t R@1 = 50 %, R@5 = 100 %,
    # meanr = 1/2 + 2/3 + 3/6 = 5/3, and P(rank <= 1) is exactly 1/2, so medr = 1.5
    ch = chance_retrieval_metrics(2, 2)
    assert ch["i2t_r1"] == pytest.approx(50.0) and ch["i2t_r5"] == pytest.approx(100.0)
    assert ch["t2i_r1"] == pytest.approx(50.0) and ch["t2i_r5"] == pytest.approx(100.0)
    assert ch["i2t_meanr"] == pytest.approx(5 / 3) and ch["i2t_medr"] == pytest.approx(1.5)


def test_chance_with_per_image_caption_counts():
    # counts (1, 3), N_cap = 4. Image A (1 caption): R@1 = 1/4, meanr 5/2; image B (3): R@1 = 3/4,
    # meanr 5/4. Means: R@1 = 50 %, meanr = 1.875. Survival at 1: (3/4 + 1/4)/2 = 1/2 -> medr 1.5.
    # At K = 2: A misses w.p. (3/4)(2/3) = 1/2, B w.p. (1/4)(0/3) = 0 -> R@2 would be 75 %; R@5 = 100 %.
    ch = chance_retrieval_metrics(2, [1, 3])
    assert ch["i2t_r1"] == pytest.approx(50.0) and ch["i2t_r5"] == pytest.approx(100.0)
    assert ch["i2t_meanr"] == pytest.approx(1.875) and ch["i2t_medr"] == pytest.approx(1.5)
    assert ch["t2i_r1"] == pytest.approx(50.0)
    # an image with no caption is a t2i candidate only: (0, 2, 2) is the 2 x 2 case with a third image
    ch = chance_retrieval_metrics(3, [0, 2, 2])
    assert ch["t2i_r1"] == pytest.approx(100 / 3)
    assert ch["i2t_r1"] == pytest.approx(50.0) and ch["i2t_meanr"] == pytest.approx(5 / 3)
    assert chance_retrieval_metrics(1000, np.full(1000, 5)) == chance_retrieval_metrics(1000, 5)
    with pytest.raises(ValueError):
        chance_retrieval_metrics(3, [1, 2])  # one count per image
    with pytest.raises(ValueError):
        chance_retrieval_metrics(2, 0)


def test_chance_retrieval_matches_simulation():
    # random rankings: each image's c own captions at c random positions among N_cap
    n, c, draws = 50, 3, 4000
    rng = np.random.default_rng(0)
    first = np.argsort(rng.random((draws, n * c)), axis=1)[:, :c].min(1) + 1  # position of the first own caption
    ch = chance_retrieval_metrics(n, c)
    for k in (1, 5, 10):
        assert ch[f"i2t_r{k}"] == pytest.approx(100 * np.mean(first <= k), abs=2.5)
    assert ch["i2t_meanr"] == pytest.approx(first.mean(), rel=0.05)
    assert ch["i2t_medr"] == pytest.approx(np.median(first), abs=3)


def test_hand_computed_word_query():
    # 6 images along e0..e5; word 0 = e0 + .8 e1 + .6 e2 + .4 e3 + .2 e4 -> ranking 0,1,2,3,4,5.
    # relevant images {0, 2, 5}: hits at ranks 1, 3, 6 -> AP = (1/1 + 2/3 + 3/6)/3 = 0.7222
    #   P@5 = 2/5 = 40 %
    # word 1 = same ranking, relevant {1}: AP = 1/2, P@5 = 1/5 = 20 %
    # mAP = (72.22 + 50)/2 = 61.11, P@5 = 30 %
    img = np.eye(6, dtype=np.float32)
    w = np.array([1, 0.8, 0.6, 0.4, 0.2, 0], dtype=np.float32)
    words = np.stack([w, w])
    rel = np.zeros((2, 6), dtype=bool)
    rel[0, [0, 2, 5]] = True
    rel[1, 1] = True
    m = word_query_metrics(img, words, rel)
    assert m["ap"] == pytest.approx([100 * (1 + 2 / 3 + 0.5) / 3, 50.0])
    assert m["map"] == pytest.approx((100 * (1 + 2 / 3 + 0.5) / 3 + 50) / 2)
    assert m["p5"] == pytest.approx(30.0)


def test_word_query_ties_are_pessimistic():
    # 4 images; word scores (1, .5, .5, 0): images 1 and 2 tie. Relevant {1}: the tied irrelevant
    # image 2 goes first, so image 1 is at rank 3 -> AP = 1/3; with 4 images P@5 counts the top 4 -> 1/4.
    # All scores tied (constant embeddings), relevant {0}: rank 4 -> AP = 1/4.
    img = np.eye(4, dtype=np.float32)
    words = np.array([[1, 0.5, 0.5, 0], [1, 1, 1, 1]], dtype=np.float32)
    rel = np.zeros((2, 4), dtype=bool)
    rel[0, 1] = rel[1, 0] = True
    m = word_query_metrics(img, words, rel)
    assert m["ap"] == pytest.approx([100 / 3, 25.0])
    assert m["p5"] == pytest.approx(25.0)


def test_word_without_relevant_image_is_skipped():
    img = np.eye(3, dtype=np.float32)
    rel = np.array([[True, False, False], [False, False, False]])
    m = word_query_metrics(img, img[:2], rel)
    assert m["map"] == pytest.approx(100.0) and np.isnan(m["ap"][1])


def test_perfect_word_queries():
    # one-hot images; each word's scores equal its relevance row, so relevant images rank first
    rng = np.random.default_rng(0)
    rel = rng.random((20, 200)) < 0.1
    rel[:, 0] = True
    m = word_query_metrics(np.eye(200, dtype=np.float32), rel.astype(np.float32), rel)
    assert m["map"] == pytest.approx(100.0)
    assert len(m["ap"]) == 20


def test_chance_word_metrics_matches_simulation():
    rng = np.random.default_rng(0)
    rel = np.zeros((3, 50), dtype=bool)
    rel[0, :1] = True  # R=1: E[AP] = H_50/50 ~ 9.0 %, far above 1/50
    rel[1, :10] = True
    rel[2, :25] = True
    ch = chance_word_metrics(rel)
    assert ch["p5"] == pytest.approx(100 * (1 + 10 + 25) / 150)
    h = sum(1 / k for k in range(1, 51))
    assert ch["map"] == pytest.approx(100 * np.mean([h / 50, 9 / 49 + 40 / 49 * h / 50, 24 / 49 + 25 / 49 * h / 50]))
    # Monte-Carlo: random scores
    sims = [word_query_metrics(np.eye(50, dtype=np.float32), rng.random((3, 50)).astype(np.float32), rel)["map"]
            for _ in range(400)]
    assert np.mean(sims) == pytest.approx(ch["map"], abs=1.5)


def test_word_queries_break_count_ties_alphabetically():
    # evaluate.word_queries once took ties in the order of a set, which changes with the process's
    # hash seed: the words at the cutoff (and word mAP) then varied from run to run
    from types import SimpleNamespace

    from evaluate import word_queries

    texts = {"a.jpg": "a dog and a cat on the grass", "b.jpg": "a dog and a cat in the snow",
             "c.jpg": "a bike near the grass", "d.jpg": "a bike in the snow"}
    caps = SimpleNamespace(captions=[SimpleNamespace(image=n, text=t) for n, t in texts.items()])
    data = SimpleNamespace(image_names=list(texts))
    words, relevance = word_queries(data, caps, 10)
    assert words == sorted(words) == ["bike", "cat", "dog", "grass", "snow"]  # every count is 2
    assert relevance.tolist()[0] == [False, False, True, True]
    assert word_queries(data, caps, 2)[0] == ["bike", "cat"]
