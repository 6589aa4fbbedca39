"""Resumable feature caches (crossmodal.features.cache) with a fake compute function."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from crossmodal.captions import list_hash
from crossmodal.features.cache import (
    FEATURES_FILE,
    IDS_FILE,
    MANIFEST_FILE,
    PARTIAL_DIR,
    StaleCacheError,
    build_cache,
    load_cache,
)

DIM = 6
IDS = [f"img_{i:03d}.jpg" for i in range(23)]  # 23 rows: the last chunk is short
IDENTITY = {"kind": "image", "backbone": "fake", "weights": "fake.pth:0123", "preprocess": {"size": 8}, "dim": DIM}


def row_features(rows) -> np.ndarray:
    """A feature row that depends only on the row index (so any order gives the same matrix)."""
    rows = np.asarray(rows, dtype=np.float64)
    return (rows[:, None] * 0.37 + np.arange(DIM)[None, :] * 0.01 - 3.0).astype(np.float32)


class FakeCompute:
    """Records the chunks it is asked for; can fail after a number of chunks, or mark rows failed."""

    def __init__(self, fail_after: int | None = None, failed_rows=()):
        self.calls: list[list[list[int]]] = []
        self.fail_after = fail_after
        self.failed_rows = set(failed_rows)

    def __call__(self, chunks, progress):
        self.calls.append([c.tolist() for c in chunks])
        for k, rows in enumerate(chunks):
            if self.fail_after is not None and k == self.fail_after:
                raise RuntimeError("killed")
            feats = row_features(rows)
            failures = []
            for j, r in enumerate(rows.tolist()):
                if r in self.failed_rows:
                    feats[j] = 0.0
                    failures.append((IDS[r], f"broken {r}"))
            progress(len(rows))
            yield feats, failures

    @property
    def rows_computed(self) -> list[int]:
        return [r for call in self.calls for chunk in call for r in chunk]


def files(directory):
    return {name: (directory / name).read_bytes() for name in (FEATURES_FILE, IDS_FILE, MANIFEST_FILE)}


def test_build_then_reuse(tmp_path):
    d = tmp_path / "cache"
    compute = FakeCompute()
    cache = build_cache(d, IDS, IDENTITY, compute, unit_size=5, chunk_size=5)
    assert len(compute.calls) == 1
    assert [len(c) for c in compute.calls[0]] == [5, 5, 5, 5, 3]
    assert cache.ids == IDS
    assert cache.dim == DIM
    np.testing.assert_array_equal(cache.features, row_features(range(len(IDS))).astype(np.float16))
    assert not (d / PARTIAL_DIR).exists()
    assert (d / IDS_FILE).read_text() == "".join(i + "\n" for i in IDS)
    manifest = json.loads((d / MANIFEST_FILE).read_text())
    for k, v in IDENTITY.items():
        assert manifest[k] == v
    assert manifest["rows"] == len(IDS) and manifest["dtype"] == "float16"
    assert manifest["ids_sha256"] == list_hash(IDS)
    assert manifest["failures"] == []
    assert not [p for p in d.rglob("*.tmp")]

    before = files(d)
    again = FakeCompute()
    cache2 = build_cache(d, IDS, IDENTITY, again, unit_size=5, chunk_size=5)
    assert again.calls == []  # reused: compute never called
    assert files(d) == before
    np.testing.assert_array_equal(cache2.features, cache.features)
    # the chunk size is not part of a finished cache's identity
    third = FakeCompute()
    build_cache(d, IDS, IDENTITY, third, unit_size=7, chunk_size=7)
    assert third.calls == []


def test_extra_fields_are_recorded(tmp_path):
    cache = build_cache(tmp_path / "c", IDS, IDENTITY, FakeCompute(), unit_size=8, chunk_size=8,
                        extra={"images_dir": "/x"})
    assert cache.manifest["images_dir"] == "/x"


@pytest.mark.parametrize("change", [{"backbone": "other"}, {"weights": "other.pth:9"}, {"kind": "caption"},
                                    {"ids": True},
                                    {"preprocess": {"size": 9}}])
def test_mismatched_identity_refused_unless_force(tmp_path, change):
    d = tmp_path / "cache"
    build_cache(d, IDS, IDENTITY, FakeCompute(), unit_size=8, chunk_size=8)
    before = files(d)
    ids = IDS
    identity = dict(IDENTITY)
    if "ids" in change:
        ids = IDS[::-1]
    else:
        identity.update(change)
    compute = FakeCompute()
    with pytest.raises(StaleCacheError) as info:
        build_cache(d, ids, identity, compute, unit_size=8, chunk_size=8)
    assert "--force" in str(info.value) and str(d) in str(info.value)
    assert compute.calls == [] and files(d) == before  # nothing touched

    compute = FakeCompute()
    cache = build_cache(d, ids, identity, compute, unit_size=8, chunk_size=8, force=True)
    assert sorted(compute.rows_computed) == list(range(len(IDS)))
    assert cache.ids == list(ids)
    for k, v in identity.items():
        assert cache.manifest[k] == v


def test_load_cache_refuses_wrong_expectations_with_rerun_hint(tmp_path):
    d = tmp_path / "cache"
    build_cache(d, IDS, IDENTITY, FakeCompute(), unit_size=8, chunk_size=8)
    hint = "python batch_image_feature_extract.py --work-dir w --force"
    ok = load_cache(d, {"backbone": "fake", "dim": DIM, "ids_sha256": list_hash(IDS)}, rerun=hint)
    assert ok.ids == IDS
    for wrong in ({"backbone": "resnet18"}, {"dim": 512}, {"ids_sha256": list_hash(IDS[:-1])},
                  {"ids_sha256": list_hash(IDS[::-1])}, {"rows": len(IDS) + 1}):
        with pytest.raises(StaleCacheError) as info:
            load_cache(d, wrong, rerun=hint)
        msg = str(info.value)
        assert f"rebuild it with: {hint}" in msg
        key = next(iter(wrong))
        assert key in msg
    with pytest.raises(StaleCacheError) as info:
        load_cache(tmp_path / "nothing", {"backbone": "fake"}, rerun=hint)
    assert hint in str(info.value)


def test_load_cache_detects_damaged_ids(tmp_path):
    d = tmp_path / "cache"
    build_cache(d, IDS, IDENTITY, FakeCompute(), unit_size=8, chunk_size=8)
    (d / IDS_FILE).write_text("".join(i + "\n" for i in IDS[::-1]))
    with pytest.raises(StaleCacheError, match="do not match"):
        load_cache(d, rerun="again")
    (d / IDS_FILE).write_text("".join(i + "\n" for i in IDS[:-1]))
    with pytest.raises(StaleCacheError, match="damaged"):
        load_cache(d)


def test_load_cache_refuses_an_old_grid_cache(tmp_path):
    # an older version's --grid cache holds feature-map cells per row: not to be read as one wide vector
    d = tmp_path / "cache"
    build_cache(d, IDS, IDENTITY, FakeCompute(), unit_size=8, chunk_size=8)
    manifest = json.loads((d / MANIFEST_FILE).read_text())
    (d / MANIFEST_FILE).write_text(json.dumps({**manifest, "grid": [1, 2, DIM // 2]}))
    with pytest.raises(StaleCacheError, match="--grid") as info:
        load_cache(d, rerun="again")
    assert "rebuild it with: again" in str(info.value)


def chunk_names(d) -> list[str]:
    return sorted(p.name for p in (d / PARTIAL_DIR).glob("chunk_*"))


def test_interrupted_build_resumes_byte_identical(tmp_path):
    ref = tmp_path / "ref"
    build_cache(ref, IDS, IDENTITY, FakeCompute(failed_rows=[4, 17]), unit_size=5, chunk_size=5)

    d = tmp_path / "resumed"
    first = FakeCompute(fail_after=1, failed_rows=[4, 17])
    with pytest.raises(RuntimeError, match="killed"):
        build_cache(d, IDS, IDENTITY, first, unit_size=5, chunk_size=5)
    assert not (d / MANIFEST_FILE).exists() and not (d / FEATURES_FILE).exists()
    assert chunk_names(d) == ["chunk_0000000_0000001.json", "chunk_0000000_0000001.npy"]
    with pytest.raises(StaleCacheError):
        load_cache(d)  # an unfinished build is not a cache

    second = FakeCompute(failed_rows=[4, 17])
    cache = build_cache(d, IDS, IDENTITY, second, unit_size=5, chunk_size=5)
    assert len(second.calls) == 1
    assert second.calls[0] == [list(range(k, min(k + 5, len(IDS)))) for k in range(5, len(IDS), 5)]
    assert files(d) == files(ref)
    assert not (d / PARTIAL_DIR).exists()
    assert cache.failed_ids == {IDS[4], IDS[17]}


class FakeClock:
    """time.monotonic for crossmodal.resumable, advanced by hand (one 'second' per unit here)."""

    def __init__(self, monkeypatch):
        self.now = 0.0
        monkeypatch.setattr("crossmodal.resumable.time.monotonic", lambda: self.now)


class TickingCompute(FakeCompute):
    """A FakeCompute whose every unit takes one second of a FakeClock."""

    def __init__(self, clock, **kw):
        super().__init__(**kw)
        self.clock = clock

    def __call__(self, units, progress):
        for item in super().__call__(units, progress):
            self.clock.now += 1.0
            yield item


def test_chunks_are_saved_by_time_as_well_as_rows(tmp_path, monkeypatch):
    clock = FakeClock(monkeypatch)
    # 23 rows in units of 2 (12 units), one unit a second, a chunk every 3 s or 100 rows: units
    # 0-2 are saved at 3 s, though far fewer than 100 rows were done; unit 3 is lost with the kill
    d = tmp_path / "timed"
    with pytest.raises(RuntimeError, match="killed"):
        build_cache(d, IDS, IDENTITY, TickingCompute(clock, fail_after=4, failed_rows=[4]), unit_size=2,
                    chunk_size=100, flush_seconds=3)
    assert chunk_names(d) == ["chunk_0000000_0000003.json", "chunk_0000000_0000003.npy"]
    # the rows bound holds too: at most 4 rows (2 units) a chunk
    clock.now += 10
    resumed = TickingCompute(clock, fail_after=5, failed_rows=[4])
    with pytest.raises(RuntimeError, match="killed"):
        build_cache(d, IDS, IDENTITY, resumed, unit_size=2, chunk_size=4, flush_seconds=1000)
    assert resumed.calls[0][0] == [6, 7]  # unit 3 onwards
    assert chunk_names(d)[::2] == ["chunk_0000000_0000003.json", "chunk_0000003_0000005.json",
                                   "chunk_0000005_0000007.json"]
    # each save restarts the clock: one second per unit, every unit its own chunk
    last = TickingCompute(clock, failed_rows=[4])
    cache = build_cache(d, IDS, IDENTITY, last, unit_size=2, chunk_size=100, flush_seconds=0.5)
    assert last.calls[0][0] == [14, 15] and len(last.calls[0]) == 5
    ref = tmp_path / "ref"
    build_cache(ref, IDS, IDENTITY, FakeCompute(failed_rows=[4]), unit_size=2, chunk_size=100)
    assert files(d) == files(ref)  # the same bytes, whatever the chunks
    assert cache.failed_ids == {IDS[4]}


def test_flush_interval_from_the_environment(tmp_path, monkeypatch):
    from crossmodal import resumable

    assert resumable.flush_interval() == resumable.FLUSH_SECONDS
    monkeypatch.setenv(resumable.FLUSH_ENV, "0")
    assert resumable.flush_interval() == 0.0 and resumable.flush_interval(7) == 7.0
    d = tmp_path / "every_unit"
    with pytest.raises(RuntimeError):  # no fake clock: a zero interval saves every unit
        build_cache(d, IDS, IDENTITY, FakeCompute(fail_after=3), unit_size=4, chunk_size=1000)
    assert len(chunk_names(d)) == 6
    monkeypatch.setenv(resumable.FLUSH_ENV, "soon")
    with pytest.raises(ValueError, match=resumable.FLUSH_ENV):
        resumable.flush_interval()


def test_chunk_size_is_no_part_of_the_plan_but_unit_size_is(tmp_path):
    d = tmp_path / "cache"
    with pytest.raises(RuntimeError):
        build_cache(d, IDS, IDENTITY, FakeCompute(fail_after=2), unit_size=5, chunk_size=5)
    assert (d / PARTIAL_DIR / "chunk_0000001_0000002.npy").is_file()
    compute = FakeCompute()
    build_cache(d, IDS, IDENTITY, compute, unit_size=5, chunk_size=15)  # other chunks only: resumed
    assert compute.rows_computed == list(range(10, len(IDS)))
    ref = tmp_path / "ref"
    build_cache(ref, IDS, IDENTITY, FakeCompute(), unit_size=5, chunk_size=5)
    assert files(d) == files(ref)

    d2 = tmp_path / "cache2"
    with pytest.raises(RuntimeError):
        build_cache(d2, IDS, IDENTITY, FakeCompute(fail_after=2), unit_size=5, chunk_size=5)
    compute = FakeCompute()
    build_cache(d2, IDS, IDENTITY, compute, unit_size=4, chunk_size=4)  # other units: start over
    assert len(compute.calls) == 1 and sorted(compute.rows_computed) == list(range(len(IDS)))
    assert [len(c) for c in compute.calls[0]] == [4] * 5 + [3]
    ref = tmp_path / "ref4"
    build_cache(ref, IDS, IDENTITY, FakeCompute(), unit_size=4, chunk_size=4)
    assert files(d2) == files(ref)


def test_changed_order_or_force_discards_partial_build(tmp_path):
    d = tmp_path / "cache"
    with pytest.raises(RuntimeError):
        build_cache(d, IDS, IDENTITY, FakeCompute(fail_after=1), unit_size=5, chunk_size=5)
    compute = FakeCompute()
    order = np.arange(len(IDS))[::-1]
    build_cache(d, IDS, IDENTITY, compute, unit_size=5, chunk_size=5, order=order)
    assert compute.rows_computed == order.tolist()

    d2 = tmp_path / "cache2"
    with pytest.raises(RuntimeError):
        build_cache(d2, IDS, IDENTITY, FakeCompute(fail_after=1), unit_size=5, chunk_size=5)
    compute = FakeCompute()
    build_cache(d2, IDS, IDENTITY, compute, unit_size=5, chunk_size=5, force=True)
    assert compute.rows_computed == list(range(len(IDS)))


def test_order_permutation_stores_rows_in_ids_order(tmp_path):
    order = np.random.default_rng(0).permutation(len(IDS))
    compute = FakeCompute()
    cache = build_cache(tmp_path / "perm", IDS, IDENTITY, compute, unit_size=6, chunk_size=6, order=order)
    assert compute.rows_computed == order.tolist()  # computed in the given order
    assert [len(c) for c in compute.calls[0]] == [6, 6, 6, 5]
    np.testing.assert_array_equal(cache.features, row_features(range(len(IDS))).astype(np.float16))
    assert cache.ids == IDS
    plain = build_cache(tmp_path / "plain", IDS, IDENTITY, FakeCompute(), unit_size=6, chunk_size=6)
    assert (tmp_path / "perm" / FEATURES_FILE).read_bytes() == (tmp_path / "plain" / FEATURES_FILE).read_bytes()
    assert plain.ids == cache.ids


def test_order_must_be_a_permutation(tmp_path):
    with pytest.raises(ValueError, match="permutation"):
        build_cache(tmp_path / "c", IDS, IDENTITY, FakeCompute(), unit_size=5, chunk_size=5,
                    order=np.zeros(len(IDS), int))


def test_wrong_chunk_shape_is_an_error(tmp_path):
    def bad(chunks, progress):
        for rows in chunks:
            yield np.zeros((len(rows), DIM + 1), np.float32), []

    with pytest.raises(RuntimeError, match="shape"):
        build_cache(tmp_path / "c", IDS, IDENTITY, bad, unit_size=5, chunk_size=5)
    assert not (tmp_path / "c" / MANIFEST_FILE).exists()


def test_features_file_mmap_float16(tmp_path):
    d = tmp_path / "cache"
    cache = build_cache(d, IDS, IDENTITY, FakeCompute(), unit_size=5, chunk_size=5)
    assert isinstance(cache.features, np.memmap)
    arr = np.load(d / FEATURES_FILE, mmap_mode="r")
    assert isinstance(arr, np.memmap)
    assert arr.dtype == np.float16 and arr.shape == (len(IDS), DIM)
    assert not arr.flags.writeable
    np.testing.assert_array_equal(np.asarray(arr), np.load(d / FEATURES_FILE))
    np.testing.assert_allclose(arr.astype(np.float32), row_features(range(len(IDS))), atol=1e-2)


def test_failures_recorded_in_manifest(tmp_path):
    failed = [20, 3, 11]
    cache = build_cache(tmp_path / "c", IDS, IDENTITY, FakeCompute(failed_rows=failed), unit_size=5, chunk_size=5)
    manifest = json.loads((tmp_path / "c" / MANIFEST_FILE).read_text())
    assert manifest["failures"] == [{"id": IDS[r], "reason": f"broken {r}"} for r in sorted(failed)]
    assert cache.failed_ids == {IDS[r] for r in failed}
    mask = cache.valid_mask()
    assert mask.dtype == bool and mask.shape == (len(IDS),)
    assert [i for i in range(len(IDS)) if not mask[i]] == sorted(failed)
    assert not np.asarray(cache.features)[sorted(failed)].any()
    assert np.asarray(cache.features)[mask].any(axis=1).all()


def test_row_ids_read_like_the_list_they_hold(tmp_path):
    from crossmodal.captions import list_hash
    from crossmodal.features.rows import RowIds

    names = ["a.jpg", "Ünïcode/ß.jpg", "x/y/z.png", "00000.tar/000000001.jpg", "b.jpg"]
    (tmp_path / "ids.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    ids = RowIds.read(tmp_path / "ids.txt")
    assert len(ids) == 5 and list(ids) == names and ids == names and ids[1] == names[1] and ids[-1] == "b.jpg"
    assert ids[1:4] == names[1:4] and ids.sha256() == list_hash(names) and "x/y/z.png" in ids
    sub = ids.subset(np.array([1, 3]))
    assert list(sub) == [names[1], names[3]] and sub.sha256() == list_hash([names[1], names[3]])
    assert ids.subset(np.arange(5)) is ids and ids != names[:4]
    with pytest.raises(IndexError):
        ids[5]
    # a last line without its newline reads the same; a file renamed over the old one is not mixed in
    (tmp_path / "bare.txt").write_text("\n".join(names), encoding="utf-8")
    bare = RowIds.read(tmp_path / "bare.txt")
    assert list(bare) == names and bare == ids and bare.sha256() == list_hash(names) and bare[2:2] == []
    (tmp_path / "new.txt").write_text("".join(f"new-{n}\n" for n in names), encoding="utf-8")
    os.replace(tmp_path / "new.txt", tmp_path / "ids.txt")
    assert list(ids) == names and ids[4] == "b.jpg"


def test_rows_on_disk_read_like_the_matrix_they_hold(tmp_path):
    from crossmodal.features.rows import RowIds, RowsOnDisk

    (tmp_path / "ids.txt").write_text("r0\nr1\nr2\n")
    matrix = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float16)
    np.save(tmp_path / "m.npy", matrix)
    rows = RowsOnDisk(np.load(tmp_path / "m.npy", mmap_mode="r"))
    assert len(rows) == 50 and rows.shape == (50, 6) and rows.dtype == np.float16
    picks = np.array([[7, 3], [3, 49]])  # out of order, repeated, 2-d
    mask = np.arange(50) % 3 == 0
    for key in (4, -1, slice(None), slice(10, 20), slice(40, 99), slice(30, 10), slice(1, 30, 7),
                np.array([5, 6, 7, 20, 21, 0]), picks, mask, [2, 2], np.array([], int), (slice(3, 9), 2)):
        assert np.array_equal(rows[key], matrix[key]), key
    assert np.array_equal(np.asarray(rows, dtype=np.float32), matrix.astype(np.float32))
    for bad in (50, -51, np.array([0, 50]), np.ones(49, dtype=bool)):
        with pytest.raises(IndexError):
            rows[bad]
    import pickle

    assert np.array_equal(pickle.loads(pickle.dumps(rows))[5:9], matrix[5:9])  # a spawned worker's copy
    assert list(pickle.loads(pickle.dumps(RowIds.read(tmp_path / "ids.txt")))) == [f"r{i}" for i in range(3)]
    os.replace(tmp_path / "m.npy", tmp_path / "old.npy")
    np.save(tmp_path / "m.npy", np.zeros((50, 6), np.float16))  # replaced: the rows read stay the old file's
    assert np.array_equal(rows[10:12], matrix[10:12])
    with open(tmp_path / "old.npy", "r+b") as f:  # damaged: cut short
        f.truncate(128 + 20 * 12)
    with pytest.raises(ValueError, match="shorter than its header says"):
        rows[30]
