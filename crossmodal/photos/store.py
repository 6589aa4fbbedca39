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
import json
import logging
import os
import sqlite3
import threading
import time
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
    ocr_text TEXT
);
CREATE INDEX IF NOT EXISTS photos_hash ON photos (hash);
CREATE TABLE IF NOT EXISTS vectors (hash TEXT PRIMARY KEY, row INTEGER NOT NULL UNIQUE);
"""
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

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.folder / DB_FILE, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                     check_same_thread=False)
        # Switching a file to WAL can answer "database is locked" at once, without the busy timeout,
        # while another connection is opening the same new index (the page's search and its
        # indexing thread do, together): so that one statement is retried.
        retry_while_locked(lambda: self._conn.execute("PRAGMA journal_mode=WAL"))
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        self._lock_file = None
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
        self._ensure_ocr_index()

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

    def generation(self) -> int:
        """Incremented by every commit: a cheap check for whether a new snapshot is worth taking."""
        with self._lock:
            return int(self._conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])

    def identity(self) -> dict | None:
        """What produced the vectors (backbone, weights, preprocess, dim), None before any."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key='identity'").fetchone()
        return json.loads(row[0]) if row else None

    def checkpoint(self) -> str | None:
        """The checkpoint the last indexing run was started for (what ``--collection`` serves by default)."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key='checkpoint'").fetchone()
        return row[0] if row else None

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

    def snapshot(self, roots: Sequence[str | os.PathLike] | None = None) -> Snapshot:
        """The searchable photos (status ok, with a vector) under ``roots`` (all when None), consistent
        with one commit."""
        where, args = self._where(roots)
        for attempt in range(3):
            with self._transaction() as cur:
                meta = self._meta(cur)
                found = cur.execute(f"SELECT p.id, p.path, v.row, p.taken_at, p.camera FROM photos p "
                                    f"JOIN vectors v ON v.hash = p.hash WHERE p.status = 'ok' AND {where} "
                                    f"ORDER BY p.path", args).fetchall()
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
                        meta.get("matrix"), [r[3] for r in found], [r[4] for r in found])

    # ---------------------------------------------------------------------------------------------
    # writing: one process at a time

    def _release(self) -> None:
        if self._lock_file is not None:
            with _WRITERS_LOCK:
                _WRITERS.discard(str(self._lock_path))
            self._lock_file.close()  # closing the file releases the lock
            self._lock_file = None

    @contextlib.contextmanager
    def writing(self, identity: dict, checkpoint: str | None = None) -> Iterator["PhotoStore"]:
        """Hold the index for writing vectors of ``identity``: StoreBusy when another process holds it.

        Leftovers of a killed run are cleaned first (matrix rows past the committed count, matrix
        files no commit names). Vectors of another identity are dropped, with one log line: every
        photo is embedded again with this model into a new matrix.
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
            self._recover(identity, checkpoint)
            yield self
        finally:
            self._release()

    def _recover(self, identity: dict, checkpoint: str | None) -> None:
        with self._transaction(immediate=True) as cur:
            meta = self._meta(cur)
            old = json.loads(meta["identity"]) if "identity" in meta else None
            name, rows = meta.get("matrix"), int(meta["rows"])
            path = self.folder / name if name else None
            expected = rows * int((old or {}).get("dim", 0)) * 2
            damaged = path is not None and (not path.is_file() or path.stat().st_size < expected)
            if old != identity or name is None or damaged:
                if damaged:
                    log.warning("the vector file %s is shorter than its %d committed rows; embedding every "
                                "photo again", path, rows)
                elif old is not None and old != identity:
                    log.warning("the photo index in %s holds vectors of %s (%s); embedding every photo again "
                                "with %s (%s)", self.folder, old.get("backbone"), old.get("weights"),
                                identity.get("backbone"), identity.get("weights"))
                seq = int(meta["matrix_seq"]) + 1
                name = f"{MATRIX_PREFIX}{seq}{MATRIX_SUFFIX}"
                open(self.folder / name, "wb").close()
                _fsync_dir(self.folder)
                cur.execute("DELETE FROM vectors")
                self._set(cur, identity=json.dumps(identity, sort_keys=True), matrix=name, rows=0,
                          matrix_seq=seq, generation=int(meta["generation"]) + 1)
                rows = 0
            if checkpoint is not None:
                self._set(cur, checkpoint=checkpoint)
        # Rows written by a run killed before its commit, and files of a killed reset or compaction.
        size = rows * identity["dim"] * 2
        if (self.folder / name).stat().st_size > size:
            log.info("dropping vectors of an interrupted run past the last commit (%d rows)", rows)
            os.truncate(self.folder / name, size)
        for stray in self.folder.glob(f"{MATRIX_PREFIX}*{MATRIX_SUFFIX}"):
            if stray.name != name:
                stray.unlink()

    @staticmethod
    def _set(cur: sqlite3.Cursor, **values: object) -> None:
        cur.executemany("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        [(k, str(v)) for k, v in values.items()])

    def _check_writing(self) -> None:
        if self._lock_file is None:
            raise RuntimeError("open the store with writing() first")

    def stored_files(self, roots: Sequence[str | os.PathLike]) -> dict[str, tuple[int, int, str, bool]]:
        """path -> (size, mtime_ns, status, has a vector) of every record under ``roots``."""
        where, args = self._where(roots)
        sql = (f"SELECT p.path, p.size, p.mtime_ns, p.status, v.row IS NOT NULL FROM photos p "
               f"LEFT JOIN vectors v ON v.hash = p.hash WHERE {where}")
        with self._lock:
            return {r[0]: (r[1], r[2], r[3], bool(r[4])) for r in self._conn.execute(sql, args)}

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
        with open(self.folder / name, "wb") as f:
            for start in range(0, len(src), COPY_ROWS):
                f.write(np.ascontiguousarray(old[src[start:start + COPY_ROWS]]).tobytes())
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
            self._set(cur, matrix=name, rows=len(keep), matrix_seq=seq, generation=int(meta["generation"]) + 1)
        (self.folder / old_name).unlink(missing_ok=True)
        log.info("compacted the vector matrix: %d rows kept, %d unreferenced dropped", len(keep), rows - len(keep))
        return True

