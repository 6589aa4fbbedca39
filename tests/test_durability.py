"""Long jobs killed with SIGKILL and rerun, full disks, and what a folder scan skips.

A kill test runs a stage script as a subprocess that saves a chunk after every unit
(CROSSMODAL_FLUSH_SECONDS=0), kills it with SIGKILL once a chunk is on disk, reruns it, and
compares the result byte for byte with an uninterrupted run. Runs in this process use one torch
thread (conftest), the subprocesses too (OMP_NUM_THREADS=1), so their arithmetic is the same.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA
from helpers import WORDS, save_checkpoint, save_random_resnet18, save_tiny_bert

import batch_image_feature_extract
import batch_text_feature_extract
import index_folder as index_folder_script
from crossmodal import atomic_io, demo_data
from crossmodal.atomic_io import NotEnoughSpaceError, WriteError, atomic_open, atomic_save_npy
from crossmodal.backbones import create_image_backbone, create_text_backbone
from crossmodal.captions import read_captions
from crossmodal.features.cache import FEATURES_FILE, IDS_FILE, MANIFEST_FILE, PARTIAL_DIR
from crossmodal.keywords import make_keyword_file
from crossmodal.photos.store import PhotoStore
from crossmodal.resumable import FLUSH_ENV

ROOT = Path(__file__).resolve().parents[1]
FLICKR8K = SHARED_DATA / "flickr8k"
N_PHOTOS = 24
CACHE_FILES = (FEATURES_FILE, IDS_FILE, MANIFEST_FILE)


# --------------------------------------------------------------------------------------------------
# helpers

def script_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT), **extra}


def kill_after_first_chunk(script: str, args: list[str], partial: Path, timeout: float = 120) -> None:
    """Run ``script`` saving a chunk per unit, and SIGKILL it once ``partial`` holds a finished chunk."""
    log_path = partial.parent.parent / f"{Path(script).stem}.killed.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=ROOT,
                                env=script_env(**{FLUSH_ENV: "0"}), stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while not list(partial.glob("chunk_*.json")):
                if proc.poll() is not None:
                    pytest.fail(f"{script} ended (rc {proc.returncode}) before saving a chunk: "
                                f"{log_path.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{script} saved no chunk in {timeout} s")
                time.sleep(0.005)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


def file_bytes(directory: Path, names=CACHE_FILES) -> dict[str, bytes]:
    return {n: (directory / n).read_bytes() for n in names}


def resumed_rows(caplog) -> int:
    """Rows a resumed build found done, from its log line."""
    lines = [r.getMessage() for r in caplog.records if "resuming" in r.getMessage()]
    assert lines, "the rerun did not resume"
    return int(lines[-1].split(": ")[-1].split(" of ")[0])


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory) -> Path:
    return save_random_resnet18(tmp_path_factory.mktemp("resnet") / "resnet18.pth")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "bert-base-uncased")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    demo_data.generate(out, num_images=N_PHOTOS, progress=False)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, resnet_file, bert_dir) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, 1, create_image_backbone("resnet18", resnet_file),
                    create_text_backbone("bert-base-uncased", bert_dir))
    return path


def random_captions(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    words = [w for w in WORDS if w.isalpha()]
    lines = [f"img_{i // 5:05d}.jpg#{i % 5}\t{' '.join(rng.choice(words, rng.integers(3, 12)))} .\n" for i in range(n)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# kill -9, then a rerun: the result of an uninterrupted run

def image_photos(kind: str, demo: Path, tmp_path: Path) -> tuple[Path, Path]:
    if kind == "demo":
        return demo / "images", demo / "captions.token"
    if not (FLICKR8K / "flickr8k.token").is_file():
        pytest.skip("no Flickr8k under ../shared/data")
    lines = (FLICKR8K / "flickr8k.token").read_text(encoding="utf-8").splitlines()[: 5 * N_PHOTOS]
    captions = tmp_path / "flickr8k_few.token"
    captions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return FLICKR8K / "flickr8k-images", captions


@pytest.mark.parametrize("kind", ["demo", "flickr8k"])
def test_image_extraction_killed_then_rerun_is_identical(kind, tmp_path, demo, resnet_file, caplog):
    images, captions = image_photos(kind, demo, tmp_path)

    def args(work: Path) -> list[str]:
        return ["--images", str(images), "--captions", str(captions), "--work-dir", str(work),
                "--image-backbone", "resnet18", "--image-weights", str(resnet_file), "--workers", "0",
                "--device", "cpu", "--batch-size", "4"]

    assert batch_image_feature_extract.main(args(tmp_path / "ref")) == 0
    work = tmp_path / "work"
    out = work / "image_embeddings"
    kill_after_first_chunk("batch_image_feature_extract.py", args(work), out / PARTIAL_DIR)
    assert not (out / MANIFEST_FILE).exists()  # killed before the end
    with caplog.at_level(logging.INFO):
        assert batch_image_feature_extract.main(args(work)) == 0
    assert 0 < resumed_rows(caplog) < N_PHOTOS
    assert file_bytes(out) == file_bytes(tmp_path / "ref" / "image_embeddings")
    assert not (out / PARTIAL_DIR).exists()


def test_text_extraction_killed_then_rerun_is_identical(tmp_path, bert_dir, caplog):
    captions = random_captions(tmp_path / "captions.token", 800)

    def args(work: Path) -> list[str]:
        return ["--captions", str(captions), "--work-dir", str(work), "--text-backbone", "bert-base-uncased",
                "--text-weights", str(bert_dir), "--device", "cpu", "--batch-size", "4"]

    assert batch_text_feature_extract.main(args(tmp_path / "ref")) == 0
    work = tmp_path / "work"
    out = work / "text_embeddings"
    kill_after_first_chunk("batch_text_feature_extract.py", args(work), out / PARTIAL_DIR)
    assert not (out / MANIFEST_FILE).exists()
    with caplog.at_level(logging.INFO):
        assert batch_text_feature_extract.main(args(work)) == 0
    assert 0 < resumed_rows(caplog) < 800
    assert file_bytes(out) == file_bytes(tmp_path / "ref" / "text_embeddings")


def index_args(folder: Path, out: Path, checkpoint: Path, resnet_file: Path) -> list[str]:
    return [str(folder), "--checkpoint", str(checkpoint), "--out", str(out), "--image-weights", str(resnet_file),
            "--workers", "0", "--device", "cpu", "--batch-size", "4", "--no-progress"]


# Folder indexing killed with SIGKILL, then rerun: tests/test_photos.py
# (test_kill_9_then_rerun_gives_the_uninterrupted_index), as is indexing under a reader
# (test_reader_sees_consistent_snapshots_while_indexing).


def test_sentence_augment_killed_then_rerun_is_identical(tmp_path):
    captions = random_captions(tmp_path / "captions.token", 4000, seed=1)

    def run(out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "sentence_augment.py"), "--captions", str(captions),
                               "--out", str(out)], cwd=ROOT, env=script_env(), capture_output=True, text=True,
                              timeout=300)

    assert run(tmp_path / "ref.txt").returncode == 0
    out = tmp_path / "keywords.txt"
    partial = tmp_path / ".keywords.txt.partial"
    kill_after_first_chunk("sentence_augment.py", ["--captions", str(captions), "--out", str(out)], partial)
    assert not out.exists()
    rerun = run(out)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming" in rerun.stderr
    assert out.read_bytes() == (tmp_path / "ref.txt").read_bytes()
    assert not partial.exists()


# --------------------------------------------------------------------------------------------------
# full disks

def test_write_errors_name_the_file_and_keep_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(WriteError) as info:
        with atomic_open(target, "w") as f:
            f.write("new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(info.value).startswith(f"disk full while writing {target} (") and "free there" in str(info.value)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]

    def short_write(f, array):  # what numpy's tofile raises on a full disk, without an errno
        raise OSError("256000 requested and 1984 written")

    monkeypatch.setattr(np, "save", short_write)
    with pytest.raises(WriteError, match=f"^disk full while writing {tmp_path / 'b.npy'}"):
        atomic_save_npy(tmp_path / "b.npy", np.zeros(3))
    with pytest.raises(WriteError, match=f"^cannot write {tmp_path / 'c.txt'}: Permission denied$"):
        with atomic_open(tmp_path / "c.txt", "w"):
            raise PermissionError(errno.EACCES, "Permission denied")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_text_extraction_on_a_full_disk_says_where_then_resumes(tmp_path, bert_dir, monkeypatch, caplog):
    captions = random_captions(tmp_path / "captions.token", 200)
    args = ["--captions", str(captions), "--work-dir", str(tmp_path / "work"), "--text-backbone",
            "bert-base-uncased", "--text-weights", str(bert_dir), "--device", "cpu", "--batch-size", "4"]
    out = tmp_path / "work" / "text_embeddings"
    real_save = np.save
    saves = []

    def fills_up(f, array, *a, **k):  # the disk is full from the third chunk on
        saves.append(f.name)
        if len(saves) >= 3:
            raise OSError("256000 requested and 1984 written")
        return real_save(f, array, *a, **k)

    with monkeypatch.context() as m:
        m.setenv(FLUSH_ENV, "0")
        m.setattr(np, "save", fills_up)
        with caplog.at_level(logging.ERROR):
            assert batch_text_feature_extract.main(args) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].startswith(f"disk full while writing {out / PARTIAL_DIR / 'chunk_0000002_0000003.npy'} (")
    assert not any(r.exc_info for r in caplog.records)

    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert batch_text_feature_extract.main(args) == 0  # space again: resumed
    assert resumed_rows(caplog) == 8
    assert batch_text_feature_extract.main(args[:3] + [str(tmp_path / "ref")] + args[4:]) == 0
    assert file_bytes(out) == file_bytes(tmp_path / "ref" / "text_embeddings")


def test_free_space_is_checked_before_any_work(tmp_path, demo, resnet_file, monkeypatch, caplog):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(atomic_io.shutil, "disk_usage", lambda p: usage._replace(free=50_000))
    decoded = []
    monkeypatch.setattr("crossmodal.features.extract.ImageFileDataset.__getitem__",
                        lambda ds, i: decoded.append(i))
    work = tmp_path / "work"
    args = ["--images", str(demo / "images"), "--captions", str(demo / "captions.token"), "--work-dir", str(work),
            "--image-backbone", "resnet18", "--image-weights", str(resnet_file), "--workers", "0", "--device", "cpu"]
    with caplog.at_level(logging.ERROR):
        assert batch_image_feature_extract.main(args) == 2
    # 24 rows of 512 float16 twice (chunks, then the assembled file), the ids and the manifest
    msg = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(msg) == 1 and msg[0].startswith(f"not enough free space in {work / 'image_embeddings'} for ")
    assert "about 53.6 KB needed, 50.0 KB free" in msg[0]
    assert decoded == [] and not list((work / "image_embeddings").rglob("chunk_*"))

    with pytest.raises(NotEnoughSpaceError, match="keyword samples: about"):
        make_keyword_file(tmp_path / "kw.txt", read_captions(random_captions(tmp_path / "c.token", 5000)),
                          progress=False)


def _can_mount_tmpfs(where: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    where.mkdir(exist_ok=True)
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=1m tmpfs '{where}'"], capture_output=True)
    return probe.returncode == 0


def test_full_tmpfs_mid_run_then_rerun_with_space(tmp_path, bert_dir):
    """A real full disk: a small tmpfs (in a private mount namespace) filled up during the run."""
    disk = tmp_path / "disk"
    if not _can_mount_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs here (unshare --user --mount)")
    captions = random_captions(tmp_path / "captions.token", 800)
    args = ["--captions", str(captions), "--text-backbone", "bert-base-uncased", "--text-weights", str(bert_dir),
            "--device", "cpu", "--batch-size", "4"]
    assert batch_text_feature_extract.main(args + ["--work-dir", str(tmp_path / "ref")]) == 0
    script = " ".join([sys.executable, str(ROOT / "batch_text_feature_extract.py"), *args,
                       "--work-dir", str(disk / "work")])
    out, kept = disk / "work" / "text_embeddings", tmp_path / "kept"
    shell = f"""
        mount -t tmpfs -o size=16m tmpfs '{disk}' || exit 90
        {FLUSH_ENV}=0 {script} 2> '{tmp_path}/first.err' & pid=$!
        until ls '{out}/{PARTIAL_DIR}'/chunk_*.json >/dev/null 2>&1; do sleep 0.01; done
        dd if=/dev/zero of='{disk}/filler' bs=64k 2>/dev/null
        wait $pid; echo $? > '{tmp_path}/first.rc'
        rm '{disk}/filler'
        {script} 2> '{tmp_path}/second.err'; echo $? > '{tmp_path}/second.rc'
        cp -r '{out}' '{kept}'
    """
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", shell],
                          env=script_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    first = (tmp_path / "first.err").read_text()
    assert (tmp_path / "first.rc").read_text().strip() == "2", first[-3000:]
    assert "Traceback" not in first
    errors = [line for line in first.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"disk full while writing {out / PARTIAL_DIR}/chunk_" in errors[0], first[-3000:]
    second = (tmp_path / "second.err").read_text()
    assert (tmp_path / "second.rc").read_text().strip() == "0", second[-3000:]
    assert "resuming" in second
    assert file_bytes(kept) == file_bytes(tmp_path / "ref" / "text_embeddings")


# --------------------------------------------------------------------------------------------------
# folder scans and replacing an index

def test_dangling_symlink_and_unreadable_folder_are_listed(tmp_path, demo, checkpoint, resnet_file, capsys,
                                                           monkeypatch):
    folder = tmp_path / "photos"
    (folder / "locked").mkdir(parents=True)
    shutil.copy(demo / "images" / "demo_00000.jpg", folder / "one.jpg")
    shutil.copy(demo / "images" / "demo_00001.jpg", folder / "locked" / "two.jpg")
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (folder / "notes.txt").symlink_to(tmp_path / "deleted.txt")  # not a photo: nothing to say
    (folder / "locked").chmod(0)
    out = tmp_path / "index"
    try:
        with monkeypatch.context() as m:
            if os.access(folder / "locked", os.R_OK):  # root: the listing fails as it would for a user
                real_scandir = os.scandir

                def scandir(path="."):
                    if Path(path) == folder / "locked":
                        raise PermissionError(errno.EACCES, "Permission denied", str(path))
                    return real_scandir(path)

                m.setattr(os, "scandir", scandir)
            assert index_folder_script.main(index_args(folder, out, checkpoint, resnet_file)) == 0
    finally:
        (folder / "locked").chmod(0o755)
    printed = capsys.readouterr().out
    reason = f"dangling symbolic link to {tmp_path / 'deleted.jpg'}"
    assert "2 file(s) cannot be searched" in printed and f"  {folder / 'gone.jpg'}: unreadable: {reason}" in printed
    assert f"  {folder / 'locked'}: unreadable: cannot list folder: Permission denied" in printed
    with PhotoStore(out) as store:
        assert store.snapshot().paths == [str(folder / "one.jpg")]
        assert {p.path: p.reason for p in store.problems()} == {
            str(folder / "gone.jpg"): reason, str(folder / "locked"): "cannot list folder: Permission denied"}
    # listed again on the next run, and once the folder is readable its photo is indexed
    assert index_folder_script.main(index_args(folder, out, checkpoint, resnet_file)) == 0
    assert "embedded 1 new/changed" in capsys.readouterr().out
    with PhotoStore(out) as store:
        assert store.snapshot().paths == [str(folder / "locked" / "two.jpg"), str(folder / "one.jpg")]


def test_photo_vectors_check_free_space_and_name_the_file_on_write_errors(tmp_path, demo, checkpoint, resnet_file,
                                                                           monkeypatch, caplog):
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in sorted(p.name for p in (demo / "images").iterdir())[:4]:
        shutil.copy(demo / "images" / n, folder / n)
    out = tmp_path / "index"
    usage = shutil.disk_usage(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(atomic_io.shutil, "disk_usage", lambda p: usage._replace(free=1000))
        decoded = []
        m.setattr("crossmodal.photos.indexer.PhotoFileDataset.__getitem__", lambda ds, i: decoded.append(i))
        with caplog.at_level(logging.ERROR):
            assert index_folder_script.main(index_args(folder, out, checkpoint, resnet_file)) == 2
        assert decoded == []  # refused before any photo was read
    msg = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(msg) == 1 and msg[0].startswith(f"not enough free space in {out} for the vectors of 4 photos")

    # a write that fails: the error names the vector file, nothing is committed, and a rerun completes
    real_open = open

    def failing_open(path, mode="r", *a, **kw):
        if str(path).endswith(".f16") and "+" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *a, **kw)

    caplog.clear()
    with monkeypatch.context() as m:
        m.setattr("builtins.open", failing_open)
        with caplog.at_level(logging.ERROR):
            assert index_folder_script.main(index_args(folder, out, checkpoint, resnet_file)) == 2
    msg = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(msg) == 1 and msg[0].startswith(f"disk full while writing {out}/vectors-") and ".f16" in msg[0]
    with PhotoStore(out) as store:
        assert store.snapshot().paths == [] and store.garbage() == (0, 0)
    assert index_folder_script.main(index_args(folder, out, checkpoint, resnet_file)) == 0
    with PhotoStore(out) as store:
        assert len(store.snapshot()) == 4
