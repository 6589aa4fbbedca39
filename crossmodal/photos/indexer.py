"""Incremental indexing of photo folders into a ``PhotoStore``.

A run scans the folders, drops the records of files that are gone (and of indexed folders that are
gone), and hands every new or changed file (a different size, mtime or inode change time than
recorded), and every file whose vector is missing, to DataLoader workers. A worker hashes the
file's bytes, reads its header and EXIF, and decodes it only when no stored vector has that content
hash yet: a renamed, moved or copied photo gets its vector back without being decoded. Refused and
undecodable files are recorded with their reason and not retried until they change; unreadable
ones (dangling symlinks, permissions) are listed on every run.

Results are committed about every ``COMMIT_SECONDS`` (vectors fsynced, then one SQLite
transaction), so a killed run loses at most that much work and a rerun continues from there; a
page searching the same store sees each commit as it lands. ``IndexingThread`` runs all of this
in the background of a server.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from crossmodal import images
from crossmodal.atomic_io import check_free_space
from crossmodal.backbones import ImageBackbone
from crossmodal.features.extract import (
    IMAGE_BATCH_SIZE_CPU,
    IMAGE_BATCH_SIZE_GPU,
    NUM_WORKERS,
    ImageEmbedder,
    image_loader,
)
from crossmodal.photos.files import FoundFile, content_hash, scan_folder
from crossmodal.photos.store import NewRecord, PhotoRecord, PhotoStore, StoreBusy
from crossmodal.terminal import printable

log = logging.getLogger(__name__)

COMMIT_SECONDS = 20.0  # results are committed at least this often: what a kill can lose
PROBLEMS_SHOWN = 20  # problem files a report lists one per line; the rest are counted
RETRIED_EVERY_RUN = ("unreadable",)  # cheap to try again (a stat or an open), and often fixed outside
BUSY_RETRY_SECONDS = 2.0  # a background indexer finding the index busy tries again this often
RESCAN_SECONDS = 300.0  # a page looks at its folders again this often (app.py --rescan-seconds)


def vector_identity(backbone: ImageBackbone) -> dict:
    """What the store records about its vectors; a store refuses to mix vectors of two identities."""
    preprocess = {**backbone.preprocess, "jpeg_draft": True, "exif_transpose": True, "frame": "first"}
    return {"backbone": backbone.name, "weights": backbone.weights, "preprocess": preprocess, "dim": backbone.dim}


def _is_text(path: str) -> bool:
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:  # undecodable bytes of the name (surrogateescape)
        return False


def _local_iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).isoformat(timespec="seconds")


class PhotoFileDataset(Dataset):
    """Each photo file's record, and its uint8 input tensor when it needs embedding (else None)."""

    def __init__(self, files: Sequence[FoundFile], transform: Callable, image_size: int, known: set[str]):
        self.files = list(files)
        self.transform = transform
        self.image_size = image_size
        self.known = known  # content hashes with a stored vector

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[NewRecord, torch.Tensor | None]:
        images.register_heif()  # (in each worker process; cheap after the first call)
        f = self.files[i]
        try:
            digest, st = content_hash(f.path)
        except OSError as err:
            return NewRecord(f.path, f.size, f.mtime_ns, "unreadable", f"cannot read: {err.strerror or err}"), None
        base = {"path": f.path, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                "hash": digest}
        try:
            with images.open_image(f.path, images.INDEX_BUDGET) as im:
                info = images.photo_info(im)
                x = None if digest in self.known else self.transform(images.upright_rgb(im, self.image_size))
        except images.ImageTooLarge as err:
            return NewRecord(**base, status="refused", reason=str(err)), None
        except Exception as err:  # noqa: BLE001 - corrupt, truncated or unsupported files are recorded
            return NewRecord(**base, status="undecodable", reason=f"{type(err).__name__}: {err}"), None
        taken = (info.taken_at, "exif") if info.taken_at else (_local_iso(st.st_mtime_ns), "mtime")
        return NewRecord(**base, status="ok", width=info.width, height=info.height, taken_at=taken[0],
                         taken_from=taken[1], camera=info.camera), x


@dataclass
class IndexReport:
    roots: list[str]
    photos: int = 0  # files found under the roots
    embedded: int = 0  # decoded and embedded this run
    reused: int = 0  # new or changed files whose content already had a vector (moved, renamed, copied)
    kept: int = 0  # unchanged since the last run
    removed: int = 0  # records dropped: their file is gone
    forgotten: list[str] = field(default_factory=list)  # indexed folders that are gone: their records dropped
    problems: list[PhotoRecord] = field(default_factory=list)  # files that cannot be searched, with reasons
    seconds: float = 0.0
    embed_seconds: float = 0.0  # of which hashing, decoding and embedding
    stopped: bool = False  # stopped early (``stop`` was set); committed work is kept
    texts_read: int = 0  # photos whose text the OCR pass read this run
    ocr_seconds: float = 0.0
    unnamed: list[str] = field(default_factory=list)  # files whose names are no text (not UTF-8): not indexed

    def summary(self) -> str:
        text = (f"embedded {self.embedded} new/changed, removed {self.removed}, kept {self.kept}, "
                f"reused {self.reused} (moved or copied)")
        if self.embed_seconds:
            text += f" in {self.embed_seconds:.1f} s ({self.rate:.1f} photos/s)"
        if self.texts_read:
            text += f"; text read in {self.texts_read} photos in {self.ocr_seconds:.1f} s"
        return text

    def problem_lines(self, shown: int = PROBLEMS_SHOWN) -> list[str]:
        """The files that cannot be searched, one line each (the first ``shown``), for a terminal:
        control characters in their names escaped (``terminal.printable``)."""
        problems = [(rec.path, f"{rec.status}: {rec.reason}") for rec in self.problems]
        problems += [(path, "refused: its name is not UTF-8 text; rename it to index it") for path in self.unnamed]
        if not problems:
            return []
        lines = [f"{len(problems)} file(s) cannot be searched:"]
        lines += [f"  {printable(path)}: {printable(why)}" for path, why in problems[:shown]]
        if len(problems) > shown:
            lines.append(f"  ... and {len(problems) - shown} more")
        return lines

    @property
    def rate(self) -> float:
        """Photos handled per second of hashing, decoding and embedding."""
        return (self.embedded + self.reused) / self.embed_seconds if self.embed_seconds else 0.0


def index_photos(folder: str | os.PathLike, roots: Sequence[str | os.PathLike], backbone: ImageBackbone, *,
                 device: str = "auto", batch_size: int | None = None, workers: int = NUM_WORKERS,
                 checkpoint: str | os.PathLike | None = None, progress: bool = True,
                 on_progress: Callable[[int, int], None] | None = None,
                 stop: threading.Event | None = None,
                 read_text: Callable[[str], str] | None = None) -> IndexReport:
    """Bring the store in ``folder`` up to date with the photo folders ``roots``, embedding with
    ``backbone`` (``engine.load_image_backbone`` builds it from a checkpoint). ``checkpoint`` is recorded
    as the one the index is served with by default. ``on_progress(done, total)`` follows the
    files being embedded; ``stop`` ends the run early after a commit. StoreBusy when another
    process is indexing into ``folder``.

    ``read_text`` (``crossmodal.ocr.read_text``, or any path -> text function): after embedding,
    the text in every searchable photo not read yet is read and recorded (OCR), committed by time
    like the vectors, so a killed run continues with the photos it had not reached. A photo it
    cannot open (ValueError, OSError) is recorded with no text; other errors end the run."""
    t0 = time.perf_counter()
    resolved = [str(Path(r).expanduser().resolve()) for r in roots]
    for r in resolved:
        if not Path(r).is_dir():
            raise FileNotFoundError(f"no such folder: {r}")
    report = IndexReport(resolved)
    store = PhotoStore(folder, repair=True)  # a damaged index is moved aside and indexed anew
    try:
        with store.writing(vector_identity(backbone), str(Path(checkpoint).resolve()) if checkpoint else None):
            # folders indexed before that are gone (moved, renamed, deleted): their records go too
            report.forgotten = [r for r in store.roots() if r not in resolved and not Path(r).is_dir()]
            if report.forgotten:
                forgotten = store.forget(report.forgotten)
                log.info("forgot %d photos of folders that are gone: %s", forgotten, ", ".join(report.forgotten))
            store.add_roots(resolved)
            found: dict[str, FoundFile] = {}
            for r in resolved:
                found.update((f.path, f) for f in scan_folder(r, exclude=[store.folder]))
            # a name that is no text cannot be recorded, served or shown: listed, never indexed
            report.unnamed = sorted(p for p in found if not _is_text(p))
            for path in report.unnamed:
                del found[path]
            stored = store.stored_files(resolved)
            gone = sorted(p for p in stored if p not in found)
            store.remove(gone)
            unreadable, todo = [], []
            for f in found.values():
                old = stored.get(f.path)
                same = old is not None and old[:3] == (f.size, f.mtime_ns, f.ctime_ns)
                if f.error:
                    if not (old is not None and old[:2] == (f.size, f.mtime_ns) and old[3] == "unreadable"):
                        unreadable.append(NewRecord(f.path, f.size, f.mtime_ns, "unreadable", f.error))
                elif same and (old[4] or old[3] not in ("ok", *RETRIED_EVERY_RUN)):
                    report.kept += 1
                else:
                    todo.append(f)
            store.commit(unreadable, {})
            # every photo to do may need a new vector row (fewer do: moved and copied ones reuse theirs)
            check_free_space(store.folder, 2 * len(todo) * backbone.dim * 2, f"the vectors of {len(todo)} photos")
            report.photos, report.removed = len(found), len(gone)
            log.info("%s: %d photos; %d to index, %d unchanged, %d gone", ", ".join(resolved), len(found),
                     len(todo), report.kept, len(gone))
            if todo:
                t1 = time.perf_counter()
                _embed(store, todo, backbone, report, device, batch_size, workers, progress, on_progress, stop)
                report.embed_seconds = time.perf_counter() - t1
                log.info("indexed %d photos in %.1f s (%.1f photos/s): %d embedded, %d reused", len(todo),
                         report.embed_seconds, report.rate, report.embedded, report.reused)
            if read_text is not None and not report.stopped:
                t1 = time.perf_counter()
                _read_texts(store, resolved, read_text, report, on_progress, stop)
                report.ocr_seconds = time.perf_counter() - t1
            if not report.stopped:
                store.mark_indexed(resolved)
                store.compact()
            report.problems = store.problems(resolved)
    finally:
        store.close()
    report.seconds = time.perf_counter() - t0
    return report


def _embed(store: PhotoStore, todo: list[FoundFile], backbone: ImageBackbone, report: IndexReport, device: str,
           batch_size: int | None, workers: int, progress: bool,
           on_progress: Callable[[int, int], None] | None, stop: threading.Event | None) -> None:
    embed = ImageEmbedder(backbone, device)
    if batch_size is None:
        batch_size = IMAGE_BATCH_SIZE_GPU if embed.device.type == "cuda" else IMAGE_BATCH_SIZE_CPU
    dataset = PhotoFileDataset(todo, backbone.pil_transform(), backbone.image_size, store.known_hashes())
    batches = [list(range(i, min(i + batch_size, len(todo)))) for i in range(0, len(todo), batch_size)]
    loader = image_loader(dataset, batches, workers, embed.device, collate_fn=list)
    records: list[NewRecord] = []
    vectors: dict = {}
    last_commit = time.monotonic()
    done = 0
    with tqdm(total=len(todo), desc="indexing photos", unit="photo", disable=not progress,
              dynamic_ncols=True) as bar:
        for batch in loader:
            decoded = [(rec.hash, x) for rec, x in batch if x is not None]
            if decoded:
                feats = embed(torch.stack([x for _, x in decoded])).cpu().numpy()
                for (digest, _), v in zip(decoded, feats):
                    vectors.setdefault(digest, v)
            report.embedded += len(decoded)
            report.reused += sum(1 for rec, x in batch if x is None and rec.status == "ok")
            records += [rec for rec, _ in batch]
            done += len(batch)
            bar.update(len(batch))
            if on_progress:
                on_progress(done, len(todo))
            stopping = stop is not None and stop.is_set()
            if stopping or time.monotonic() - last_commit >= COMMIT_SECONDS:
                store.commit(records, vectors)
                records, vectors, last_commit = [], {}, time.monotonic()
            if stopping:
                report.stopped = True
                break
    store.commit(records, vectors)


def _read_texts(store: PhotoStore, roots: list[str], read_text: Callable[[str], str], report: IndexReport,
                on_progress: Callable[[int, int], None] | None, stop: threading.Event | None) -> None:
    pending = store.ocr_pending(roots)
    done: list[tuple[int, str]] = []
    last_commit = time.monotonic()
    for n, (photo_id, path) in enumerate(pending, start=1):
        try:
            text = read_text(path)
        except (ValueError, OSError) as err:  # unreadable now: no text (read again when the file changes)
            log.warning("no text read from %s: %s", path, err)
            text = ""
        done.append((photo_id, text))
        report.texts_read += 1
        if on_progress:
            on_progress(n, len(pending))
        stopping = stop is not None and stop.is_set()
        if stopping or time.monotonic() - last_commit >= COMMIT_SECONDS:
            store.set_ocr(done)
            done, last_commit = [], time.monotonic()
        if stopping:
            report.stopped = True
            break
    store.set_ocr(done)


class IndexingThread(threading.Thread):
    """``index_photos`` in a background thread: a page keeps answering from what is committed.

    ``done``/``total`` follow the files being embedded, then those being read (OCR); ``running`` is
    True while a run goes on; ``report`` (or ``error``) is set when one ends; ``stop()`` asks it to
    commit and end early. With ``every`` (seconds) it looks at the folders again that often, and at
    once on ``look_again()``, so new, changed, moved and deleted photos are taken up while the page
    runs. While another process indexes the same index (``StoreBusy``), it waits and tries again
    every ``BUSY_RETRY_SECONDS`` (``waiting`` says so), until it runs or is stopped."""

    def __init__(self, folder: str | os.PathLike, roots: Sequence[str | os.PathLike], backbone: ImageBackbone,
                 every: float | None = None, **kwargs):
        super().__init__(name="photo-indexer", daemon=True)
        self.done, self.total = 0, 0
        self.running = False
        self.every = every
        self.report: IndexReport | None = None
        self.error: BaseException | None = None
        self.waiting: str | None = None  # why it waits to start (another indexer holds the index)
        self._stop_event = threading.Event()
        self._wake = threading.Event()
        self._args = (folder, roots, backbone)
        self._kwargs = {"progress": False, **kwargs}

    def _progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.running, self.done, self.total = True, 0, 0
                self.report = index_photos(*self._args, on_progress=self._progress, stop=self._stop_event,
                                           **self._kwargs)
                self.waiting, self.error, self.running = None, None, False
            except StoreBusy as err:
                if self.waiting is None:
                    log.info("%s; trying again every %g s", err, BUSY_RETRY_SECONDS)
                self.waiting, self.running = str(err), False
                self._stop_event.wait(BUSY_RETRY_SECONDS)
                continue
            except BaseException as err:  # noqa: BLE001 - kept for the page to show
                log.exception("indexing failed")
                self.error, self.running = err, False
            if self.every is None or self._stop_event.is_set():
                return
            self._wake.wait(self.every)
            self._wake.clear()

    def look_again(self) -> None:
        """Look at the folders now rather than at the end of the period."""
        self._wake.set()

    def stop(self) -> None:
        self._stop_event.set()
        self._wake.set()
