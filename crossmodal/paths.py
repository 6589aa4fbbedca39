"""Where every generated file goes, from one optional ``--work-dir``.

With no work dir the original layout is kept (features under ``data_dir``, ``checkpoints/`` and
``results/`` under ``project_dir``); with one, everything goes under it with the same sub-folder names.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMAGE_FEATURES = "image_embeddings"
TEXT_FEATURES = "text_embeddings"
AUG_TEXT_FEATURES = "aug_text_embeddings"
KEYWORDS_FILE = "keywords_augmented.txt"  # sentence_augment.py output
ORIGINAL_KEYWORDS_FILE = "flickr30k_keywords_augmented.txt"  # its name in the original layout
CHECKPOINTS = "checkpoints"
RESULTS = "results"
COLLECTIONS = "collections"  # indexed own-photo folders, one sub-folder each
SPLITS = "splits"
BEST_CHECKPOINT = "best.pt"


@dataclass(frozen=True)
class Layout:
    work_dir: Path | None = None  # everything generated goes here when set
    data_dir: Path = Path("data")  # without a work dir: features, keywords, collections
    project_dir: Path = Path(".")  # without a work dir: checkpoints/ and results/
    splits_dir: Path = Path("data") / SPLITS  # without a work dir: the split lists

    @property
    def _base(self) -> Path:
        return Path(self.work_dir) if self.work_dir else Path(self.data_dir)

    @property
    def image_features(self) -> Path:
        return self._base / IMAGE_FEATURES

    @property
    def text_features(self) -> Path:
        return self._base / TEXT_FEATURES

    @property
    def aug_text_features(self) -> Path:
        return self._base / AUG_TEXT_FEATURES

    @property
    def keywords_file(self) -> Path:
        return self._base / (KEYWORDS_FILE if self.work_dir else ORIGINAL_KEYWORDS_FILE)

    @property
    def checkpoints(self) -> Path:
        return (Path(self.work_dir) if self.work_dir else Path(self.project_dir)) / CHECKPOINTS

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / BEST_CHECKPOINT

    @property
    def results(self) -> Path:
        return (Path(self.work_dir) if self.work_dir else Path(self.project_dir)) / RESULTS

    @property
    def collections(self) -> Path:
        return self._base / COLLECTIONS

    def default_splits(self) -> Path:
        """Split lists used when --splits is not given (a seeded split is written here if absent)."""
        return Path(self.work_dir) / SPLITS if self.work_dir else Path(self.splits_dir)
