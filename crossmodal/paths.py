"""Where every generated file goes, from one optional ``--work-dir``.

With no work dir the original layout is kept (features under ``data_dir``, ``checkpoints/`` and
``results/`` under ``project_dir``); with one, everything goes under it with the same sub-folder names.
The photo index of your own folders is the exception: without a work dir it lives in the per-user
data folder (``user_data_dir()``), so every checkout and every run shares it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_FEATURES = "image_embeddings"
TEXT_FEATURES = "text_embeddings"
AUG_TEXT_FEATURES = "aug_text_embeddings"
KEYWORDS_FILE = "keywords_augmented.txt"  # sentence_augment.py output
ORIGINAL_KEYWORDS_FILE = "flickr30k_keywords_augmented.txt"  # its name in the original layout
CHECKPOINTS = "checkpoints"
RESULTS = "results"
PHOTO_INDEX = "photo_index"  # the index of your own photo folders (crossmodal.photos)
APP_NAME = "crossmodal"  # the per-user data folder's name
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
    def photo_index(self) -> Path:
        """The photo index: WORK_DIR/photo_index, else in the per-user data folder."""
        return (Path(self.work_dir) if self.work_dir else user_data_dir()) / PHOTO_INDEX

    @property
    def models_base(self) -> Path:
        """Where zero-shot models keep their folders (``crossmodal.zero_shot``): WORK_DIR, else the
        per-user data folder, beside the photo index."""
        return Path(self.work_dir) if self.work_dir else user_data_dir()

    def default_splits(self) -> Path:
        """Split lists used when --splits is not given (a seeded split is written here if absent)."""
        return Path(self.work_dir) / SPLITS if self.work_dir else Path(self.splits_dir)


def user_data_dir() -> Path:
    """The per-user data folder: $XDG_DATA_HOME/crossmodal, else ~/.local/share/crossmodal (the XDG
    base directory rules: a relative XDG_DATA_HOME is ignored)."""
    base = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / APP_NAME
