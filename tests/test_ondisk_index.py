"""The on-disk IVF-PQ index (crossmodal.ondisk_index): trained once, filled shard by shard (in this
process and as Ray tasks on a local 2-CPU cluster), merged part by part, served memory-mapped; it
finds what one index built from all the rows finds, and grows without touching its earlier parts."""
from __future__ import annotations

import shutil

import faiss
import numpy as np
import pytest

from crossmodal import ondisk_index as O


@pytest.fixture(scope="module")
def rows():
    g = np.random.default_rng(0)
    centers = g.normal(size=(100, 32))
    x = centers[g.integers(0, 100, 12000)] + 0.5 * g.normal(size=(12000, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q = x[g.choice(len(x), 200, replace=False)] + 0.3 * g.normal(size=(200, 32))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    exact = faiss.IndexFlatIP(32)
    exact.add(x)
    return x, q, exact.search(q, 10)[1]


def recall(found, truth):
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth)]))


def test_sharded_parts_find_what_one_index_finds(rows, tmp_path):
    x, q, truth = rows
    O.train_index(x[:4000], tmp_path / "single", nlist=32, pq_bytes=8)
    single = faiss.read_index(str(tmp_path / "single" / O.TRAINED))
    single.add(x)
    single.nprobe = 8
    single_ids = single.search(q, 10)[1]

    folder = tmp_path / "idx"
    O.train_index(x[:4000], folder, nlist=32, pq_bytes=8)
    bounds = np.linspace(0, len(x), 5).astype(int)
    shards = [(x[a:b], int(a)) for a, b in zip(bounds[:-1], bounds[1:])]
    O.add_part(folder, O.fill_shards(folder, shards[:2], ["s0.index", "s1.index"]))
    first = (folder / "part-1.ivfdata").read_bytes()
    # two more shards, from .npy files, as a second part: the first is not rewritten
    for i in (2, 3):
        np.save(tmp_path / f"s{i}.npy", shards[i][0])
    info = O.add_part(folder, O.fill_shards(folder, [(tmp_path / f"s{i}.npy", shards[i][1]) for i in (2, 3)],
                                            ["s2.index", "s3.index"]))
    assert (folder / "part-1.ivfdata").read_bytes() == first
    assert info.rows == len(x) and [p["rows"] for p in info.parts] == [bounds[2], len(x) - bounds[2]]

    moved = tmp_path / "moved"  # the parts find their inverted lists beside them
    shutil.move(folder, moved)
    index = O.open_index(moved, nprobe=8)
    ids = index.search(q, 10)[1]
    assert abs(recall(ids, truth) - recall(single_ids, truth)) <= 0.01
    assert (ids == single_ids).mean() > 0.99  # the same codes, the same lists: the same hits
    assert index.info.kind == "IVF32,PQ8 on disk (2 part(s))"
    # re-ranked from the rows themselves: the PQ order is refined, the candidates kept
    reranked_scores, reranked = index.search(q, 10, x, candidates=50)
    assert recall(reranked, truth) > recall(ids, truth) + 0.2
    assert np.allclose(reranked_scores, np.take_along_axis(q @ x.T, reranked, axis=1), atol=1e-5)


def test_shards_filled_as_ray_tasks_equal_in_process_ones(rows, tmp_path):
    ray = pytest.importorskip("ray")
    x, q, _ = rows
    O.train_index(x[:4000], tmp_path / "idx", nlist=32, pq_bytes=8)
    shutil.copytree(tmp_path / "idx", tmp_path / "ray")
    shards = [(x[:6000], 0), (x[6000:], 6000)]
    O.add_part(tmp_path / "idx", O.fill_shards(tmp_path / "idx", shards, ["a.index", "b.index"]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        O.add_part(tmp_path / "ray", O.fill_shards(tmp_path / "ray", shards, ["a.index", "b.index"],
                                                   ray_address="local"))
    finally:
        ray.shutdown()
    a, b = O.open_index(tmp_path / "idx"), O.open_index(tmp_path / "ray")
    assert np.array_equal(a.search(q, 10)[1], b.search(q, 10)[1])


def test_a_failed_merge_leaves_the_index_as_it_was(rows, tmp_path):
    x, q, _ = rows
    folder = tmp_path / "idx"
    O.train_index(x[:4000], folder, nlist=32, pq_bytes=8)
    O.add_part(folder, O.fill_shards(folder, [(x[:5000], 0)], ["a.index"]))
    before = O.open_index(folder).search(q, 5)
    with pytest.raises(RuntimeError):
        O.add_part(folder, [folder / "missing.index"])
    assert O.read_info(folder).rows == 5000
    assert np.array_equal(O.open_index(folder).search(q, 5)[1], before[1])
    (folder / O.MANIFEST).write_text("{}")
    with pytest.raises(ValueError, match="index.json: not an on-disk index manifest"):
        O.open_index(folder)
