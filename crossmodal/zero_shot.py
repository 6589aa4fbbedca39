"""Zero-shot search: an open_clip model's two towers in their own embedding space, with no training.

A zero-shot model is a checkpoint like a trained one, so the page, the command line, the photo index,
evaluation and calibration serve it unchanged: its heads are ``IdentityHeads`` (each side's vector
only L2-normalised), its temperature the model's own, its backbones the two towers of
``open_clip:ARCH:WEIGHTS``. ``zero_shot_checkpoint`` writes it once per model into a folder of its
own, keeps it while the weights are the same (with the match-confidence curves ``evaluate.py
--calibrate`` stored in it), and writes it afresh when the weights file changed.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from crossmodal.atomic_io import atomic_save_with
from crossmodal.backbones import openclip

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "model.pt"


class IdentityHeads(nn.Module):
    """The heads of a zero-shot model: both towers already embed into one space, so each side's vector
    is only made a unit vector. Same interface as ``model.RetrievalModel`` (no parameters)."""

    text_top = None  # the text tower is served as published

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int, zero_shot: str = "") -> None:
        super().__init__()
        if not image_dim == text_dim == embed_dim:
            raise ValueError(f"zero-shot towers must embed into one space: image {image_dim}-d, text {text_dim}-d")
        self._config = {"zero_shot": zero_shot, "image_dim": int(image_dim), "text_dim": int(text_dim),
                        "embed_dim": int(embed_dim)}

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=-1)

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=-1)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(image_features), self.encode_text(text_features)

    def folded_text_encoder(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.encode_text

    def config_dict(self) -> dict:
        return dict(self._config)


def is_zero_shot(model_config: dict) -> bool:
    """Whether a checkpoint's ``model_config`` describes a zero-shot model."""
    return bool(model_config.get("zero_shot"))


def model_folder(name: str, base: str | os.PathLike, models_dir: str | os.PathLike | None = None) -> Path:
    """The folder of a zero-shot model's own files under ``base``: its checkpoint, and what
    ``evaluate.py --model`` extracts and writes."""
    return Path(base) / "zero_shot" / openclip.slug(openclip.canonical_name(name, models_dir))


def zero_shot_state(name: str, models_dir: str | os.PathLike | None = None) -> dict:
    """The checkpoint contents of the zero-shot model ``name`` (loads the model once)."""
    image, text = openclip.load_towers(name, models_dir)
    backbones = {
        "image": {"backbone": image.name, "weights": image.weights, "preprocess": image.preprocess, "dim": image.dim},
        "text": {"backbone": text.name, "weights": text.weights, "preprocess": text.preprocess, "dim": text.dim},
    }
    return {"model_config": IdentityHeads(image.dim, text.dim, image.dim, image.name).config_dict(), "model": {},
            "temperature": 1.0 / text.logit_scale, "epoch": 0, "backbones": backbones}


def zero_shot_checkpoint(name: str, base: str | os.PathLike, models_dir: str | os.PathLike | None = None) -> Path:
    """The checkpoint serving ``name`` zero-shot, in its folder under ``base``: written when absent or
    when the model's weights file is no longer the one it records (BackboneUnavailable when the
    weights cannot be had, ValueError for a malformed name)."""
    path = model_folder(name, base, models_dir) / CHECKPOINT_NAME
    _, weights = openclip.weights_file(name, models_dir)
    if path.is_file():
        try:
            recorded = torch.load(path, map_location="cpu", weights_only=True)["backbones"]["image"]["weights"]
        except Exception as err:  # noqa: BLE001 - damaged: written afresh below
            log.warning("%s cannot be read (%s); writing it again", path, type(err).__name__)
            recorded = None
        if recorded == openclip.weights_identity(weights):
            return path
        if recorded is not None:
            log.info("the weights of %s changed since %s was written: writing it again (without its curves)",
                     name, path)
    state = zero_shot_state(name, models_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_with(path, lambda f: torch.save(state, f))
    log.info("zero-shot model %s: %s", name, path)
    return path
