"""The on-disk IVF-PQ index (crossmodal.ondisk_index): trained once, filled shard by shard (in this
process and as Ray tasks on a local 2-CPU cluster), merged part by part, served memory-mapped; it
finds what one index built from all the rows finds, and grows without touching its earlier parts."""
from __future__ import annotations

import shutil
from pathlib import Path

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


def test_build_index_stage_serves_a_collection_and_adds_new_photos_as_a_part(tmp_path, caplog):
    """build_index.py over a dataset's features (random vectors under the shipped model's backbone), the
    engine serving it (same hits as exact search, its kind and measured recall said), then grown."""
    import build_index
    from crossmodal.backbones import OnnxTextEncoder
    from crossmodal.collection import DatasetCollection
    from crossmodal.engine import EngineError, SearchEngine
    from crossmodal.features.cache import write_cache
    from crossmodal.search import search

    from model import load_checkpoint

    shipped = Path(__file__).resolve().parents[1] / "models" / "pretrained" / "model.pt"
    model, state = load_checkpoint(shipped)
    image = state["backbones"]["image"]
    identity = {"kind": "image", "backbone": image["backbone"], "weights": image["weights"],
                "preprocess": image["preprocess"], "dim": image["dim"]}
    rng = np.random.default_rng(0)
    features = np.abs(rng.standard_normal((2400, image["dim"]))).astype(np.float16)  # post-ReLU-like
    names = [f"{i:05d}.jpg" for i in range(2400)]
    feats, index, photos = tmp_path / "image_embeddings", tmp_path / "index", tmp_path / "photos"
    photos.mkdir()
    for name in names:  # hits are files that exist
        (photos / name).touch()
    write_cache(feats, names[:2000], features[:2000], identity)
    args = ["--image-features", str(feats), "--images", str(photos), "--checkpoint", str(shipped),
            "--index", str(index), "--nlist", "16"]
    assert build_index.main(args) == 0
    served = O.read_served(index)
    assert served["rows"] == 2000 and served["recall_at_10"] >= 0.9

    from crossmodal.engine import load_text_backbone

    text = load_text_backbone(state["backbones"]["text"], None, None, "cpu", model.text_top)

    def served_engine() -> SearchEngine:
        return SearchEngine(DatasetCollection.open(feats, photos), model, state, shipped, index_folder=index,
                            text_backbone=text)

    exact = SearchEngine(DatasetCollection.open(feats, photos), model, state, shipped, text_backbone=text)
    ondisk = served_engine()
    assert "on disk" in ondisk.details()["index"] and f"{served['recall_at_10']:.3f}" in ondisk.details()["index"]
    # the index keeps the text encoder exported for ONNX Runtime, and queries are encoded by it
    assert isinstance(ondisk.query_text_encoder, OnnxTextEncoder) and exact.query_text_encoder is text
    overlap = []
    for q in ("a dog on the grass", "two children at the beach", "a red car", "mountains with snow", "dog"):
        assert np.abs(ondisk.embed_text(q) - exact.embed_text(q)).max() < 1e-5
        a = [h.name for h in search(exact, q, k=10).hits]
        b = [h.name for h in search(ondisk, q, k=10).hits]
        overlap.append(len(set(a) & set(b)) / 10)
        assert a[0] == b[0]  # the best hit, and its scores, as exact search gives them
    assert np.mean(overlap) >= 0.9

    trained = (index / O.TRAINED).stat().st_mtime_ns
    write_cache(feats, names, features, identity)  # 400 new photos after the first 2000
    ondisk = served_engine()  # served as it is, saying what is missing ...
    assert ondisk.current().index.size == 2000 and "400 of 2400 photos are not in the index" in caplog.text
    assert build_index.main(args) == 0  # ... until they are added: a second part, nothing retrained
    info = O.read_info(index)
    assert [p["rows"] for p in info.parts] == [2000, 400] and (index / O.TRAINED).stat().st_mtime_ns == trained
    ondisk = served_engine()
    assert len(ondisk.current().index.ondisk.info.parts) == 2 and len(ondisk.collection) == 2400

    write_cache(feats, names, features[::-1].copy(), identity)  # other photos under the same names
    with pytest.raises(EngineError, match="build_index.py"):
        served_engine()
    assert build_index.main(args) == 2  # refused: --force rebuilds
    assert build_index.main(args + ["--force"]) == 0 and len(O.read_info(index).parts) == 1
