"""The photo index of your own folders (crossmodal.photos): incremental indexing, formats, EXIF,
kill -9 safety, concurrent readers, search restricted to folders, and the scripts over it.

Backbones are a random ResNet18 and a tiny BERT (tests/helpers.py); vectors are compared with an
independent decode + forward pass, or between runs, so a misaligned row or a skipped step fails.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_photo, save_random_models, save_random_resnet18
from PIL import Image
from test_engine import EMBED, WORDS

from crossmodal import images, photos, projection
from crossmodal.backbones import create_image_backbone
from crossmodal.engine import EngineError, SearchEngine, load_image_backbone
from crossmodal.photos import PhotoCollection, indexer, store
from crossmodal.photos.store import PhotoStore
from crossmodal.search import search as search_query

from model import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RECORD_FIELDS = ("path", "size", "mtime_ns", "hash", "status", "reason", "width", "height", "taken_at",
                 "taken_from", "camera", "ocr_text")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    m = save_random_models(tmp_path_factory.mktemp("photo_models"), WORDS)
    model, state = load_checkpoint(m["checkpoint"])
    return dict(resnet=m["resnet"], bert=m["bert"], checkpoint=m["checkpoint"], model=model, state=state,
                backbone=load_image_backbone(state["backbones"]["image"], m["resnet"]))


def photo_folder(tmp_path: Path, n: int, seed: int, name: str = "{i}.png") -> tuple[Path, Path, np.random.Generator]:
    """``tmp_path/p`` holding ``n`` random photos named ``name.format(i=...)``, the index folder beside
    it, and the generator that drew them (for more photos)."""
    folder = tmp_path / "p"
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        random_photo(rng).save(folder / name.format(i=i))
    return folder, tmp_path / "index", rng


def open_engine(models, index, roots=None, state=None) -> SearchEngine:
    """A SearchEngine over the photo index (under ``roots``, else every indexed folder)."""
    return SearchEngine(PhotoCollection.open(index, roots), models["model"], state or models["state"],
                        models["checkpoint"], device="cpu", text_weights=models["bert"], image_weights=models["resnet"])


def run(models, index, roots, **kw):
    kw = {"device": "cpu", "workers": 0, "batch_size": 4, "progress": False, **kw}
    return photos.index_photos(index, [roots] if isinstance(roots, Path) else roots, models["backbone"], **kw)


class CountDecodes:
    """Paths whose pixels were decoded (workers=0 runs them in this process)."""

    def __init__(self, monkeypatch):
        self.paths: list[str] = []
        original = images.upright_rgb

        def upright_rgb(im, size):
            self.paths.append(Path(im.filename).name)
            return original(im, size)

        monkeypatch.setattr(images, "upright_rgb", upright_rgb)

    def take(self) -> list[str]:
        out, self.paths = sorted(self.paths), []
        return out


def vectors_by_path(index: Path, roots=None) -> dict[str, np.ndarray]:
    with PhotoStore(index) as s:
        snap = s.snapshot(roots)
        return dict(zip(snap.paths, np.asarray(snap.vectors, dtype=np.float32)))


def records(index: Path) -> list[tuple]:
    with PhotoStore(index) as s:
        return [tuple(getattr(r, f) for f in RECORD_FIELDS) for r in s.records()]


def reference_vector(models, path: Path) -> np.ndarray:
    """The backbone vector of one photo computed here: open, turn upright, transform, forward."""
    bb = models["backbone"]
    with images.open_image(path, images.INDEX_BUDGET) as im:
        x = bb.pil_transform()(images.upright_rgb(im, bb.image_size))
    with torch.inference_mode():
        return bb.model(x[None]).float().numpy()[0]


def touch_later(path: Path) -> None:
    """Make sure a rewritten file's mtime differs from what was recorded (coarse file system clocks)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


# --------------------------------------------------------------------------------------------------
# incremental indexing

def test_add_change_move_copy_delete(models, tmp_path, monkeypatch):
    folder, index = tmp_path / "Photos", tmp_path / "index"
    (folder / "trip").mkdir(parents=True)
    rng = np.random.default_rng(1)
    random_photo(rng).save(folder / "a.jpg", quality=90)
    random_photo(rng).save(folder / "trip" / "b.png")
    random_photo(rng).save(folder / "c.webp", lossless=True)
    decodes = CountDecodes(monkeypatch)

    r1 = run(models, index, folder)
    assert (r1.embedded, r1.kept, r1.removed, r1.reused, r1.problems) == (3, 0, 0, 0, [])
    assert decodes.take() == ["a.jpg", "b.png", "c.webp"]
    first = vectors_by_path(index)
    assert sorted(first) == [str(folder / "a.jpg"), str(folder / "c.webp"), str(folder / "trip" / "b.png")]
    np.testing.assert_allclose(first[str(folder / "a.jpg")], reference_vector(models, folder / "a.jpg"),
                               rtol=1e-2, atol=1e-2)  # stored as float16
    decodes.take()  # (the reference's own decode)
    with PhotoStore(index) as s:
        generation = s.generation()

    r2 = run(models, index, folder)  # nothing changed: nothing decoded, nothing committed
    assert (r2.embedded, r2.kept, r2.removed, r2.reused) == (0, 3, 0, 0) and decodes.take() == []
    with PhotoStore(index) as s:
        assert s.generation() == generation

    with sqlite3.connect(index / store.DB_FILE) as db:  # as an OCR step would
        db.execute("UPDATE photos SET ocr_text = 'text'")
    random_photo(np.random.default_rng(50)).save(folder / "c.webp", lossless=True)  # changed content
    touch_later(folder / "c.webp")
    touch_later(folder / "a.jpg")  # same content, newer mtime: hashed again, not decoded
    r3 = run(models, index, folder)
    assert (r3.embedded, r3.reused, r3.kept) == (1, 1, 1) and decodes.take() == ["c.webp"]
    with PhotoStore(index) as s:
        assert {Path(r.path).name: r.ocr_text for r in s.records()} == {"a.jpg": "text", "b.png": "text",
                                                                         "c.webp": None}
    third = vectors_by_path(index)
    assert not np.allclose(third[str(folder / "c.webp")], first[str(folder / "c.webp")], atol=1e-2)
    np.testing.assert_array_equal(third[str(folder / "a.jpg")], first[str(folder / "a.jpg")])

    (folder / "2019" / "summer").mkdir(parents=True)
    (folder / "a.jpg").rename(folder / "2019" / "summer" / "renamed.jpg")  # moved: its vector is kept
    shutil.copy(folder / "trip" / "b.png", folder / "copy of b.png")  # same content twice
    r4 = run(models, index, folder)
    assert (r4.embedded, r4.reused, r4.removed, r4.kept) == (0, 2, 1, 2) and decodes.take() == []
    fourth = vectors_by_path(index)
    assert str(folder / "a.jpg") not in fourth
    np.testing.assert_array_equal(fourth[str(folder / "2019" / "summer" / "renamed.jpg")], first[str(folder / "a.jpg")])
    np.testing.assert_array_equal(fourth[str(folder / "copy of b.png")], first[str(folder / "trip" / "b.png")])
    with PhotoStore(index) as s:
        rows = {r.path: r.row for r in s.records()}
        assert rows[str(folder / "copy of b.png")] == rows[str(folder / "trip" / "b.png")]
        assert s.garbage() == (4, 1)  # a, b, c and c's old content; the old c is unreferenced

    (folder / "trip" / "b.png").unlink()
    random_photo(np.random.default_rng(60)).save(folder / "new1.png")
    shutil.copy(folder / "new1.png", folder / "new2.png")  # two new files with the same content in one run
    r5 = run(models, index, folder)
    assert r5.removed == 1 and r5.embedded + r5.reused == 2
    fifth = vectors_by_path(index)
    np.testing.assert_array_equal(fifth[str(folder / "copy of b.png")], first[str(folder / "trip" / "b.png")])
    np.testing.assert_array_equal(fifth[str(folder / "new1.png")], fifth[str(folder / "new2.png")])
    with PhotoStore(index) as s:
        assert s.garbage()[0] == 5  # one more row for the shared content
        assert {r.path for r in s.records()} == set(fifth)


def test_compaction_keeps_vectors_and_open_snapshots(models, tmp_path, monkeypatch):
    folder, index, rng = photo_folder(tmp_path, 6, seed=2)
    run(models, index, folder)
    before = vectors_by_path(index)
    with PhotoStore(index) as s:
        old_snapshot = s.snapshot()
        old_matrix = s.snapshot().matrix_name
    for i in range(4):
        (folder / f"{i}.png").unlink()
    monkeypatch.setattr(store, "COMPACT_MIN_ROWS", 1)
    run(models, index, folder)
    with PhotoStore(index) as s:
        assert s.garbage() == (2, 0) and s.snapshot().matrix_name != old_matrix
    assert not (index / old_matrix).exists()
    after = vectors_by_path(index)
    assert sorted(after) == [str(folder / "4.png"), str(folder / "5.png")]
    for p, v in after.items():
        np.testing.assert_array_equal(v, before[p])
    np.testing.assert_array_equal(old_snapshot.vectors[-1], before[str(folder / "5.png")])  # still readable


# --------------------------------------------------------------------------------------------------
# kill -9

KILLED_RUN = """
import os, sys, time
import torch
torch.set_num_threads(1)
from crossmodal.backbones import create_image_backbone
from crossmodal.photos import indexer, store
indexer.COMMIT_SECONDS = 0  # a commit after every batch
commits = 0
original = store.PhotoStore._set

def _set(cur, **values):
    # Inside the transaction of the third batch commit, after its vectors were written and fsynced:
    # announce it and wait for the test's SIGKILL.
    global commits
    if "rows" in values and "matrix" not in values:
        commits += 1
        if commits == 3:
            open(sys.argv[4], "w").close()
            time.sleep(600)
    return original(cur, **values)

store.PhotoStore._set = staticmethod(_set)
backbone = create_image_backbone("resnet18", sys.argv[1])
indexer.index_photos(sys.argv[2], [sys.argv[3]], backbone, device="cpu", workers=0, batch_size=2, progress=False)
"""


def test_kill_9_then_rerun_gives_the_uninterrupted_index(models, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(10):
        random_photo(rng).save(folder / f"{i:02d}.jpg", quality=90)
    killed, whole, marker = tmp_path / "killed", tmp_path / "whole", tmp_path / "in_third_commit"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(models["resnet"]), str(killed), str(folder),
                             str(marker)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the indexer never reached its third commit"
            time.sleep(0.05)
        with PhotoStore(killed) as s:  # a reader while the writer holds its transaction open
            assert len(s.records()) == 4  # two committed batches
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    dim = models["backbone"].dim
    matrix = next(killed.glob("vectors-*.f16"))
    assert matrix.stat().st_size == 6 * dim * 2  # the third batch's rows were written, never committed

    rerun = run(models, killed, folder, batch_size=2)
    assert (rerun.kept, rerun.embedded) == (4, 6)
    run(models, whole, folder, batch_size=2)
    assert records(killed) == records(whole)
    a, b = vectors_by_path(killed), vectors_by_path(whole)
    assert list(a) == list(b)
    distinct = min(np.abs(a[p] - a[q]).max() for p in a for q in a if p != q)
    assert distinct > 1e-2  # the tolerance below tells photos apart
    for p in a:
        np.testing.assert_allclose(a[p], b[p], rtol=0, atol=1e-3)
    assert matrix.stat().st_size == 10 * dim * 2


# --------------------------------------------------------------------------------------------------
# formats, orientation, problems, EXIF

def header_only_png(path: Path, width: int, height: int) -> None:
    """A tiny PNG file whose header declares width x height pixels (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_formats_orientation_and_problem_files(models, tmp_path, monkeypatch, capsys):
    images.register_heif()
    folder, index, refs = tmp_path / "photos", tmp_path / "index", tmp_path / "refs"
    folder.mkdir()
    refs.mkdir()
    rng = np.random.default_rng(4)
    pics = [random_photo(rng) for _ in range(4)]
    pics[0].save(refs / "p0.png")
    pics[0].save(folder / "p0.webp", lossless=True)
    pics[0].save(folder / "p0.tiff")
    pics[1].save(folder / "anim.gif", save_all=True, append_images=[pics[2]], duration=100)
    with Image.open(folder / "anim.gif") as gif:
        gif.convert("RGB").save(refs / "frame0.png")
        gif.seek(1)
        gif.convert("RGB").save(refs / "frame1.png")
    pics[3].save(folder / "p3.heic", quality=90)
    for i in range(4):
        pics[i].save(refs / f"pic{i}.png")
    # EXIF orientation 6: the stored pixels are the photo turned a quarter; viewers turn it back.
    upright = random_photo(rng, 96, 64)
    lossless = dict(qtables=[[1] * 64, [1] * 64], subsampling=0)
    upright.save(refs / "upright.jpg", **lossless)
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[274] = 6
    stored.save(folder / "rotated.jpg", exif=exif, **lossless)
    stored.save(refs / "no_tag.jpg", **lossless)
    header_only_png(folder / "bomb.png", 11_000, 10_000)
    (folder / "broken.jpg").write_bytes(b"not a picture")
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (folder / "notes.txt").write_text("not a photo")
    (folder / ".hidden").mkdir()
    pics[0].save(folder / ".hidden" / "x.png")
    pics[0].save(folder / ".dot.png")

    report = run(models, index, folder)
    vec = vectors_by_path(index)
    assert sorted(Path(p).name for p in vec) == ["anim.gif", "p0.tiff", "p0.webp", "p3.heic", "rotated.jpg"]
    ref = {p.stem: reference_vector(models, p) for p in refs.iterdir()}
    for name in ("p0.webp", "p0.tiff"):
        np.testing.assert_allclose(vec[str(folder / name)], ref["p0"], rtol=1e-2, atol=1e-2)
    gif = vec[str(folder / "anim.gif")]
    np.testing.assert_allclose(gif, ref["frame0"], rtol=1e-2, atol=1e-2)
    assert np.abs(gif - ref["frame1"]).max() > 0.1
    heic = vec[str(folder / "p3.heic")]
    assert min(range(4), key=lambda i: np.linalg.norm(heic - ref[f"pic{i}"])) == 3  # lossy, nearest its source
    rotated = vec[str(folder / "rotated.jpg")]
    assert np.linalg.norm(rotated - ref["upright"]) < 0.1 * np.linalg.norm(ref["no_tag"] - ref["upright"])

    problems = {Path(r.path).name: (r.status, r.reason) for r in report.problems}
    assert set(problems) == {"bomb.png", "broken.jpg", "gone.jpg"}
    assert problems["bomb.png"][0] == "refused" and "(110 megapixels)" in problems["bomb.png"][1]
    assert problems["broken.jpg"][0] == "undecodable"
    assert problems["gone.jpg"] == ("unreadable", f"dangling symbolic link to {tmp_path / 'deleted.jpg'}")
    with PhotoStore(index) as s:
        rec = {Path(r.path).name: r for r in s.records()}
        assert s.record(folder / "p0.webp") == rec["p0.webp"] and s.record(folder / "notes.txt") is None
    assert (rec["rotated.jpg"].width, rec["rotated.jpg"].height) == (96, 64)  # as displayed
    assert rec["p0.webp"].ocr_text is None

    calls = []
    original = indexer.PhotoFileDataset.__getitem__
    monkeypatch.setattr(indexer.PhotoFileDataset, "__getitem__", lambda ds, i: calls.append(i) or original(ds, i))
    again = run(models, index, folder)  # refused and undecodable files are not retried until they change
    assert calls == [] and again.kept == 7 and len(again.problems) == 3

    import index_folder

    argv = [str(folder), "--out", str(index), "--checkpoint", str(models["checkpoint"]), "--image-weights",
            str(models["resnet"]), "--workers", "0", "--device", "cpu", "--no-progress"]
    assert index_folder.main(argv) == 0
    out = capsys.readouterr().out
    assert "embedded 0 new/changed, removed 0, kept 7" in out and "3 file(s) cannot be searched" in out
    assert f"{folder / 'bomb.png'}: refused: the photo is 11,000 x 10,000 pixels" in out
    assert "dangling symbolic link" in out


def test_long_thin_images_are_refused_by_indexing_within_a_memory_bound(models, tmp_path):
    """A 100000 x 1 PNG (471 bytes) and a 65000 x 2 JPEG asked for gigabytes once resized: index_folder.py
    refuses both from their headers, lists them with the limit, and its peak stays small."""
    from crossmodal.demo_data import write_blank_png

    folder = tmp_path / "t"
    folder.mkdir()
    write_blank_png(folder / "tall.png", 1, 100_000)
    Image.new("RGB", (65_000, 2), (40, 90, 140)).save(folder / "wide.jpg")
    random_photo(np.random.default_rng(2)).save(folder / "fine.png")
    argv = [str(folder), "--checkpoint", str(models["checkpoint"]), "--out", str(tmp_path / "index"),
            "--image-weights", str(models["resnet"]), "--workers", "2", "--device", "cpu", "--no-progress"]
    code = ("import sys\nimport index_folder\nrc = index_folder.main(sys.argv[1:])\n"
            "print(next(int(l.split()[1]) // 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')), rc)\n")
    out = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    peak, rc = out.stdout.strip().splitlines()[-1].split()
    assert rc == "0", out.stderr[-2000:]
    assert "2 file(s) cannot be searched" in out.stdout
    assert "tall.png: refused: the photo is 1 x 100,000 pixels, 100,000 times longer than wide" in out.stdout
    assert "wide.jpg: refused: the photo is 65,000 x 2 pixels" in out.stdout
    assert int(peak) < 1500  # MB (the process itself; the decoding workers hold no more than one photo each)


def test_exif_date_and_camera_else_mtime(models, tmp_path):
    folder, index = tmp_path / "p", tmp_path / "index"
    folder.mkdir()
    rng = np.random.default_rng(5)
    exif = Image.Exif()
    exif[271], exif[272] = "Canon", "Canon EOS 5D"
    exif.get_ifd(0x8769)[36867] = "2019:07:14 10:20:30"
    random_photo(rng).save(folder / "camera.jpg", exif=exif)
    other = Image.Exif()
    other[271], other[272] = "FUJIFILM", "X-T3"
    other.get_ifd(0x8769)[36867] = "0000:00:00 00:00:00"  # what some cameras write without a clock
    random_photo(rng).save(folder / "no_date.jpg", exif=other)
    random_photo(rng).save(folder / "plain.png")
    when = 1_500_000_000
    for name in ("no_date.jpg", "plain.png"):
        os.utime(folder / name, (when, when))
    run(models, index, folder)
    with PhotoStore(index) as s:
        rec = {Path(r.path).name: r for r in s.records()}
    assert (rec["camera.jpg"].taken_at, rec["camera.jpg"].taken_from) == ("2019-07-14T10:20:30", "exif")
    assert rec["camera.jpg"].camera == "Canon EOS 5D"
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(when))
    assert (rec["no_date.jpg"].taken_at, rec["no_date.jpg"].taken_from, rec["no_date.jpg"].camera) == \
        (local, "mtime", "FUJIFILM X-T3")
    assert (rec["plain.png"].taken_at, rec["plain.png"].taken_from, rec["plain.png"].camera) == (local, "mtime", None)


# --------------------------------------------------------------------------------------------------
# readers while a writer adds, projection, search

def test_reader_sees_consistent_snapshots_while_indexing(models, tmp_path, monkeypatch):
    folder, index, rng = photo_folder(tmp_path, 12, seed=6, name="{i:02d}.png")
    monkeypatch.setattr(indexer, "COMMIT_SECONDS", 0)
    original = indexer.PhotoFileDataset.__getitem__

    def slow(ds, i):
        time.sleep(0.05)
        return original(ds, i)

    monkeypatch.setattr(indexer.PhotoFileDataset, "__getitem__", slow)
    engine = open_engine(models, index, [folder])
    assert len(engine.current()) == 0 and search_query(engine, "a dog", k=3).hits == []
    writer = threading.Thread(target=run, args=(models, index, folder), kwargs={"batch_size": 2})
    seen, sizes = [], []
    reader = PhotoStore(index)
    writer.start()
    while writer.is_alive():
        snap = reader.snapshot()
        assert len(snap.ids) == len(snap.paths) == len(snap.vectors) == len(snap.rows)
        seen.append((snap.generation, dict(zip(snap.paths, np.asarray(snap.vectors, np.float32)))))
        sizes.append(len(engine.current()))
        time.sleep(0.02)
    writer.join()
    final = vectors_by_path(index)
    assert len(final) == 12
    generations = [g for g, _ in seen]
    assert generations == sorted(generations)
    counts = [len(v) for _, v in seen]
    assert counts == sorted(counts) and any(0 < c < 12 for c in counts)  # seen while growing
    for _, vectors in seen:
        for p, v in vectors.items():
            np.testing.assert_array_equal(v, final[p])
    assert sizes == sorted(sizes) and any(0 < n < 12 for n in sizes)
    hits = search_query(engine, "a dog on the grass", k=20).hits
    assert len(hits) == 12 and {h.path for h in hits} == set(final)
    reader.close()


def test_background_indexing_stops_after_a_commit_and_resumes(models, tmp_path, monkeypatch):
    folder, index, rng = photo_folder(tmp_path, 8, seed=10)
    monkeypatch.setattr(indexer, "COMMIT_SECONDS", 3600)  # only stop() makes it commit before the end
    original = indexer.PhotoFileDataset.__getitem__
    monkeypatch.setattr(indexer.PhotoFileDataset, "__getitem__", lambda ds, i: time.sleep(0.1) or original(ds, i))
    thread = photos.IndexingThread(index, [folder], models["backbone"], device="cpu", workers=0, batch_size=2)
    thread.start()
    while thread.done < 2:
        assert thread.is_alive() and thread.error is None
        time.sleep(0.01)
    thread.stop()
    thread.join(60)
    assert thread.error is None and thread.report.stopped and thread.total == 8
    committed = len(vectors_by_path(index))
    assert committed == thread.done and 2 <= committed < 8
    rest = run(models, index, folder)
    assert (rest.kept, rest.embedded, rest.stopped) == (committed, 8 - committed, False)


def test_projection_is_extended_only_for_new_rows(models, tmp_path, monkeypatch):
    folder, index, rng = photo_folder(tmp_path, 3, seed=7)
    run(models, index, folder)
    projected = []
    original = projection.ProjectionCache._project
    monkeypatch.setattr(projection.ProjectionCache, "_project",
                        lambda self, c, start, stop: projected.append(stop - start) or original(self, c, start, stop))

    engine = open_engine(models, index)
    assert projected == [3]
    first = engine.current()
    for i in range(3, 5):
        random_photo(rng).save(folder / f"{i}.png")
    run(models, index, folder)
    view = engine.current()
    assert view is not first and projected == [3, 2] and len(view) == 5
    assert engine.current() is view  # nothing new: the same generation
    open_engine(models, index)  # a restart reads the projections from disk
    assert projected == [3, 2]
    with torch.inference_mode():
        want = models["model"].encode_image(torch.tensor(np.stack(list(vectors_by_path(index).values())))).numpy()
    got = np.asarray(view.embeddings, dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=2e-3)  # (sorted by path in both)
    hit = search_query(engine, photo=Image.open(folder / "3.png"), k=1).hits[0]
    assert hit.name == "3.png" and hit.path == str(folder / "3.png") and hit.score == pytest.approx(1, abs=1e-2)


def test_querybank_biases_are_extended_with_the_projections(models, tmp_path):
    from crossmodal.querybank import image_biases

    folder, index, rng = photo_folder(tmp_path, 3, seed=11)
    run(models, index, folder)
    state = dict(models["state"])
    g = torch.Generator().manual_seed(3)
    bank = lambda n: torch.nn.functional.normalize(torch.randn(n, EMBED, generator=g), dim=1).half()  # noqa: E731
    state["querybank"] = {"text": bank(40), "keywords": bank(30), "image": bank(40), "beta": 8.0}
    engine = open_engine(models, index, state=state)
    for i in range(3, 6):
        random_photo(rng).save(folder / f"{i}.png")
    run(models, index, folder)
    view = engine.current()
    assert len(view) == 6
    want = image_biases(state["querybank"], np.asarray(view.embeddings))  # all rows at once
    assert set(view.biases) == {"text", "keywords"}
    for b in want:
        np.testing.assert_allclose(view.biases[b], want[b], rtol=1e-5, atol=1e-6)
    assert engine.details()["querybank normalisation"] == "text, keywords"


def test_search_is_restricted_to_the_given_folders(models, tmp_path, capsys):
    import search as search_script

    a, a_other, b = tmp_path / "A", tmp_path / "A-other", tmp_path / "B"  # A-other shares A's name prefix
    rng = np.random.default_rng(8)
    for folder in (a, a_other, b):
        (folder / "sub").mkdir(parents=True)
        random_photo(rng).save(folder / "one.png")
        random_photo(rng).save(folder / "sub" / "two.png")
    index = tmp_path / "index"
    run(models, index, [a, a_other, b])
    with PhotoStore(index) as s:
        assert s.roots() == [str(a), str(a_other), str(b)]
        assert [Path(p).relative_to(tmp_path).as_posix() for p in s.snapshot([a]).paths] == ["A/one.png",
                                                                                            "A/sub/two.png"]
    only_a = open_engine(models, index, [a])
    hits = search_query(only_a, "a dog", k=10).hits
    assert sorted(h.name for h in hits) == ["one.png", "sub/two.png"] and only_a.collection.root == a

    common = ["--collection", str(index), "--checkpoint", str(models["checkpoint"]), "--image-weights",
              str(models["resnet"]), "--text-weights", str(models["bert"]), "--workers", "0", "--device", "cpu",
              "--k", "10"]
    assert search_script.main(common + ["--photos", str(a), str(b), "--", "a dog runs on the grass"]) == 0
    paths = [line.split()[-1] for line in capsys.readouterr().out.strip().splitlines()]
    assert sorted(Path(p).relative_to(tmp_path).as_posix() for p in paths) == [
        "A/one.png", "A/sub/two.png", "B/one.png", "B/sub/two.png"]
    assert search_script.main(common + ["a dog", "--photos", str(b / "sub"), "--json"]) == 0
    import json

    assert [h["path"] for h in json.loads(capsys.readouterr().out)["hits"]] == [str(b / "sub" / "two.png")]


def test_another_backbone_reembeds_and_is_refused_by_search(models, tmp_path, caplog):
    folder, index, rng = photo_folder(tmp_path, 2, seed=9)
    run(models, index, folder)
    before = vectors_by_path(index)
    other = create_image_backbone("resnet18", save_random_resnet18(tmp_path / "other.pth", seed=5))
    with caplog.at_level("WARNING"):
        report = photos.index_photos(index, [folder], other, device="cpu", workers=0, progress=False)
    assert report.embedded == 2
    assert [r.message for r in caplog.records if "embedding every photo again" in r.message] != []
    after = vectors_by_path(index)
    assert all(np.abs(after[p] - before[p]).max() > 0.1 for p in before)
    with pytest.raises(EngineError, match="its vectors are resnet18 .* index the folders again"):
        open_engine(models, index)


def test_one_writer_at_a_time(models, tmp_path):
    index = tmp_path / "index"
    identity = photos.vector_identity(models["backbone"])
    first = PhotoStore(index)
    with first.writing(identity):
        with pytest.raises(photos.StoreBusy, match="another thread of this process"):
            with PhotoStore(index).writing(identity):
                pass
        code = ("import sys\nfrom crossmodal.photos import PhotoStore, StoreBusy\ntry:\n"
                "    with PhotoStore(sys.argv[1]).writing({}):\n        print('got it')\n"
                "except StoreBusy as err:\n    print(err)\n")
        other = subprocess.run([sys.executable, "-c", code, str(index)], cwd=ROOT, capture_output=True, text=True,
                               timeout=60)
        assert other.stdout.strip() == f"another process is indexing into {index}", other.stderr[-2000:]
    with PhotoStore(index).writing(identity):  # released
        pass
    first.close()


def test_an_immediate_restart_after_kill_9_indexes_everything(models, tmp_path):
    """index_folder.py killed with SIGKILL while its decoding workers run: the lock goes with it (the
    workers neither hold it nor outlive it), so a restart at once indexes every photo."""
    folder, index, _ = photo_folder(tmp_path, 80, seed=14, name="{i:02d}.png")
    argv = [sys.executable, str(ROOT / "index_folder.py"), str(folder), "--checkpoint", str(models["checkpoint"]),
            "--out", str(index), "--image-weights", str(models["resnet"]), "--workers", "2", "--batch-size", "2",
            "--device", "cpu", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while "80 photos; 80 to index" not in (line := proc.stderr.readline()):  # it is about to decode
            assert line or proc.poll() is None, "index_folder.py ended before indexing"
            assert time.monotonic() < deadline
        # killed as soon as its decoding workers are seen: a fixed wait missed them on a fast machine,
        # where the indexing had already ended
        workers = []
        while not workers and proc.poll() is None and time.monotonic() < deadline:
            workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == proc.pid]
            time.sleep(0.01)
        assert workers, "no decoding workers seen"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    rerun = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(vectors_by_path(index)) == 80
    assert not [w for w in workers if os.path.exists(f"/proc/{w}") and _parent(w) not in (None, proc.pid)]


def test_a_background_indexer_waits_while_another_process_indexes(models, tmp_path, monkeypatch):
    folder, index, _ = photo_folder(tmp_path, 3, seed=15)
    PhotoStore(index).close()
    monkeypatch.setattr(indexer, "BUSY_RETRY_SECONDS", 0.2)
    code = ("import sys, time\nfrom crossmodal.photos import PhotoStore\n"
            "with PhotoStore(sys.argv[1]).writing({'dim': 1}):\n    print('holding', flush=True)\n    time.sleep(2)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(index)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    thread = photos.IndexingThread(index, [folder], models["backbone"], device="cpu", workers=0)
    thread.start()
    deadline = time.monotonic() + 30
    while thread.waiting is None:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    assert "another process is indexing" in thread.waiting
    holder.wait(30)
    thread.join(60)
    assert thread.error is None and thread.report.embedded == 3 and thread.waiting is None


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_user_data_folder_follows_xdg(monkeypatch, tmp_path):
    from crossmodal.paths import Layout, user_data_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Layout().photo_index == tmp_path / "xdg" / "crossmodal" / "photo_index"
    assert Layout(work_dir=tmp_path / "w").photo_index == tmp_path / "w" / "photo_index"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_data_dir() == tmp_path / "home" / ".local" / "share" / "crossmodal"


def test_image_checks_read_only_the_header(tmp_path):
    header_only_png(tmp_path / "big.png", 2000, 1000)  # its pixel data would not even decode
    with images.open_image(tmp_path / "big.png", images.INDEX_BUDGET) as im:
        assert im.size == (2000, 1000)
    with pytest.raises(images.ImageTooLarge, match=r"2,000 x 1,000 pixels \(2.0 megapixels\); photos up to 1.0 mega"):
        images.open_image(tmp_path / "big.png", images.DecodeBudget(1_000_000))
    assert images.camera_name(b"NIKON CORPORATION\x00", "NIKON D750 ") == "NIKON CORPORATION NIKON D750"
    assert images.camera_name("Canon", "Canon EOS 5D") == "Canon EOS 5D" and images.camera_name(None, " ") is None
    assert images.exif_date("2020:02:29 23:59:59\x00") == "2020-02-29T23:59:59"
    assert images.exif_date("    :  :     :  :  ") is None


def test_photo_hits_carry_confidences_and_the_allow_list_follows_the_index(models, tmp_path):
    from crossmodal.web import ServedPhotos

    folder, index, rng = photo_folder(tmp_path, 2, seed=12)
    (folder / "beside.png").write_bytes(b"\x89PNG\r\n\x1a\n not indexed: undecodable")
    run(models, index, folder)
    state = dict(models["state"])
    curve = {"method": "platt", "slope": 9.0, "intercept": 1.0}
    state["calibration"] = {"sentence": curve, "short": curve, "top_k": 10}
    engine = open_engine(models, index, [folder], state=state)
    hits = search_query(engine, "a dog runs on the grass", k=5).hits
    assert len(hits) == 2
    for h in hits:
        assert h.confidence == pytest.approx(1 / (1 + np.exp(-(9.0 * h.score + 1.0))), abs=1e-4)

    served = ServedPhotos(lambda: engine.current().collection)
    assert "0.png" in served and "2.png" not in served and "beside.png" not in served and len(served) == 2
    random_photo(rng).save(folder / "2.png")
    assert "2.png" not in served  # on disk, not indexed yet
    run(models, index, folder)
    assert "2.png" in served and len(served) == 3 and served.file_of("2.png")[0] == folder / "2.png"
    assert served.file_of("beside.png") is None and served.file_of("../p/0.png") is None
    (folder / "0.png").unlink()
    run(models, index, folder)
    assert "0.png" not in served and len(served) == 2


def test_any_name_the_file_system_allows_is_served_and_shown_escaped(models, tmp_path, capsys):
    """A PNG named .jpg, names holding a newline, a backslash or an escape sequence: indexed, served
    (by the type their bytes show) and printed with their control characters escaped. A name that is
    no UTF-8 text cannot be recorded or served: listed with the reason, not indexed."""
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    import search as search_script
    from crossmodal.web import ServedPhotos

    folder = tmp_path / "odd"
    folder.mkdir()
    rng = np.random.default_rng(16)
    names = ["png.jpg", "new\nline.jpg", "back\\slash.jpg", "evil\x1b[2J.jpg"]
    for name in names:
        random_photo(rng).save(folder / name, format="PNG")
    with open(os.fsencode(folder) + b"/bad\xff.jpg", "wb") as f:  # not UTF-8
        random_photo(rng).save(f, format="JPEG")
    report = run(models, tmp_path / "index", folder)
    assert report.embedded == 4 and report.unnamed == [str(folder) + "/bad\udcff.jpg"]
    why = "refused: its name is not UTF-8 text; rename it to index it"
    assert report.problem_lines() == ["1 file(s) cannot be searched:", f"  {folder}/bad\\xff.jpg: {why}"]
    engine = open_engine(models, tmp_path / "index", [folder])
    served = ServedPhotos(lambda: engine.current().collection)
    client = TestClient(Starlette(routes=[served.route()]))
    for name in names:
        r = client.get(served.url(name))
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", name
        assert r.content == (folder / name).read_bytes()
    common = ["a dog", "--collection", str(tmp_path / "index"), "--checkpoint", str(models["checkpoint"]),
              "--image-weights", str(models["resnet"]), "--text-weights", str(models["bert"]), "--device", "cpu",
              "--k", "10"]
    assert search_script.main(common) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "new\\nline.jpg" in out and "evil\\e[2J.jpg" in out and "back\\\\slash.jpg" in out
    assert len(out.strip().splitlines()) == 4  # no forged line


# --------------------------------------------------------------------------------------------------
# records follow the disk; damage is found and repaired

def index_script(models, index: Path, *folders: Path, extra: tuple = ()) -> int:
    """index_folder.py, in this process (its output: capsys and caplog)."""
    import index_folder

    return index_folder.main([*map(str, folders), "--checkpoint", str(models["checkpoint"]), "--out", str(index),
                              "--image-weights", str(models["resnet"]), "--workers", "0", "--device", "cpu",
                              "--no-progress", *extra])


def search_script(models, index: Path, query: str = "a dog") -> int:
    """search.py over the index as --collection, in this process (JSON hits on stdout)."""
    import search as search_module

    return search_module.main([query, "--collection", str(index), "--checkpoint", str(models["checkpoint"]),
                               "--text-weights", str(models["bert"]), "--device", "cpu", "--k", "50", "--json"])


def test_a_moved_folder_leaves_no_records_behind_and_forget_drops_one(models, tmp_path, capsys):
    folder, index, _ = photo_folder(tmp_path, 4, seed=17)
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    assert index_script(models, index, folder, other) == 0
    moved = tmp_path / "moved"
    folder.rename(moved)
    capsys.readouterr()
    assert index_script(models, index, moved) == 0
    assert "embedded 0 new/changed" in capsys.readouterr().out  # the vectors come back by hash
    assert search_script(models, index) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 8 and all(Path(h["path"]).is_file() for h in hits)  # moved/ and other/, nothing gone
    with PhotoStore(index) as s:
        assert s.roots() == [str(moved), str(other)]
    assert index_script(models, index, extra=("--forget", str(other))) == 0
    assert capsys.readouterr().out.strip() == f"forgot 4 photos under {other}"
    assert search_script(models, index) == 0
    assert {Path(h["path"]).parent for h in json.loads(capsys.readouterr().out)["hits"]} == {moved}


def test_a_change_that_keeps_size_and_mtime_is_indexed_again(models, tmp_path):
    """New bytes, the same size, the old mtime put back (what `touch -r` hides): the inode change time
    still moves, so the file is looked at again."""
    folder, index, _ = photo_folder(tmp_path, 2, seed=18)
    run(models, index, folder)
    photo = folder / "0.png"
    with PhotoStore(index) as s:
        old = s.record(photo).hash
    st = photo.stat()
    data = bytearray(photo.read_bytes())
    data[len(data) // 2] ^= 0xFF
    photo.write_bytes(bytes(data))
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (photo.stat().st_size, photo.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    report = run(models, index, folder)
    assert report.kept == 1  # the other photo
    with PhotoStore(index) as s:
        assert s.record(photo).hash != old


def test_a_running_engine_never_returns_a_gone_photo_and_a_periodic_look_adds_new_ones(models, tmp_path):
    """A photo deleted while the page runs leaves the results at once (its file is looked at); a new
    one appears after the indexer's next look at the folders, with no restart."""
    folder, index, rng = photo_folder(tmp_path, 6, seed=21)
    thread = photos.IndexingThread(index, [folder], models["backbone"], every=0.3, device="cpu", workers=0)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while thread.report is None:
            assert time.monotonic() < deadline and thread.error is None
            time.sleep(0.05)
        engine = open_engine(models, index, [folder])
        first = search_query(engine, "a dog", k=10)
        assert len(first.hits) == 6 and first.next_offset == 6
        (folder / "3.png").unlink()
        now = search_query(engine, "a dog", k=10)
        assert "3.png" not in {h.name for h in now.hits} and len(now.hits) == 5
        page = search_query(engine, "a dog", k=2, offset=0)
        assert len(page.hits) == 2 and page.next_offset >= 2
        rest = search_query(engine, "a dog", k=10, offset=page.next_offset)  # the next page: no repeats
        assert not {h.name for h in page.hits} & {h.name for h in rest.hits} and len(rest.hits) == 3
        random_photo(rng).save(folder / "new.png")
        deadline = time.monotonic() + 60
        while "new.png" not in {h.name for h in search_query(engine, "a dog", k=10).hits}:
            assert time.monotonic() < deadline, "the new photo never appeared"
            time.sleep(0.1)
        assert len(engine.current()) == 6  # 3.png's record went with the look that found new.png
    finally:
        thread.stop()
        thread.join(30)


def index_state(index: Path) -> tuple[list, dict]:
    return records(index), vectors_by_path(index)


@pytest.fixture(scope="module")
def clean_index(models, tmp_path_factory):
    """24 photos indexed by index_folder.py: the index that damaged copies are repaired into again."""
    base = tmp_path_factory.mktemp("clean")
    folder, index, _ = photo_folder(base, 24, seed=19)
    assert index_script(models, index, folder) == 0
    return folder, index


@pytest.mark.parametrize("damage", ["database middle", "database header", "vector rows"])
def test_damage_is_said_by_readers_and_repaired_by_the_next_indexing(models, clean_index, tmp_path, damage, capsys,
                                                                     caplog):
    """Random bytes in photos.sqlite3 (its middle or its header) or in the vector file (same length):
    a search says so in one line naming the file and the repair; the next index_folder.py moves the
    damaged file aside and rebuilds an index equal to a clean one. No script raises."""
    import logging

    folder, clean = clean_index
    index = tmp_path / "index"
    shutil.copytree(clean, index)
    rng = np.random.default_rng(20)
    if damage.startswith("database"):
        damaged = index / "photos.sqlite3"
        with open(damaged, "r+b") as f:
            f.seek(0 if damage == "database header" else (damaged.stat().st_size // 2) & ~4095)
            f.write(rng.integers(0, 256, 8192, dtype=np.uint8).tobytes())
    else:
        damaged = next(index.glob("vectors-*.f16"))
        damaged.write_bytes(rng.integers(0, 256, damaged.stat().st_size, dtype=np.uint8).tobytes())
    capsys.readouterr()
    assert search_script(models, index) == 2
    said = capsys.readouterr()
    assert said.out == "" and len(said.err.strip().splitlines()) == 1
    assert str(damaged) in said.err and "is damaged" in said.err
    assert f"python index_folder.py FOLDER [FOLDER ...] --out {index}" in said.err
    with caplog.at_level(logging.WARNING):
        assert index_script(models, index, folder) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(damaged) in warnings[0] and "moved it" in warnings[0]
    aside = [p for p in index.iterdir() if p.name.startswith("damaged-")]
    assert len(aside) == 1 and (aside[0] / damaged.name).is_file()  # set aside, never deleted
    got, want = index_state(index), index_state(clean)
    assert got[0] == want[0] and list(got[1]) == list(want[1])
    for path in want[1]:
        np.testing.assert_allclose(got[1][path], want[1][path], rtol=0, atol=1e-3)
    assert search_script(models, index) == 0


def test_a_locked_database_is_retried_until_the_timeout():
    import sqlite3

    from crossmodal.photos.store import retry_while_locked

    calls = []

    def locked_twice():
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "done"

    assert retry_while_locked(locked_twice, timeout=5, pause=0.01) == "done" and len(calls) == 3
    with pytest.raises(sqlite3.OperationalError, match="locked"):  # past the timeout the error stands
        retry_while_locked(lambda: (_ for _ in ()).throw(sqlite3.OperationalError("database is locked")),
                           timeout=0.05, pause=0.01)
    with pytest.raises(sqlite3.OperationalError, match="no such table"):  # other errors are not retried
        retry_while_locked(lambda: (_ for _ in ()).throw(sqlite3.OperationalError("no such table: x")), timeout=5)
