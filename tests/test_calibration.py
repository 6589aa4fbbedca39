"""Match confidence: Platt scaling fitted on top hits, its error measure, and its dev-split fit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from crossmodal import calibration as cal


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_fit_recovers_a_known_curve_and_is_calibrated_on_fresh_draws():
    rng = np.random.default_rng(0)
    scores = rng.uniform(-0.2, 0.6, 40_000)
    truth = sigmoid(12.0 * scores - 3.0)
    labels = rng.random(len(scores)) < truth
    curve = cal.fit_platt(scores, labels)
    assert curve.slope == pytest.approx(12.0, rel=0.1)
    assert curve.intercept == pytest.approx(-3.0, rel=0.1)
    fresh = rng.random(len(scores)) < truth
    assert cal.expected_calibration_error(curve.confidence(scores), fresh) < 0.02
    # an overconfident curve is caught by the error measure
    assert cal.expected_calibration_error(sigmoid(24.0 * scores - 3.0), fresh) > 0.05


def test_expected_calibration_error_by_hand():
    probs = np.array([0.05, 0.05, 0.95, 0.95])
    labels = np.array([0, 0, 1, 0])
    # bin 0: predicted 0.05, observed 0 -> 0.05; bin 9: predicted 0.95, observed 0.5 -> 0.45
    assert cal.expected_calibration_error(probs, labels) == pytest.approx((2 * 0.05 + 2 * 0.45) / 4)


def test_threshold_quality_by_hand():
    probs = np.array([0.9, 0.6, 0.4, 0.2, 0.7])
    labels = np.array([1, 0, 1, 0, 1], dtype=bool)
    q = cal.threshold_quality(probs, labels, 0.5)
    assert q["precision"] == pytest.approx(2 / 3)
    assert q["recall"] == pytest.approx(2 / 3)
    assert q["called"] == pytest.approx(3 / 5)


def test_fit_refuses_one_class():
    with pytest.raises(ValueError, match="both matches and misses"):
        cal.fit_platt(np.arange(5.0), np.zeros(5, dtype=bool))


def test_curve_round_trips_through_a_weights_only_checkpoint(tmp_path):
    curve = cal.Calibration(13.5, -2.25)
    torch.save({"calibration": {"sentence": curve.to_dict(), "top_k": 10}}, tmp_path / "c.pt")
    stored = torch.load(tmp_path / "c.pt", weights_only=True)["calibration"]
    assert cal.curves_of(stored) == {"sentence": curve}
    assert cal.curves_of(None) == {}
    with pytest.raises(ValueError, match="unknown calibration method"):
        cal.Calibration.from_dict({"method": "isotonic"})


def test_top_hits_rank_as_search_does_and_label_the_hits():
    images = torch.eye(4)
    queries = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.2, 1.0]])
    relevant = np.array([[False, True, False, False], [False, False, False, True]])
    scores, labels = cal.top_hits(queries, images, relevant, k=2)
    np.testing.assert_allclose(scores, [1.0, 0.5, 1.0, 0.2])
    assert labels.tolist() == [False, True, True, False]
    # a bias reorders the hits, and the scores are the normalised ones
    scores, labels = cal.top_hits(queries, images, relevant, image_bias=np.array([0.8, 0, 0, 0]), k=2)
    np.testing.assert_allclose(scores, [0.5, 0.2, 1.0, 0.2])
    assert labels.tolist() == [True, False, True, False]


def test_halves_are_disjoint_and_cover_the_split():
    fit, held = cal.split_images(101)
    assert len(fit) == 50 or len(fit) == 51
    assert not set(fit) & set(held) and len(fit) + len(held) == 101


def test_fit_and_report_measures_on_the_held_out_hits():
    rng = np.random.default_rng(1)

    def draw(n):
        s = rng.uniform(0, 0.5, n)
        return s, rng.random(n) < sigmoid(20 * s - 6)

    report = cal.fit_and_report({"sentence": (draw(20_000), draw(20_000))})
    held = report["sentence"]["held_out"]
    assert held["ece"] < 0.02 and held["hits"] == 20_000
    assert report["threshold"] == cal.CONFIDENT and report["top_k"] == cal.CALIBRATION_TOP_K
    assert cal.curves_of(report)["sentence"].slope == pytest.approx(20, rel=0.15)


def test_a_caption_matches_its_photo_and_photos_with_a_caption_close_in_meaning():
    from types import SimpleNamespace

    t = cal.LABEL_SIMILARITY["sentence"]
    angle = np.arccos(t)

    def unit(a: float) -> list[float]:  # a vector at angle a from (1, 0, 0)
        return [np.cos(a), np.sin(a), 0.0]

    # captions 0-1 of photo a, 2 of b, 3 of c, 4 of d; caption 0 and 2 just closer than the threshold,
    # caption 3 just farther, caption 4 orthogonal to all
    feats = np.array([unit(0), unit(-0.3), unit(angle - 0.01), unit(angle + 0.01), [0, 0, 1]], dtype=np.float32)
    data = SimpleNamespace(image_names=["a.jpg", "b.jpg", "c.jpg", "d.jpg"], caption_image=np.array([0, 0, 1, 2, 3]),
                           caption_features=torch.tensor(feats, dtype=torch.float16))
    rel = cal.sentence_relevance(data)
    assert rel.shape == (5, 4)
    assert rel[0].tolist() == [True, True, False, False]  # its own photo, and b (close enough), not c
    assert rel[4].tolist() == [False, False, False, True]  # like nothing else: its own photo only
    assert rel[3].tolist() == [False, True, True, False]  # its own, and b's caption beside it; a's is too far
    # a short query: a photo whose captions name it, or one with a close caption
    words = np.array([unit(0)], dtype=np.float32)
    short = cal.short_relevance(words, np.array([[False, False, False, True]]), data)
    assert short.tolist() == [[True, cal.LABEL_SIMILARITY["short"] <= np.cos(angle - 0.01),
                               cal.LABEL_SIMILARITY["short"] <= np.cos(angle + 0.01), True]]
    sims = cal.best_caption_similarity(feats[:1], feats, data.caption_image, 4)
    assert sims[0].tolist() == pytest.approx([1.0, np.cos(angle - 0.01), np.cos(angle + 0.01), 0.0], abs=1e-5)


def test_query_kinds_and_the_phrases_dev_captions_lead_with():
    from crossmodal.keywords import leading_phrase
    from crossmodal.querybank import query_kind

    assert [query_kind(q) for q in ("dog", "black dog", "a man climbing a rock",
                                    "a man in a red shirt climbs a rock face near the sea")] == [
        "short", "short", "phrase", "sentence"]
    assert leading_phrase("A man climbing a rock face .") == "a man climbing a rock"
    assert leading_phrase("A girl in a pink dress is jumping on the bed .") == "a girl in a pink dress"
    assert leading_phrase("A dog runs .") is None  # one noun: no phrase of its own
    assert leading_phrase("The black and white dog runs through the tall green grass .") is None  # too long


def test_a_page_likely_holds_a_match_when_its_hits_together_likely_do():
    from crossmodal.search import likely_match

    assert likely_match(np.array([0.3, 0.3, 0.3]))  # none is likely alone; one of them is (0.66)
    assert likely_match(np.array([0.55]))
    assert not likely_match(np.array([0.1, 0.05, 0.05, 0.02]))  # 0.19: "No good match"
    assert not likely_match(np.array([]))
