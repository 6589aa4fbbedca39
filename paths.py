"""Where every generated file goes, from one optional ``--work-dir``.

With no work dir the original layout is kept (features under ``data/``, ``checkpoints/`` at the
top); with one, everything goes under it with the same sub-folder names.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import config


@dataclass(frozen=True)
class Layout:
    work_dir: Path | None = None

    @property
    def _base(self) -> Path:
        return Path(self.work_dir) if self.work_dir else config.DATA_DIR

    @property
    def image_features(self) -> Path:
        return self._base / config.IMAGE_EMB_DIRNAME

    @property
    def text_features(self) -> Path:
        return self._base / config.TEXT_EMB_DIRNAME

    @property
    def aug_text_features(self) -> Path:
        return self._base / config.AUG_TEXT_EMB_DIRNAME

    @property
    def keywords_file(self) -> Path:
        if self.work_dir:
            return Path(self.work_dir) / config.KEYWORDS_FILENAME
        return config.DATA_DIR / "flickr30k_keywords_augmented.txt"  # the original design's name

    @property
    def checkpoints(self) -> Path:
        return Path(self.work_dir) / config.CHECKPOINTS_DIRNAME if self.work_dir else config.ROOT / "checkpoints"

    @property
    def results(self) -> Path:
        return Path(self.work_dir) / config.RESULTS_DIRNAME if self.work_dir else config.ROOT / "results"

    @property
    def collections(self) -> Path:
        """Indexed own-photo folders (index_folder.py): one sub-folder per indexed folder."""
        return Path(self.work_dir) / "collections" if self.work_dir else config.DATA_DIR / "collections"

    def default_splits(self) -> Path:
        """Split lists used when --splits is not given (a seeded split is written here if absent)."""
        return Path(self.work_dir) / "splits" if self.work_dir else config.SPLITS_DIR
