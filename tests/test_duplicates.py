"""Near-duplicate groups (crossmodal/duplicates.py) on constructed vectors, and index_folder.py
--duplicates end to end on a folder with exact copies (random backbone weights, so only exact copies
are certain to be near-duplicates; in the photo index they share one vector row)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from helpers import random_photo, save_random_models
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine import WORDS, jpeg

from crossmodal.duplicates import duplicate_groups, find_duplicate_groups, similar_pairs
from crossmodal.photos import PhotoCollection


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def brute_force_groups(vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """Connected components of the graph 'cosine similarity > threshold', by repeated merging."""
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    ok = norms > 0
    sims = (x @ x.T) / np.outer(np.where(ok, norms, 1), np.where(ok, norms, 1))
    label = list(range(len(x)))
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            if ok[i] and ok[j] and sims[i, j] > threshold:
                old, new = label[j], label[i]
                label = [new if lab == old else lab for lab in label]
    groups: dict[int, list[int]] = {}
    for i, lab in enumerate(label):
        groups.setdefault(lab, []).append(i)
    return sorted(g for g in groups.values() if len(g) >= 2)


def test_groups_of_constructed_vectors():
    rng = np.random.default_rng(0)
    base = unit(rng.normal(size=(6, 64)))
    rows = [base[0], base[1], 3.0 * base[0], base[2], unit(base[1] + 0.02 * rng.normal(size=64)), np.zeros(64),
            np.zeros(64), base[3]]
    # rows 0 and 2: the same direction (any length); 1 and 4: a small perturbation; 5 and 6: unreadable
    assert find_duplicate_groups(np.stack(rows), 0.95) == [[0, 2], [1, 4]]
    assert find_duplicate_groups(np.stack(rows).astype(np.float16), 0.95) == [[0, 2], [1, 4]]
    assert find_duplicate_groups(base, 0.95) == []
    assert find_duplicate_groups(base[:1], 0.5) == []
    assert find_duplicate_groups(np.zeros((0, 8)), 0.5) == []


def test_a_chain_of_links_is_one_group():
    angle = np.radians([0, 20, 40, 90])  # neighbours 20 degrees apart: cos 0.94; ends 40 apart: cos 0.77
    x = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    pairs, sims = similar_pairs(x, 0.9)
    assert pairs.tolist() == [[0, 1], [1, 2]]
    assert np.allclose(sims, np.cos(np.radians(20)), atol=1e-6)
    assert find_duplicate_groups(x, 0.9) == [[0, 1, 2]]
    assert find_duplicate_groups(x, 0.95) == []
    assert find_duplicate_groups(x, 0.7) == [[0, 1, 2]]
    assert find_duplicate_groups(x, -0.5) == [[0, 1, 2, 3]]


def test_threshold_is_checked():
    with pytest.raises(ValueError, match="threshold"):
        find_duplicate_groups(np.eye(3), 1.0)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 40), st.floats(0.3, 0.98))
def test_groups_match_brute_force(seed, n, threshold):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 3), 8))
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(scale=rng.uniform(0.05, 1.0), size=(n, 8))
    x[rng.random(n) < 0.1] = 0.0  # some unreadable photos
    expected = brute_force_groups(x, threshold)
    sims = unit(x[np.linalg.norm(x, axis=1) > 0]) @ unit(x[np.linalg.norm(x, axis=1) > 0]).T
    if np.any(np.abs(sims - threshold) < 1e-4):
        return  # float32 and float64 may disagree this close to the threshold
    assert find_duplicate_groups(x, threshold) == expected


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    m = save_random_models(tmp_path_factory.mktemp("duplicates"), WORDS)
    return m["checkpoint"], m["resnet"]


def test_index_folder_lists_exact_copies(heads, tmp_path, capsys):
    import index_folder

    checkpoint, resnet_file = heads
    folder = tmp_path / "pics"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (folder / name).write_bytes(jpeg(random_photo(rng)))
    shutil.copyfile(folder / "a.jpg", folder / "sub" / "a copy.jpg")
    shutil.copyfile(folder / "c.jpg", folder / "sub" / "c2.jpg")
    shutil.copyfile(folder / "c.jpg", folder / "c3.jpg")
    for name in ("broken.jpg", "broken copy.jpg"):  # undecodable: no vector, never duplicates
        (folder / name).write_bytes(b"not a jpeg")
    out = tmp_path / "index"
    argv = [str(folder), "--checkpoint", str(checkpoint), "--out", str(out), "--image-weights", str(resnet_file),
            "--workers", "0", "--device", "cpu", "--duplicates", "--duplicate-threshold", "0.99999"]
    assert index_folder.main(argv) == 0
    printed = capsys.readouterr().out
    assert "embedded 6 new/changed" in printed and "2 file(s) cannot be searched" in printed
    report = printed[printed.index("group(s)") - 2:]
    assert report.splitlines() == [
        "2 group(s) of near-duplicate photos, 5 photos (cosine similarity of backbone features above 0.99999)",
        "group 1:",
        "         a.jpg",
        "  1.000  sub/a copy.jpg  ~ a.jpg",
        "group 2:",
        "         c.jpg",
        "  1.000  c3.jpg  ~ c.jpg",
        "  1.000  sub/c2.jpg  ~ c.jpg",
    ]
    collection = PhotoCollection.open(out, [folder])
    groups = duplicate_groups(collection, 0.99999)
    collection.close()
    assert [g.names for g in groups] == [["a.jpg", "sub/a copy.jpg"], ["c.jpg", "c3.jpg", "sub/c2.jpg"]]
    assert all(sim > 0.99999 for g in groups for _, sim in g.closest)
    # on the existing index nothing is embedded (or decoded) again, and the groups are the same
    assert index_folder.main(argv) == 0
    again = capsys.readouterr().out
    assert "embedded 0 new/changed" in again and again.endswith(report)
    # the distinct photos are further apart than that with these weights, so a lower threshold is needed to join them
    assert index_folder.main(argv[:-1] + ["1.5"]) == 2
