"""The photo index on disk: per-photo records in SQLite and their backbone vectors in a matrix.

One index (a data folder) holds every indexed folder (root)::

    photos.sqlite3          SQLite in WAL mode: tables meta, roots, photos, vectors
    vectors-<n>.f16         float16 rows of ``dim`` values, one per distinct content hash; append-only
    index.lock              held (a POSIX record lock) by the one process writing
    projected-*, querybias-*  the search engine's head projections of the rows (``crossmodal.projection``)

``photos`` has one row per file: absolute path, size, mtime_ns, content hash, status ("ok",
"refused": more pixels than allowed, "undecodable": not a picture Pillow can read, "unreadable":
the file could not be opened, e.g. a dangling symlink), the reason, displayed width and height,
date taken (EXIF, else mtime; ``taken_from`` says which), camera, and ``ocr_text`` (left NULL here;
an OCR step fills it). ``vectors`` maps a content hash to its row in the matrix, so a renamed,
moved or copied file shares the row of its content. ``meta`` records what produced the vectors
(``identity``: backbone, weights, preprocessing, dim), the matrix file, its committed row count and
a ``generation`` that every commit increments.

Durability: new vector rows are appended to the matrix and fsynced before the SQLite transaction
that references them commits (synchronous=FULL). Rows past the committed count are leftovers of a
killed run and are cut off when a writer next opens the index, so a rerun continues from the last
commit as if it had never been interrupted.

Readers never wait for the writer (WAL): ``snapshot()`` reads the photos and the matrix's committed
length in one read transaction; rows below that length never change (the file is append-only, and
compaction writes a new file), so a snapshot stays consistent while indexing goes on.
A vector whose content no photo has any more stays (a file moved in a later run finds it) until the
matrix is mostly such garbage: then ``compact`` rewrites it into a new file.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from crossmodal.atomic_io import check_free_space, write_error

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process writer lock
    fcntl = None

log = logging.getLogger(__name__)

FORMAT = 1
DB_FILE = "photos.sqlite3"
LOCK_FILE = "index.lock"
MATRIX_PREFIX = "vectors-"
MATRIX_SUFFIX = ".f16"
BUSY_TIMEOUT_S = 30  # how long a statement waits for another connection's lock
# Compaction: when at least this many rows are stored and more than half are unreferenced.
COMPACT_MIN_ROWS = 1024
COMPACT_GARBAGE = 0.5
COPY_ROWS = 1 << 14  # rows copied at a time during compaction
STATUSES = ("ok", "refused", "undecodable", "unreadable")
_WRITERS: set[str] = set()  # lock files this process holds for writing
_WRITERS_LOCK = threading.Lock()

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roots (path TEXT PRIMARY KEY, indexed_at TEXT);
CREATE TABLE IF NOT EXISTS photos (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    width INTEGER,
    height INTEGER,
    taken_at TEXT,
    taken_from TEXT,
    camera TEXT,
    ocr_text TEXT,
    ctime_ns INTEGER
);
CREATE INDEX IF NOT EXISTS photos_hash ON photos (hash);
CREATE TABLE IF NOT EXISTS vectors (hash TEXT PRIMARY KEY, row INTEGER NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS vector_blocks (start INTEGER PRIMARY KEY, stop INTEGER NOT NULL, crc INTEGER NOT NULL);
"""
# Added to indexes made before them (``PhotoStore._ensure_schema``): column -> its declaration.
ADDED_COLUMNS = {"ctime_ns": "ctime_ns INTEGER"}
# The OCR text's full-text index (SQLite FTS5, over photos.ocr_text), kept in sync by triggers, so
# every change of a record (new, re-recorded, OCR read, deleted) updates it in the same transaction.
OCR_SCHEMA = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS ocr_fts USING fts5(ocr_text, content='photos', content_rowid='id')",
    "CREATE TRIGGER IF NOT EXISTS photos_ocr_insert AFTER INSERT ON photos BEGIN "
    "INSERT INTO ocr_fts(rowid, ocr_text) VALUES (new.id, new.ocr_text); END",
    "CREATE TRIGGER IF NOT EXISTS photos_ocr_delete AFTER DELETE ON photos BEGIN "
    "INSERT INTO ocr_fts(ocr_fts, rowid, ocr_text) VALUES ('delete', old.id, old.ocr_text); END",
    "CREATE TRIGGER IF NOT EXISTS photos_ocr_update AFTER UPDATE OF ocr_text ON photos BEGIN "
    "INSERT INTO ocr_fts(ocr_fts, rowid, ocr_text) VALUES ('delete', old.id, old.ocr_text); "
    "INSERT INTO ocr_fts(rowid, ocr_text) VALUES (new.id, new.ocr_text); END",
]


class StoreBusy(RuntimeError):
    """Another process is writing this index."""


class StoreError(RuntimeError):
    """An index this code cannot use (another format); the message says what to do."""


class StoreDamaged(StoreError):
    """A damaged index file; the message names it and the command that rebuilds the index."""


def _damaged(err: BaseException) -> bool:
    """Whether an SQLite error says the file is damaged (not merely busy)."""
    return isinstance(err, sqlite3.DatabaseError) and "locked" not in str(err) and "busy" not in str(err)


@dataclass(frozen=True)
class PhotoRecord:
    """One file's row of ``photos`` (``row``: its vector's row in the matrix, None without one)."""
    id: int
    path: str
    size: int
    mtime_ns: int
    hash: str | None
    status: str
    reason: str | None
    width: int | None
    height: int | None
    taken_at: str | None
    taken_from: str | None
    camera: str | None
    ocr_text: str | None
    ctime_ns: int | None
    row: int | None


@dataclass(frozen=True)
class NewRecord:
    """What indexing learned about one file, committed by ``PhotoStore.commit``."""
    path: str
    size: int
    mtime_ns: int
    status: str
    reason: str | None = None
    hash: str | None = None
    width: int | None = None
    height: int | None = None
    taken_at: str | None = None
    taken_from: str | None = None
    camera: str | None = None
    ctime_ns: int | None = None  # the inode change time: a change that keeps size and mtime still moves it


@dataclass(frozen=True)
class Snapshot:
    """The searchable photos at one generation: photo ids, paths, their matrix rows and details,
    sorted by path."""
    generation: int
    identity: dict | None
    ids: np.ndarray  # int64
    paths: list[str]
    rows: np.ndarray  # int64 rows of ``matrix``
    matrix: np.ndarray  # (committed rows, dim) float16, memory-mapped; rows never change
    matrix_name: str | None
    taken_at: list[str | None]  # ISO date-time taken (EXIF), else the file's mtime
    camera: list[str | None]
    files: list[tuple[int, int, str]]  # (size, mtime_ns, content hash) as indexed: what may be served

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def vectors(self) -> np.ndarray:
        """(len, dim) float16 backbone vectors of the photos, in ``paths`` order."""
        return np.asarray(self.matrix[self.rows]) if len(self.rows) else np.zeros((0, self.dim), np.float16)

    @property
    def dim(self) -> int:
        return int((self.identity or {}).get("dim", 0))


_RECORD_COLUMNS = [f.name for f in fields(PhotoRecord) if f.name != "row"]
_NEW_COLUMNS = [f.name for f in fields(NewRecord)]


def _prefix_range(root: str) -> tuple[str, str]:
    """[low, high) bounds of the paths inside folder ``root`` under SQLite's byte-wise text order."""
    prefix = root if root.endswith(os.sep) else root + os.sep
    return prefix, prefix[:-1] + chr(ord(os.sep) + 1)


def _reads(method: Callable) -> Callable:
    """A reading method whose SQLite errors of damage become StoreDamaged (the file, the repair)."""
    @functools.wraps(method)
    def read(self: "PhotoStore", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as err:
            if not _damaged(err):
                raise
            raise self.damage(DB_FILE, err) from None
    return read


def _file_crc(path: Path, start: int, stop: int, block: int = 1 << 22) -> int:
    """CRC-32 of the bytes ``start:stop`` of a file."""
    crc = 0
    with open(path, "rb") as f:
        f.seek(start)
        left = stop - start
        while left > 0:
            data = f.read(min(block, left))
            if not data:
                return -1  # shorter than that: not the bytes a checksum was taken of
            crc = zlib.crc32(data, crc)
            left -= len(data)
    return crc


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def retry_while_locked(statement: Callable[[], Any], timeout: float = BUSY_TIMEOUT_S, pause: float = 0.05) -> Any:
    """Run ``statement``, again while SQLite says the database is locked, for up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return statement()
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() >= deadline:
                raise
            time.sleep(pause)


class PhotoStore:
    """One photo index (a data folder). Every method may be called from any thread (one connection,
    guarded by a lock); writing methods need ``writing()`` held (one writer process at a time)."""

    def __init__(self, folder: str | os.PathLike, repair: bool = False):
        """Open (or create) the index in ``folder``. A damaged database file raises StoreDamaged, or
        with ``repair`` (a writer, which will index the photos again) is moved aside and started anew."""
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._lock_file = None
        self._verified: tuple[str | None, int] = (None, 0)  # (matrix file, rows) whose checksums were checked
        try:
            self._open()
        except sqlite3.DatabaseError as err:
            if not _damaged(err):
                raise
            if not repair:
                raise self.damage(DB_FILE, err) from None
            self._set_aside(DB_FILE, err)
            self._open()

    def damage(self, name: str, why: object) -> StoreDamaged:
        """The error a reader gives for a damaged file of the index: the file and the repair command."""
        return StoreDamaged(f"the photo index file {self.folder / name} is damaged ({why}); index its folders "
                            f"again to rebuild it: python index_folder.py FOLDER [FOLDER ...] --out {self.folder}")

    def _open(self) -> None:
        self._conn = sqlite3.connect(self.folder / DB_FILE, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                     check_same_thread=False)
        # Switching a file to WAL can answer "database is locked" at once, without the busy timeout,
        # while another connection is opening the same new index (the page's search and its
        # indexing thread do, together): so that one statement is retried.
        retry_while_locked(lambda: self._conn.execute("PRAGMA journal_mode=WAL"))
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        fmt = self._format()
        if fmt is None:  # a new index (a write: only then, so opening never waits for a writer)
            with self._transaction(immediate=True) as c:
                for statement in SCHEMA.split(";"):  # (executescript would commit on its own)
                    if statement.strip():
                        c.execute(statement)
                if c.execute("SELECT value FROM meta WHERE key='format'").fetchone() is None:
                    c.executemany("INSERT INTO meta VALUES (?, ?)", [("format", str(FORMAT)), ("generation", "0"),
                                                                     ("rows", "0"), ("matrix_seq", "0")])
            fmt = self._format()
        if fmt != str(FORMAT):
            raise StoreError(f"{self.folder} holds a photo index of format {fmt}; this version reads "
                             f"format {FORMAT}: index into another folder, or delete it to start again")
        self._ensure_schema()
        self._ensure_ocr_index()

    def _set_aside(self, name: str, why: object) -> Path:
        """Move the database (with its journal) and every vector and projection file into a folder
        ``damaged-<time>`` beside them, never deleting them; the index starts anew."""
        with self._lock:
            conn = getattr(self, "_conn", None)
            if conn is not None:
                conn.close()
                self._conn = None
            aside = self._damaged_folder()
            for path in sorted(self.folder.iterdir()):
                if path.is_file() and path.name != LOCK_FILE:
                    path.rename(aside / path.name)
            _fsync_dir(self.folder)
        log.warning("the photo index file %s is damaged (%s); moved it and the files beside it to %s; every "
                    "photo is indexed again", self.folder / name, why, aside)
        self._verified = (None, 0)
        return aside

    def _ensure_schema(self) -> None:
        """Add what indexes made before them lack: columns (``ADDED_COLUMNS``) and the vector checksums
        (their committed rows taken as they are, one block)."""
        columns = {r[1] for r in self._conn.execute("PRAGMA table_info(photos)")}
        has_blocks = self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'vector_blocks'").fetchone()
        if set(ADDED_COLUMNS) <= columns and has_blocks:
            return
        try:
            with self._transaction(immediate=True) as c:
                for column, declaration in ADDED_COLUMNS.items():
                    if column not in columns:
                        c.execute(f"ALTER TABLE photos ADD COLUMN {declaration}")
                if not has_blocks:
                    c.execute("CREATE TABLE IF NOT EXISTS vector_blocks "
                              "(start INTEGER PRIMARY KEY, stop INTEGER NOT NULL, crc INTEGER NOT NULL)")
                    meta = self._meta(c)
                    rows, name = int(meta["rows"]), meta.get("matrix")
                    if rows and name and (self.folder / name).is_file():
                        dim = int(json.loads(meta["identity"])["dim"])
                        c.execute("INSERT INTO vector_blocks VALUES (0, ?, ?)",
                                  (rows, _file_crc(self.folder / name, 0, rows * dim * 2)))
        except sqlite3.OperationalError as err:  # a read-only index: searched as it is
            log.warning("cannot update the photo index in %s to this version: %s", self.folder, err)

    def _ensure_ocr_index(self) -> None:
        """Add the OCR full-text index to an index made before it existed (filled from the records)."""
        if self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'ocr_fts'").fetchone():
            return
        try:
            with self._transaction(immediate=True) as c:
                if c.execute("SELECT 1 FROM sqlite_master WHERE name = 'ocr_fts'").fetchone() is None:
                    for statement in OCR_SCHEMA:
                        c.execute(statement)
                    c.execute("INSERT INTO ocr_fts(ocr_fts) VALUES ('rebuild')")
        except sqlite3.OperationalError as err:  # a read-only index: searched without its OCR text
            log.warning("cannot add the OCR text index to %s: %s", self.folder, err)

    def _format(self) -> str | None:
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
        except sqlite3.OperationalError:  # no meta table yet
            return None
        return row[0] if row else None

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        self._release()

    def __enter__(self) -> "PhotoStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self, immediate: bool = False) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    @staticmethod
    def _meta(cur: sqlite3.Cursor) -> dict[str, str]:
        return dict(cur.execute("SELECT key, value FROM meta").fetchall())

    # ---------------------------------------------------------------------------------------------
    # reading (any thread, any process, while a writer adds photos)

    @_reads
    def generation(self) -> int:
        """Incremented by every commit: a cheap check for whether a new snapshot is worth taking."""
        with self._lock:
            return int(self._conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])

    @_reads
    def identity(self) -> dict | None:
        """What produced the vectors (backbone, weights, preprocess, dim), None before any."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key='identity'").fetchone()
        return json.loads(row[0]) if row else None

    @_reads
    def checkpoint(self) -> str | None:
        """The checkpoint the last indexing run was started for (what ``--collection`` serves by default)."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key='checkpoint'").fetchone()
        return row[0] if row else None

    @_reads
    def roots(self) -> list[str]:
        """Every folder ever indexed into this store."""
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT path FROM roots ORDER BY path")]

    @staticmethod
    def _where(roots: Sequence[str | os.PathLike] | None, column: str = "p.path") -> tuple[str, list]:
        if roots is None:
            return "1", []
        if not roots:
            return "0", []
        parts, args = [], []
        for root in roots:
            low, high = _prefix_range(str(Path(root).expanduser().resolve()))
            parts.append(f"({column} >= ? AND {column} < ?)")
            args += [low, high]
        return "(" + " OR ".join(parts) + ")", args

    @_reads
    def records(self, roots: Sequence[str | os.PathLike] | None = None,
                statuses: Iterable[str] = STATUSES) -> list[PhotoRecord]:
        """Every file's record under ``roots`` (all when None) with one of ``statuses``, by path."""
        where, args = self._where(roots)
        statuses = list(statuses)
        cols = ", ".join(f"p.{c}" for c in _RECORD_COLUMNS)
        sql = (f"SELECT {cols}, v.row FROM photos p LEFT JOIN vectors v ON v.hash = p.hash "
               f"WHERE {where} AND p.status IN ({','.join('?' * len(statuses))}) ORDER BY p.path")
        with self._lock:
            return [PhotoRecord(*r) for r in self._conn.execute(sql, args + statuses)]

    @_reads
    def record(self, path: str | os.PathLike) -> PhotoRecord | None:
        """The record of one file (an absolute path, as indexed), None when it is not indexed."""
        cols = ", ".join(f"p.{c}" for c in _RECORD_COLUMNS)
        with self._lock:
            row = self._conn.execute(f"SELECT {cols}, v.row FROM photos p LEFT JOIN vectors v ON v.hash = p.hash "
                                     "WHERE p.path = ?", (str(path),)).fetchone()
        return PhotoRecord(*row) if row else None

    def ocr_matches(self, words: Sequence[str], limit: int = 1000) -> list[tuple[int, str]]:
        """(photo id, its OCR text) of the photos whose OCR text holds any of ``words`` (FTS5
        ``MATCH``), best bm25 first, at most ``limit``; [] without words or without the OCR index."""
        words = [w for w in words if w.strip()]
        if not words:
            return []
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        with self._lock:
            try:
                return self._conn.execute("SELECT rowid, ocr_text FROM ocr_fts WHERE ocr_fts MATCH ? "
                                          "ORDER BY bm25(ocr_fts) LIMIT ?", (match, limit)).fetchall()
            except sqlite3.OperationalError:  # no OCR index (a read-only index made before it)
                return []

    @_reads
    def ocr_pending(self, roots: Sequence[str | os.PathLike] | None = None) -> list[tuple[int, str]]:
        """(id, path) of the searchable photos under ``roots`` whose text has not been read yet."""
        where, args = self._where(roots)
        with self._lock:
            return self._conn.execute(f"SELECT p.id, p.path FROM photos p WHERE {where} AND p.status = 'ok' "
                                      "AND p.ocr_text IS NULL ORDER BY p.path", args).fetchall()

    def problems(self, roots: Sequence[str | os.PathLike] | None = None) -> list[PhotoRecord]:
        """Files that are not searchable, with their reasons: refused, undecodable or unreadable."""
        return self.records(roots, [s for s in STATUSES if s != "ok"])

    def _matrix(self, name: str | None, rows: int, dim: int) -> np.ndarray:
        if not name or rows == 0:
            return np.zeros((0, dim), dtype=np.float16)
        return np.memmap(self.folder / name, dtype=np.float16, mode="r", shape=(rows, dim))

    @_reads
    def snapshot(self, roots: Sequence[str | os.PathLike] | None = None) -> Snapshot:
        """The searchable photos (status ok, with a vector) under ``roots`` (all when None), consistent
        with one commit."""
        where, args = self._where(roots)
        for attempt in range(3):
            with self._transaction() as cur:
                meta = self._meta(cur)
                found = cur.execute(f"SELECT p.id, p.path, v.row, p.taken_at, p.camera, p.size, p.mtime_ns, "
                                    f"p.hash FROM photos p JOIN vectors v ON v.hash = p.hash "
                                    f"WHERE p.status = 'ok' AND {where} ORDER BY p.path", args).fetchall()
            identity = json.loads(meta["identity"]) if "identity" in meta else None
            try:
                matrix = self._matrix(meta.get("matrix"), int(meta["rows"]), int((identity or {}).get("dim", 0)))
                break
            except FileNotFoundError:  # compaction replaced the file between the two reads: read again
                if attempt == 2:
                    raise
        ids = np.array([r[0] for r in found], dtype=np.int64)
        rows = np.array([r[2] for r in found], dtype=np.int64)
        return Snapshot(int(meta["generation"]), identity, ids, [r[1] for r in found], rows, matrix,
                        meta.get("matrix"), [r[3] for r in found], [r[4] for r in found],
                        [(r[5], r[6], r[7]) for r in found])

    # ---------------------------------------------------------------------------------------------
    # writing: one process at a time

    def _release(self) -> None:
        if self._lock_file is not None:
            with _WRITERS_LOCK:
                _WRITERS.discard(str(self._lock_path))
            self._lock_file.close()  # closing the file releases the lock
            self._lock_file = None

    @contextlib.contextmanager
    def writing(self, identity: dict | None, checkpoint: str | None = None) -> Iterator["PhotoStore"]:
        """Hold the index for writing vectors of ``identity``: StoreBusy when another process holds it.

        The database is checked first (SQLite's ``quick_check``; a damaged one is moved aside and the
        index starts anew), then the vector file against the checksums of its commits (a damaged one
        is moved aside and every photo embedded again). Leftovers of a killed run are cleaned (matrix
        rows past the committed count, matrix files no commit names). Vectors of another identity
        are dropped, with one log line: every photo is embedded again with this model into a new
        matrix. ``identity`` None: records only (forgetting folders), the vectors as they are.
        """
        if self._lock_file is not None:
            raise StoreBusy(f"{self.folder} is already open for writing here")
        self._lock_path = (self.folder / LOCK_FILE).resolve()
        with _WRITERS_LOCK:  # POSIX record locks are per process: two writers of one process are told apart here
            if str(self._lock_path) in _WRITERS:
                raise StoreBusy(f"{self.folder} is being indexed by another thread of this process")
            _WRITERS.add(str(self._lock_path))
        lock = open(self._lock_path, "a+")
        if fcntl is not None:
            try:
                # A POSIX record lock (lockf), not flock: a fork does not inherit it, so decoding workers
                # left behind by a killed indexer do not hold it, and it goes with the process that took it.
                fcntl.lockf(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()
                with _WRITERS_LOCK:
                    _WRITERS.discard(str(self._lock_path))
                raise StoreBusy(f"another process is indexing into {self.folder}") from None
        self._lock_file = lock
        try:
            self._check_database()
            if identity is not None:
                self._recover(identity, checkpoint)
            yield self
        finally:
            self._release()

    def _check_database(self) -> None:
        """SQLite's own check of the database; a damaged one is moved aside and started anew."""
        try:
            with self._lock:
                result = self._conn.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as err:
            if not _damaged(err):
                raise
            result = str(err)
        if result != "ok":
            self._set_aside(DB_FILE, result)
            self._open()

    def _recover(self, identity: dict, checkpoint: str | None) -> None:
        with self._transaction(immediate=True) as cur:
            meta = self._meta(cur)
            old = json.loads(meta["identity"]) if "identity" in meta else None
            name, rows = meta.get("matrix"), int(meta["rows"])
            path = self.folder / name if name else None
            dim = int((old or {}).get("dim", 0))
            damage = None
            if path is not None and (not path.is_file() or path.stat().st_size < rows * dim * 2):
                damage = f"shorter than its {rows} committed rows"
            elif path is not None and old == identity:
                damage = self._bad_rows(cur, path, dim, 0, rows)
            if old != identity or name is None or damage:
                if damage:
                    aside = self._move_aside(path)
                    log.warning("the vector file %s is damaged (%s); moved it to %s; embedding every photo again",
                                path, damage, aside)
                elif old is not None and old != identity:
                    log.warning("the photo index in %s holds vectors of %s (%s); embedding every photo again "
                                "with %s (%s)", self.folder, old.get("backbone"), old.get("weights"),
                                identity.get("backbone"), identity.get("weights"))
                seq = int(meta["matrix_seq"]) + 1
                name = f"{MATRIX_PREFIX}{seq}{MATRIX_SUFFIX}"
                open(self.folder / name, "wb").close()
                _fsync_dir(self.folder)
                cur.execute("DELETE FROM vectors")
                cur.execute("DELETE FROM vector_blocks")
                self._set(cur, identity=json.dumps(identity, sort_keys=True), matrix=name, rows=0,
                          matrix_seq=seq, generation=int(meta["generation"]) + 1)
                rows = 0
            if checkpoint is not None:
                self._set(cur, checkpoint=checkpoint)
        self._verified = (name, rows)
        # Rows written by a run killed before its commit, and files of a killed reset or compaction.
        size = rows * identity["dim"] * 2
        if (self.folder / name).stat().st_size > size:
            log.info("dropping vectors of an interrupted run past the last commit (%d rows)", rows)
            os.truncate(self.folder / name, size)
        for stray in self.folder.glob(f"{MATRIX_PREFIX}*{MATRIX_SUFFIX}"):
            if stray.name != name:
                stray.unlink()

    def _damaged_folder(self) -> Path:
        """A new folder ``damaged-<time>-<unique>`` beside the index, for files set aside (never one that
        already holds files set aside earlier)."""
        return Path(tempfile.mkdtemp(prefix=f"damaged-{time.strftime('%Y%m%d-%H%M%S')}-", dir=self.folder))

    def _move_aside(self, path: Path) -> Path:
        aside = self._damaged_folder() / path.name
        path.rename(aside)
        return aside

    def _bad_rows(self, cur: sqlite3.Cursor, path: Path, dim: int, start: int, stop: int) -> str | None:
        """What in rows ``start:stop`` of the vector file no longer matches the checksums of its commits
        ("rows a-b ..."), None when they all do."""
        blocks = cur.execute("SELECT start, stop, crc FROM vector_blocks WHERE stop > ? AND start < ? ORDER BY start",
                             (start, stop)).fetchall()
        for a, b, crc in blocks:
            if _file_crc(path, a * dim * 2, b * dim * 2) != crc:
                return f"rows {a}-{b - 1} do not match the checksum of their commit"
        return None

    def checked_snapshot(self, roots: Sequence[str | os.PathLike] | None = None) -> Snapshot:
        """``snapshot``, its vector rows checked against their checksums (``verify_vectors``)."""
        snap = self.snapshot(roots)
        self.verify_vectors(snap)
        return snap

    @_reads
    def verify_vectors(self, snapshot: "Snapshot") -> None:
        """StoreDamaged, naming the vector file and the repair, when rows of a snapshot's matrix no
        longer match the checksums of their commits (rows checked before are not read again)."""
        name, rows = snapshot.matrix_name, len(snapshot.matrix)
        if name is None or not rows:
            return
        done = self._verified[1] if self._verified[0] == name else 0
        if done >= rows:
            return
        try:
            with self._lock:
                bad = self._bad_rows(self._conn.cursor(), self.folder / name, snapshot.dim, done, rows)
        except FileNotFoundError:  # compaction replaced the file since: the next snapshot reads the new one
            return
        if bad:
            raise self.damage(name, bad)
        self._verified = (name, rows)

    @staticmethod
    def _set(cur: sqlite3.Cursor, **values: object) -> None:
        cur.executemany("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        [(k, str(v)) for k, v in values.items()])

    def _check_writing(self) -> None:
        if self._lock_file is None:
            raise RuntimeError("open the store with writing() first")

    def stored_files(self, roots: Sequence[str | os.PathLike]) -> dict[str, tuple[int, int, int | None, str, bool]]:
        """path -> (size, mtime_ns, ctime_ns, status, has a vector) of every record under ``roots``."""
        where, args = self._where(roots)
        sql = (f"SELECT p.path, p.size, p.mtime_ns, p.ctime_ns, p.status, v.row IS NOT NULL FROM photos p "
               f"LEFT JOIN vectors v ON v.hash = p.hash WHERE {where}")
        with self._lock:
            return {r[0]: (r[1], r[2], r[3], r[4], bool(r[5])) for r in self._conn.execute(sql, args)}

    def known_hashes(self) -> set[str]:
        """Content hashes that have a vector (referenced or not): their files need no decoding."""
        with self._lock:
            return {r[0] for r in self._conn.execute("SELECT hash FROM vectors")}

    def _stored_hashes(self, hashes: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(hashes), 500):  # SQLite's limit on bound parameters
            part = hashes[start:start + 500]
            found |= {r[0] for r in self._conn.execute(
                f"SELECT hash FROM vectors WHERE hash IN ({','.join('?' * len(part))})", part)}
        return found

    def remove(self, paths: Sequence[str]) -> None:
        """Forget the records of ``paths`` (their vectors stay until compaction)."""
        self._check_writing()
        if not paths:
            return
        with self._transaction(immediate=True) as cur:
            cur.executemany("DELETE FROM photos WHERE path = ?", [(p,) for p in paths])
            self._set(cur, generation=int(self._meta(cur)["generation"]) + 1)

    def forget(self, roots: Sequence[str]) -> int:
        """Drop the folders ``roots`` (absolute) and the records of every file under them; how many
        records. Their vectors stay until compaction (a folder indexed again soon reuses them)."""
        self._check_writing()
        where, args = self._where(roots, column="path")
        with self._transaction(immediate=True) as cur:
            forgotten = cur.execute(f"DELETE FROM photos WHERE {where}", args).rowcount
            cur.executemany("DELETE FROM roots WHERE path = ?", [(str(r),) for r in roots])
            self._set(cur, generation=int(self._meta(cur)["generation"]) + 1)
        return forgotten

    def add_roots(self, roots: Sequence[str]) -> None:
        """Record folders being indexed (before their photos arrive, so a reader knows them)."""
        self._check_writing()
        with self._transaction(immediate=True) as cur:
            cur.executemany("INSERT INTO roots (path) VALUES (?) ON CONFLICT(path) DO NOTHING", [(r,) for r in roots])

    def mark_indexed(self, roots: Sequence[str]) -> None:
        """Record when folders were last indexed completely."""
        self._check_writing()
        when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with self._transaction(immediate=True) as cur:
            cur.executemany("UPDATE roots SET indexed_at = ? WHERE path = ?", [(when, r) for r in roots])

    def commit(self, records: Sequence[NewRecord], vectors: dict[str, np.ndarray]) -> None:
        """Record ``records`` and the vectors of content hashes not stored yet (hash -> (dim,) array).

        The new rows are appended to the matrix and fsynced first; the one transaction that adds
        the records, the hash -> row entries and the new row count commits after them. A disk
        without room for the rows refuses them before writing (NotEnoughSpaceError); a failed
        write raises a WriteError naming the file. Either way nothing is committed.
        """
        self._check_writing()
        if not records and not vectors:
            return
        with self._lock:
            meta = self._meta(self._conn.cursor())
            stored = self._stored_hashes(list(vectors))
            new = [h for h in vectors if h not in stored]
            rows = int(meta["rows"])
            dim = json.loads(meta["identity"])["dim"]
            path = self.folder / meta["matrix"]
            try:
                if new:
                    block = np.stack([np.asarray(vectors[h], dtype=np.float16).reshape(dim) for h in new])
                    # SQLite's records grow too, by far less than the vectors: twice covers both
                    check_free_space(self.folder, 2 * block.nbytes, f"{len(new)} photo vectors")
                    try:
                        with open(path, "r+b") as f:
                            f.seek(rows * dim * 2)
                            f.write(block.tobytes())
                            f.flush()
                            os.fsync(f.fileno())
                    except OSError as err:
                        raise write_error(path, err) from err
                with self._transaction(immediate=True) as cur:
                    cur.executemany("INSERT INTO vectors VALUES (?, ?)",
                                    [(h, rows + i) for i, h in enumerate(new)])
                    if new:  # the checksum of the rows, committed with them
                        cur.execute("INSERT INTO vector_blocks VALUES (?, ?, ?)",
                                    (rows, rows + len(new), zlib.crc32(block.tobytes())))
                    cols = ", ".join(_NEW_COLUMNS)
                    updates = ", ".join(f"{c} = excluded.{c}" for c in _NEW_COLUMNS if c != "path")
                    cur.executemany(
                        f"INSERT INTO photos ({cols}) VALUES ({', '.join('?' * len(_NEW_COLUMNS))}) "
                        f"ON CONFLICT(path) DO UPDATE SET {updates}, "
                        # OCR text read from other content is stale; from the same content it is kept
                        f"ocr_text = CASE WHEN photos.hash IS excluded.hash THEN photos.ocr_text END",
                        [tuple(getattr(r, c) for c in _NEW_COLUMNS) for r in records])
                    self._set(cur, rows=rows + len(new), generation=int(meta["generation"]) + 1)
            except BaseException:
                os.truncate(path, rows * dim * 2)  # the rows no commit references
                raise

    def set_ocr(self, texts: Sequence[tuple[int, str]]) -> None:
        """Record the text read in photos ((id, text); "" when none): one transaction, the full-text
        index updated with it."""
        self._check_writing()
        if not texts:
            return
        with self._transaction(immediate=True) as cur:
            cur.executemany("UPDATE photos SET ocr_text = ? WHERE id = ?", [(t, i) for i, t in texts])
            self._set(cur, generation=int(self._meta(cur)["generation"]) + 1)

    def garbage(self) -> tuple[int, int]:
        """(stored rows, rows no photo references)."""
        with self._lock:
            rows = int(self._conn.execute("SELECT value FROM meta WHERE key='rows'").fetchone()[0])
            used = self._conn.execute("SELECT COUNT(DISTINCT v.row) FROM vectors v "
                                      "JOIN photos p ON p.hash = v.hash").fetchone()[0]
        return rows, rows - used

    def compact(self, force: bool = False) -> bool:
        """Rewrite the matrix without unreferenced rows when they are most of it (or ``force``);
        True when it did. Readers holding the old file keep reading it."""
        self._check_writing()
        rows, garbage = self.garbage()
        if not force and (rows < COMPACT_MIN_ROWS or garbage <= rows * COMPACT_GARBAGE):
            return False
        with self._lock:
            meta = self._meta(self._conn.cursor())
            keep = self._conn.execute("SELECT DISTINCT v.hash, v.row FROM vectors v JOIN photos p ON p.hash = v.hash "
                                      "ORDER BY v.row").fetchall()
        dim = json.loads(meta["identity"])["dim"]
        old_name = meta["matrix"]
        old = self._matrix(old_name, rows, dim)
        seq = int(meta["matrix_seq"]) + 1
        name = f"{MATRIX_PREFIX}{seq}{MATRIX_SUFFIX}"
        src = np.array([r for _, r in keep], dtype=np.int64)
        crc = 0
        with open(self.folder / name, "wb") as f:
            for start in range(0, len(src), COPY_ROWS):
                data = np.ascontiguousarray(old[src[start:start + COPY_ROWS]]).tobytes()
                crc = zlib.crc32(data, crc)
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(self.folder)
        del old
        with self._transaction(immediate=True) as cur:
            kept = {h for h, _ in keep}
            gone = [(h,) for (h,) in cur.execute("SELECT hash FROM vectors").fetchall() if h not in kept]
            cur.executemany("DELETE FROM vectors WHERE hash = ?", gone)
            # Ascending old rows get rows 0, 1, ...: each new row is at most its old one, so no
            # update collides with a row not yet moved.
            cur.executemany("UPDATE vectors SET row = ? WHERE hash = ?", [(i, h) for i, (h, _) in enumerate(keep)])
            cur.execute("DELETE FROM vector_blocks")
            if keep:
                cur.execute("INSERT INTO vector_blocks VALUES (0, ?, ?)", (len(keep), crc))
            self._set(cur, matrix=name, rows=len(keep), matrix_seq=seq, generation=int(meta["generation"]) + 1)
        (self.folder / old_name).unlink(missing_ok=True)
        log.info("compacted the vector matrix: %d rows kept, %d unreferenced dropped", len(keep), rows - len(keep))
        return True

