"""Views of an image: the named crops and flips (``IMAGE_VIEWS``) whose pooled features an image
representation averages or stacks, and the helpers that pick them (``--views N``), cut them and
compare the views two preprocess records name.
"""
from __future__ import annotations

import torch

# Views of an image for feature caches with several vectors per image (``--views N`` takes the first
# N): crops and flips of the preprocessed S x S square, each resized to S x scale.
# name -> ((top, left, side) as fractions of the square, flipped, scale). Training samples one view
# per caption each step (a crop/flip augmentation in feature space); everywhere else an image's
# feature is the mean of its views (their effect on accuracy: docs/results.md).
IMAGE_VIEWS: dict[str, tuple[tuple[float, float, float], bool, float]] = {
    "full": ((0.0, 0.0, 1.0), False, 1.0),
    "full_flip": ((0.0, 0.0, 1.0), True, 1.0),
    "center80": ((0.5, 0.5, 0.8), False, 1.0),
    "top_left80": ((0.0, 0.0, 0.8), False, 1.0),
    "bottom_right80": ((1.0, 1.0, 0.8), False, 1.0),
    "center80_flip": ((0.5, 0.5, 0.8), True, 1.0),
    "full_large": ((0.0, 0.0, 1.0), False, 1.27),
}
ONE_VIEW = ("full",)


def first_views(n: int) -> tuple[str, ...]:
    """The first ``n`` entries of ``IMAGE_VIEWS`` (``--views N``)."""
    if not 1 <= n <= len(IMAGE_VIEWS):
        raise ValueError(f"--views must be between 1 and {len(IMAGE_VIEWS)}, got {n}")
    return tuple(IMAGE_VIEWS)[:n]


def views_of(preprocess: dict | None) -> tuple[str, ...]:
    """The views an image representation is the mean of, from a manifest's or checkpoint's preprocess."""
    return tuple((preprocess or {}).get("views", ONE_VIEW))


def views_mismatch(found: dict | None, expected: dict | None) -> str | None:
    """None when two preprocess records average the same views, else what differs (for messages)."""
    have, want = views_of(found), views_of(expected)
    if have == want:
        return None
    return f"it holds features of the views {list(have)}, the model was trained on {list(want)} (--views {len(want)})"


def make_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """uint8 (B,3,S,S) -> uint8 (B,3,S',S'): the named view of each image."""
    from torchvision.transforms.v2 import functional as TF

    (top, left, side), flip, scale = IMAGE_VIEWS[view]
    size = x.shape[-1]
    if (top, left, side, scale) != (0.0, 0.0, 1.0, 1.0):
        crop = round(size * side)
        out = round(size * scale / 2) * 2
        x = TF.resized_crop(x, round((size - crop) * top), round((size - crop) * left), crop, crop,
                            [out, out], antialias=True)
    return TF.horizontal_flip(x) if flip else x
