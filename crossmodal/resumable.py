"""Resumable long jobs: the work is a fixed grid of units, saved in chunks of whole units.

A job (feature extraction, keyword samples) computes its rows in units that are the same in every
run, so a resumed run computes exactly what an uninterrupted one computes and the result is
byte-identical. Finished units are saved together as one chunk every ``FLUSH_SECONDS`` or every
``max_rows`` rows, whichever comes first, so a kill loses at most about that much work. Chunk
boundaries vary between runs (they depend on time); units do not.

The job's folder holds ``plan.json`` (the settings that fix the grid: a folder made with other
settings is discarded, never mixed) and per chunk ``chunk_<first>_<stop>.json`` naming units
first..stop-1, optionally with a ``.npy`` array beside it. Each file is written atomically, the
json last: it marks the chunk finished.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from crossmodal.atomic_io import atomic_save_npy, atomic_write_json

log = logging.getLogger(__name__)

FLUSH_SECONDS = 30.0  # a kill loses at most about this much work (plus one unit)
FLUSH_ENV = "CROSSMODAL_FLUSH_SECONDS"  # overrides FLUSH_SECONDS (tests); not part of any plan
PLAN_FILE = "plan.json"
_CHUNK = re.compile(r"^chunk_(\d+)_(\d+)\.json$")


def flush_interval(seconds: float | None = None) -> float:
    """``seconds`` if given, else ``$CROSSMODAL_FLUSH_SECONDS``, else ``FLUSH_SECONDS``."""
    if seconds is not None:
        return float(seconds)
    value = os.environ.get(FLUSH_ENV)
    if not value:
        return FLUSH_SECONDS
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{FLUSH_ENV} must be a number of seconds, got {value!r}") from None


@dataclass(frozen=True)
class Chunk:
    """Units ``start``..``stop - 1`` of a job, saved together."""

    folder: Path
    start: int
    stop: int

    @property
    def units(self) -> range:
        return range(self.start, self.stop)

    @property
    def stem(self) -> Path:
        return self.folder / f"chunk_{self.start:07d}_{self.stop:07d}"

    def meta(self) -> dict:
        return json.loads(self.stem.with_suffix(".json").read_text(encoding="utf-8"))

    def array(self, mmap: bool = False) -> np.ndarray:
        return np.load(self.stem.with_suffix(".npy"), mmap_mode="r" if mmap else None)


class WorkFolder:
    """The folder of an unfinished job: its plan and the chunks finished so far.

    Opening it with another ``plan`` (or ``force``) discards what is there and starts over.
    """

    def __init__(self, folder: str | os.PathLike, plan: dict, force: bool = False):
        self.folder = Path(folder)
        plan_path = self.folder / PLAN_FILE
        if self.folder.exists():
            try:
                old = json.loads(plan_path.read_text(encoding="utf-8")) if plan_path.is_file() else None
            except ValueError:
                old = None
            if force or old != plan:
                log.info("discarding an unfinished run in %s (%s)", self.folder,
                         "--force" if force else "made with other settings")
                shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(plan_path, plan)

    def chunks(self) -> list[Chunk]:
        """The finished chunks, in unit order."""
        found = []
        for p in self.folder.iterdir():
            m = _CHUNK.match(p.name)
            if m:
                found.append(Chunk(self.folder, int(m.group(1)), int(m.group(2))))
        return sorted(found, key=lambda c: (c.start, c.stop))

    def done_units(self) -> set[int]:
        return {u for c in self.chunks() for u in c.units}

    def save(self, start: int, stop: int, meta: dict, array: np.ndarray | None = None) -> Chunk:
        chunk = Chunk(self.folder, start, stop)
        if array is not None:
            atomic_save_npy(chunk.stem.with_suffix(".npy"), array)
        atomic_write_json(chunk.stem.with_suffix(".json"), {**meta, "units": [start, stop]})  # last: finished
        return chunk

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class ChunkWriter:
    """Collects finished units and hands each run of them to ``save(start, stop, items)`` once
    ``seconds`` have passed since the last save or ``max_rows`` rows are waiting (a unit that does
    not follow the previous one starts a new chunk). Call ``flush`` at the end."""

    def __init__(self, save: Callable[[int, int, list], Any], max_rows: int, seconds: float):
        self._save = save
        self.max_rows = max(1, max_rows)
        self.seconds = seconds
        self._items: list = []
        self._start = self._next = 0
        self._rows = 0
        self._since = time.monotonic()

    def add(self, unit: int, item: Any, rows: int = 1) -> None:
        if self._items and unit != self._next:
            self.flush()
        if not self._items:
            self._start = unit
        self._items.append(item)
        self._next = unit + 1
        self._rows += rows
        if self._rows >= self.max_rows or time.monotonic() - self._since >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if self._items:
            self._save(self._start, self._next, self._items)
        self._items, self._rows = [], 0
        self._since = time.monotonic()
