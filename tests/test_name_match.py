"""Rank fusion (crossmodal/fusion.py) and file/folder name words fused with the semantic ranking
(crossmodal/name_match.py)."""
from __future__ import annotations

import pytest
from conftest import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from crossmodal.fusion import rrf_fuse
from crossmodal.name_match import NameIndex, fuse_names, path_words, query_words

# --------------------------------------------------------------------------------------------------
# reciprocal rank fusion


def test_rrf_by_hand():
    # a: 1/61 + 1/63; b: 1/62; c: 1/63 + 1/61 (= a, but after it: a appears first); d: 1/62
    assert rrf_fuse([["a", "b", "c"], ["c", "d", "a"]]) == ["a", "c", "b", "d"]
    # weights: the second ranking counts three times as much
    assert rrf_fuse([[1, 2], [2, 1]], weights=[1, 3]) == [2, 1]
    assert rrf_fuse([[1, 2, 3], [3]], k=1) == [3, 1, 2]  # 1/2 + 1/4 > 1/2


def test_rrf_tied_groups_share_the_mean_rank():
    # k=1. Item 12 gets 1/4 from the first ranking; 10 gets 1/2.
    assert rrf_fuse([[10, 11, 12], [12]], k=1)[0] == 12  # + 1/2
    assert rrf_fuse([[10, 11, 12], [[12, 13, 14]]], k=1)[0] == 12  # + 1/3 (the mean of ranks 1-3 is 2)
    assert rrf_fuse([[10, 11, 12], [[12, 13, 14, 15, 16, 17, 18]]], k=1)[0] == 10  # + 1/5 (mean rank 4)
    assert rrf_fuse([[10, 11], [[12, 13], 14]], k=1) == [10, 12, 13, 11, 14]  # 1/2, 1/2.5 twice, 1/3, 1/4
    assert rrf_fuse([[[5, 6, 7]]]) == [5, 6, 7]  # equal scores keep their order


def test_rrf_refuses_bad_arguments():
    with pytest.raises(ValueError, match="2 weights for 1"):
        rrf_fuse([[1]], weights=[1, 2])
    with pytest.raises(ValueError, match="positive"):
        rrf_fuse([[1]], k=0)


@settings(max_examples=200, deadline=None)
@given(st.permutations(list(range(30))), st.lists(st.integers(0, 40), unique=True, max_size=10),
       st.floats(0.01, 10))
def test_rrf_properties(semantic, other, weight):
    assert rrf_fuse([semantic, []], weights=[1, weight]) == semantic  # an empty ranking changes nothing
    fused = rrf_fuse([semantic, other], weights=[1, weight])
    assert sorted(fused) == sorted(set(semantic) | set(other))
    # an item the second ranking leaves out keeps its order relative to the other left-out items
    left_out = [i for i in fused if i not in other]
    assert left_out == [i for i in semantic if i not in other]


# --------------------------------------------------------------------------------------------------
# name words

@pytest.mark.parametrize("path, words", [
    ("Dogs/rex_on_the_beach.jpg", ["dog", "rex", "beach"]),
    ("Holidays 2019/dogOnBeach.PNG", ["holiday", "dog", "beach"]),
    ("trip\\day-2\\Sunset.over.sea.jpeg", ["trip", "day", "sunset", "sea"]),
    ("children/puppies.jpg", ["child", "puppy"]),
    ("beach2019.jpg", ["beach"]),
    ("HTMLParser.png", ["html", "parser"]),
    ("Köln/Straße.jpg", ["köln", "straße"]),
    # ids, hashes and camera names say nothing
    ("1000268201_693b08cb0e.jpg", []),
    ("1000092795_abc123def.jpg", []),
    ("dfbffddccd.jpg", []),
    ("3f2a9c1e-7b4d-41d4-a716-446655440000.jpg", []),
    ("IMG_20190612_153012.jpg", []),
    ("DSC01234.JPG", []),
    ("DSCN0042.jpg", []),
    ("PXL_20230101_123456789.MP.jpg", []),
    ("GOPR0001.JPG", []),
    ("MVIMG_20190101_120000.jpg", []),
    ("FB_IMG_1547896541234.jpg", []),
    ("trip/IMG-20190101-WA0001.jpeg", ["trip"]),
    ("Photos/image copy 2.jpg", []),
    ("P1010001.JPG", []),
])
def test_path_words(path, words):
    assert path_words(path) == words


def test_query_words_drop_stop_words_and_singularise():
    assert query_words('A "black dog" runs on the beach with two children, photo') == [
        "black", "dog", "run", "beach", "two", "child"]
    assert query_words("the of and") == []


@pytest.mark.skipif(not (SHARED_DATA / "flickr8k" / "flickr8k.token").is_file(), reason="no Flickr8k captions")
def test_flickr_ids_have_no_name_words():
    names = {line.split("#", 1)[0] for line in (SHARED_DATA / "flickr8k" / "flickr8k.token").open()}
    assert len(names) >= 7000
    assert {n: path_words(n) for n in names if path_words(n)} == {}


ID_NAMES = st.one_of(
    st.builds(lambda a, b: f"{a}_{b:010x}.jpg", st.integers(10**8, 10**10), st.integers(16**9, 16**10 - 1)),
    st.builds(lambda p, n: f"{p}{n:04d}.JPG", st.sampled_from(["IMG_", "DSC", "DSCN", "GOPR", "PXL_2023"]),
              st.integers(0, 9999)),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(ID_NAMES, min_size=1, max_size=30, unique=True), st.randoms(use_true_random=False),
       st.sampled_from(["a dog on the beach", "IMG", "a photo of a face", "dsc beach bed cafe"]))
def test_meaningless_names_leave_the_semantic_ranking_alone(names, rnd, query):
    semantic = list(range(len(names)))
    rnd.shuffle(semantic)
    index = NameIndex(names)
    assert index.vocabulary == 0
    assert fuse_names(semantic, index, query, weight=100.0) == semantic


def test_names_lift_matching_photos():
    paths = ["IMG_0001.jpg", "dogs/IMG_0002.jpg", "beach/dog_rex.jpg", "cats/x.jpg", "123_abcdef12.jpg"]
    index = NameIndex(paths)
    assert index.matches("a dog on the beach") == {1: 1, 2: 2}
    assert index.ranking("a dog on the beach") == [[2], [1]]
    assert index.ranking("dogs or cats") == [[1, 2, 3]]  # one word each: tied
    assert index.ranking("a horse") == []
    semantic = [0, 4, 3, 1, 2]
    assert fuse_names(semantic, index, "a horse", weight=1.0) == semantic
    assert fuse_names(semantic, index, "a dog on the beach", weight=1.0) == [2, 1, 0, 4, 3]
    # a small weight only breaks near-ties: 1/61 + w/61 must beat 1/60 + ... for the first place
    assert fuse_names(semantic, index, "a dog on the beach", weight=0.01)[:3] == [0, 4, 3]
