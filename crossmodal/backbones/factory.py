"""Building backbones by name: ``create_image_backbone``, ``create_text_backbone`` and the choice
``auto`` makes (``resolve_names``), over the registry's tables (``registry.py``), filled by the entries
of ``image.py`` and ``text.py`` and the ``open_clip:ARCH:WEIGHTS`` family of ``openclip.py``."""
from __future__ import annotations

import logging
import os

# (importing image and text registers their entries)
from crossmodal.backbones.image import ImageBackbone, combine
from crossmodal.backbones.openclip import FAMILY  # noqa: F401 - importing it registers the open_clip family
from crossmodal.backbones.registry import BUILD_LOCK, FAMILIES, IMAGE_BACKBONES, TEXT_BACKBONES, family_of
from crossmodal.backbones.text import TextBackbone

log = logging.getLogger("crossmodal.backbones")

ORIGINAL_PAIR = ("resnet18", "bert-base-uncased")
OFFLINE_PAIR = ("efficientnet_lite0", "minilm")


def resolve_names(image: str = "auto", text: str = "auto",
                  models_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """Resolve ``auto``: the original pair where its weights are present, else the offline pair."""
    if image != "auto" and text != "auto":
        return image, text
    image_ok = IMAGE_BACKBONES[ORIGINAL_PAIR[0]].present(models_dir)
    text_ok = TEXT_BACKBONES[ORIGINAL_PAIR[1]].present(models_dir)
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
    if "+" in name and family_of(name) is None:
        parts = name.split("+")
        if weights:
            raise ValueError(f"--image-weights names one file; {name!r} combines {len(parts)} backbones "
                             "(put their weights where each entry looks for them)")
        if len(set(parts)) != len(parts) or "auto" in parts:
            raise ValueError(f"image backbone {name!r}: combine distinct named entries, e.g. "
                             "efficientnet_lite0+efficientnet_lite2")
        return combine([create_image_backbone(part, models_dir=models_dir) for part in parts])
    return _build("image", IMAGE_BACKBONES, name, weights, models_dir)


def create_text_backbone(name: str = "auto", weights: str | os.PathLike | None = None,
                         models_dir: str | os.PathLike | None = None) -> TextBackbone:
    """A registry entry; ``weights`` and ``models_dir`` as for ``create_image_backbone``."""
    if name == "auto":
        name = resolve_names("auto", "auto", models_dir)[1]
    return _build("text", TEXT_BACKBONES, name, weights, models_dir)


def _build(kind: str, entries: dict, name: str, weights: str | os.PathLike | None,
           models_dir: str | os.PathLike | None) -> ImageBackbone | TextBackbone:
    """The ``kind`` ("image" or "text") backbone ``name``: a family's (``open_clip:...``) or an entry's,
    built under ``BUILD_LOCK``."""
    family = family_of(name)
    if family is None and name not in entries:
        raise ValueError(f"unknown {kind} backbone {name!r}; choose from auto, {', '.join(entries)}, "
                         f"or {' / '.join(f'{f}:...' for f in FAMILIES)}")
    with BUILD_LOCK:
        if family is not None:
            return getattr(family, kind)(name, weights, models_dir)
        return entries[name].build(weights, models_dir)
