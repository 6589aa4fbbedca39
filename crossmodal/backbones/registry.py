"""The backbone registry: the tables the image and text entries register in, the choice ``auto`` makes,
and the two factories every stage builds its encoders through (``create_image_backbone``,
``create_text_backbone``).

Also what the entries share: ``BackboneUnavailable``, ``resolve_device``, ``file_digest`` and the local
models folder lookup. The entries themselves live in ``image.py`` and ``text.py``, which import this
module; it imports them only when a factory needs one (``"a+b"`` combinations).
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from crossmodal import atomic_io

if TYPE_CHECKING:
    from crossmodal.backbones.image import ImageBackbone
    from crossmodal.backbones.text import TextBackbone

log = logging.getLogger("crossmodal.backbones")  # the package's logger, as before the split into modules


class BackboneUnavailable(RuntimeError):
    """A named backbone whose weights cannot be found; the message says how to get them."""


# --------------------------------------------------------------------------------------------------
# helpers

# Weights files are read once per process for their identity; they do not change while it runs.
file_digest = functools.lru_cache(maxsize=None)(atomic_io.file_digest)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _local(models_dir: str | os.PathLike | None, name: str) -> Path | None:
    return Path(models_dir) / name if models_dir else None


# --------------------------------------------------------------------------------------------------
# the registry

IMAGE_BACKBONES: dict[str, Callable[..., ImageBackbone]] = {}
TEXT_BACKBONES: dict[str, Callable[..., "TextBackbone"]] = {}
# Whether an entry's weights can be had without a download, given the local models folder (used by "auto").
_IMAGE_PRESENT: dict[str, Callable[[Path | None], bool]] = {}
_TEXT_PRESENT: dict[str, Callable[[Path | None], bool]] = {}


def register_image(name: str, present: Callable[[Path | None], bool]):
    def wrap(fn):
        IMAGE_BACKBONES[name], _IMAGE_PRESENT[name] = fn, present
        return fn
    return wrap


def register_text(name: str, present: Callable[[Path | None], bool]):
    def wrap(fn):
        TEXT_BACKBONES[name], _TEXT_PRESENT[name] = fn, present
        return fn
    return wrap


# --------------------------------------------------------------------------------------------------
# factory

ORIGINAL_PAIR = ("resnet18", "bert-base-uncased")
OFFLINE_PAIR = ("efficientnet_lite0", "minilm")


def resolve_names(image: str = "auto", text: str = "auto",
                  models_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """Resolve ``auto``: the original pair where its weights are present, else the offline pair."""
    if image != "auto" and text != "auto":
        return image, text
    image_ok = _IMAGE_PRESENT[ORIGINAL_PAIR[0]](models_dir)
    text_ok = _TEXT_PRESENT[ORIGINAL_PAIR[1]](models_dir)
    if image_ok and text_ok:
        pair, why = ORIGINAL_PAIR, "their weights are present locally"
    else:
        missing = [n for n, ok in ((ORIGINAL_PAIR[0], image_ok), (ORIGINAL_PAIR[1], text_ok)) if not ok]
        pair = OFFLINE_PAIR
        why = (f"no local weights for {', '.join(missing)} (see models/README.md); "
               "using the offline pip-packaged models")
    chosen = (pair[0] if image == "auto" else image, pair[1] if text == "auto" else text)
    log.info("backbones auto -> image %s, text %s: %s", chosen[0], chosen[1], why)
    return chosen


def create_image_backbone(name: str = "auto", weights: str | os.PathLike | None = None,
                          models_dir: str | os.PathLike | None = None) -> ImageBackbone:
    """A registry entry, or ``"a+b"``: several entries on the same views, features concatenated.

    ``weights`` names this entry's own file; else it looks in ``models_dir`` (the local models
    folder), then in its pip package or download cache.
    """
    if name == "auto":
        name = resolve_names("auto", "auto", models_dir)[0]
    if "+" in name:
        parts = name.split("+")
        if weights:
            raise ValueError(f"--image-weights names one file; {name!r} combines {len(parts)} backbones "
                             "(put their weights where each entry looks for them)")
        if len(set(parts)) != len(parts) or "auto" in parts:
            raise ValueError(f"image backbone {name!r}: combine distinct named entries, e.g. "
                             "efficientnet_lite0+efficientnet_lite2")
        from crossmodal.backbones.image import _combine  # here: image.py imports this module

        return _combine([create_image_backbone(part, models_dir=models_dir) for part in parts])
    if name not in IMAGE_BACKBONES:
        raise ValueError(f"unknown image backbone {name!r}; choose from auto, {', '.join(IMAGE_BACKBONES)}")
    return IMAGE_BACKBONES[name](weights, models_dir)


def create_text_backbone(name: str = "auto", weights: str | os.PathLike | None = None,
                         models_dir: str | os.PathLike | None = None) -> TextBackbone:
    """A registry entry; ``weights`` and ``models_dir`` as for ``create_image_backbone``."""
    if name == "auto":
        name = resolve_names("auto", "auto", models_dir)[1]
    if name not in TEXT_BACKBONES:
        raise ValueError(f"unknown text backbone {name!r}; choose from auto, {', '.join(TEXT_BACKBONES)}")
    return TEXT_BACKBONES[name](weights, models_dir)
