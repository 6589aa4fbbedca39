"""The backbone registry: the tables every image and text entry registers in, and nothing more.

An entry is a function building the backbone (``build(weights, models_dir)``) and a test of whether
its weights can be had without a download (``present(models_dir)``, what ``auto`` asks). The entries
live in ``image.py`` and ``text.py`` and register themselves when imported; a family (``openclip.py``)
registers a prefix whose names carry their model and weights (``open_clip:ARCH:WEIGHTS``).
``factory.py`` builds backbones from these tables. This module imports no other module of the package.

Also here, as everything an entry needs: ``BackboneUnavailable``, ``resolve_device``, ``file_digest``,
``local_file`` (the local models folder lookup) and ``BUILD_LOCK``.
"""
from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from crossmodal import atomic_io

# Held while a backbone is built and while decoding workers are forked. Building a network initialises
# its layers at random, holding torch's random-generator lock; a worker forked meanwhile (the photo
# indexer forks from a background thread) inherits that lock held and hangs at its first seeding.
BUILD_LOCK = threading.RLock()


class BackboneUnavailable(RuntimeError):
    """A named backbone whose weights cannot be found; the message says how to get them."""


# Weights files are read once per process for their identity; they do not change while it runs.
file_digest = functools.lru_cache(maxsize=None)(atomic_io.file_digest)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``auto`` (or None): the GPU where there is one, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def local_file(models_dir: str | os.PathLike | None, name: str) -> Path | None:
    """Where ``name`` would be in the local models folder (None without one)."""
    return Path(models_dir) / name if models_dir else None


@dataclass(frozen=True)
class Entry:
    build: Callable[..., Any]  # (weights, models_dir) -> ImageBackbone or TextBackbone
    present: Callable[[Path | None], bool]  # weights available without a download, given the models folder


IMAGE_BACKBONES: dict[str, Entry] = {}
TEXT_BACKBONES: dict[str, Entry] = {}


@dataclass(frozen=True)
class Family:
    """Backbones named ``FAMILY:...`` (the rest of the name says which model and weights), built by
    ``image(name, weights, models_dir)`` and ``text(name, weights, models_dir)``."""
    image: Callable[..., Any]
    text: Callable[..., Any]


FAMILIES: dict[str, Family] = {}


def family_of(name: str) -> Family | None:
    """The family a backbone name belongs to (``open_clip:ViT-B-32:...``), or None for a plain entry."""
    prefix, sep, _ = name.partition(":")
    return FAMILIES.get(prefix) if sep else None


def register_family(prefix: str, image: Callable[..., Any], text: Callable[..., Any]) -> None:
    """Names ``prefix:...`` are built by ``image`` and ``text``."""
    FAMILIES[prefix] = Family(image, text)


def register_image(name: str, present: Callable[[Path | None], bool]) -> Callable:
    """Decorator: ``build`` becomes the image entry ``name``."""
    def wrap(build: Callable) -> Callable:
        IMAGE_BACKBONES[name] = Entry(build, present)
        return build
    return wrap


def register_text(name: str, present: Callable[[Path | None], bool]) -> Callable:
    """Decorator: ``build`` becomes the text entry ``name``."""
    def wrap(build: Callable) -> Callable:
        TEXT_BACKBONES[name] = Entry(build, present)
        return build
    return wrap
