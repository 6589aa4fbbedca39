"""The model that ships with the project: a trained checkpoint cut down to what search needs.

``export_checkpoint`` keeps the heads (and a trained text top), the backbones' identities, the
temperature, the text querybanks and the match-confidence curves, all tensors in float16; it drops the optimizer,
scheduler, random state and the image bank (used only to rank captions for a photo, which search
never does). The result loads with ``torch.load(weights_only=True)`` like any checkpoint.

``shipped_checkpoint`` finds it under ``MODELS_DIR/pretrained/``; scripts that need a checkpoint
use it when none was trained (``cli.resolve_checkpoint``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from crossmodal.atomic_io import atomic_save_with
from crossmodal.querybank import sample_bank

log = logging.getLogger(__name__)

PRETRAINED_SUBDIR = "pretrained"
CHECKPOINT_NAME = "model.pt"
MAX_BYTES = 25 * 1024 * 1024  # what a checkout can carry
KEPT = ("model_config", "temperature", "epoch", "metrics", "metrics_querybank", "train_config", "backbones",
        "captions_file", "image_ids_sha256", "calibration")


def _half(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.to(torch.float16) if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: _half(v) for k, v in obj.items()}
    return obj


def export_checkpoint(src: dict, dst: str | os.PathLike, bank_size: int | None = None,
                      max_bytes: int = MAX_BYTES) -> int:
    """Write the search-only float16 copy of the checkpoint contents ``src`` to ``dst``; with
    ``bank_size`` each text querybank keeps that many rows (a seeded subset). Returns the file size;
    refuses (ValueError) a result over ``max_bytes``."""
    state = {k: src[k] for k in KEPT if k in src}
    state["model"] = _half(src["model"])
    if src.get("querybank"):
        bank = {k: v for k, v in src["querybank"].items() if k != "image"}
        if bank_size:
            bank = {k: sample_bank(v, bank_size) if torch.is_tensor(v) else v for k, v in bank.items()}
        state["querybank"] = _half(bank)
    dst = Path(dst)
    atomic_save_with(dst, lambda f: torch.save(state, f))
    size = dst.stat().st_size
    if size > max_bytes:
        dst.unlink()
        raise ValueError(f"{dst} would be {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit; "
                         "export it with a smaller querybank")
    return size


def shipped_checkpoint(models_dir: str | os.PathLike) -> Path | None:
    """The shipped model's checkpoint under ``models_dir``, or None where it is absent."""
    path = Path(models_dir) / PRETRAINED_SUBDIR / CHECKPOINT_NAME
    return path if path.is_file() else None
