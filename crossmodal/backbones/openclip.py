"""The ``open_clip`` family: the image and text towers of one open_clip model (CLIP, SigLIP, ...),
named ``open_clip:ARCH:WEIGHTS``.

WEIGHTS is an open_clip pretrained tag (``open_clip:ViT-B-32:laion2b_s34b_b79k``) or a local weights
file or folder (``open_clip:ViT-B-32:/models/vit-b-32.bin``; a relative name is looked up in the models
folder too). A tag's file is read from the Hugging Face cache, else downloaded by open_clip; offline
with neither, ``BackboneUnavailable`` says in one line which file to fetch and how.

Each tower keeps open_clip's own preprocessing (input size, resize mode, interpolation, mean and std)
and tokenizer, and gives the model's embedding (after its projection), so the two towers' vectors
share one space: what zero-shot search (``crossmodal.zero_shot``) uses as is, and what heads can be
trained on like any backbone's features. The registry's ``FAMILIES`` table maps the ``open_clip``
prefix to the builders here.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from crossmodal.backbones.image import ImageBackbone, Normalize, _PooledBackbone
from crossmodal.backbones.registry import (
    BUILD_LOCK,
    BackboneUnavailable,
    file_digest,
    register_family,
    resolve_device,
)
from crossmodal.backbones.text import TEXT_BATCH_SIZE, TextBackbone

FAMILY = "open_clip"
# A folder of weights (a Hugging Face snapshot of an open_clip model): the file names open_clip publishes
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors",
                "pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz")


@dataclass(frozen=True)
class OpenClipName:
    arch: str
    weights: str  # a pretrained tag, or a local path (absolute once resolved)

    @property
    def name(self) -> str:
        return f"{FAMILY}:{self.arch}:{self.weights}"


def parse_name(name: str) -> OpenClipName:
    """``open_clip:ARCH:WEIGHTS`` -> its parts (ValueError naming the expected form)."""
    family, _, rest = name.partition(":")
    arch, _, weights = rest.partition(":")
    if family != FAMILY or not arch or not weights:
        raise ValueError(f"{name!r}: an open_clip model is named open_clip:ARCH:WEIGHTS, e.g. "
                         "open_clip:ViT-B-32:laion2b_s34b_b79k or open_clip:ViT-B-32:/models/vit-b-32.bin")
    import open_clip

    if arch not in open_clip.list_models():
        raise ValueError(f"{name!r}: open_clip has no architecture {arch!r} (open_clip.list_models() lists them, "
                         "e.g. ViT-B-32, ViT-B-16, ViT-L-14, ViT-B-16-SigLIP)")
    return OpenClipName(arch, weights)


def _is_path(weights: str) -> bool:
    return os.sep in weights or weights.startswith(("~", ".")) or weights.endswith(WEIGHT_SUFFIXES)


def _local_weights(spec: OpenClipName, models_dir: str | os.PathLike | None) -> Path | None:
    """The local file the WEIGHTS part names (a file, a folder holding one, or a name in the models
    folder); None when it names a pretrained tag."""
    candidates = [Path(spec.weights).expanduser()]
    if models_dir and not Path(spec.weights).is_absolute():
        candidates.append(Path(models_dir) / spec.weights)
    for path in candidates:
        if path.is_dir():
            found = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
            if not found:
                raise BackboneUnavailable(f"{spec.name}: the folder {path} holds none of {', '.join(WEIGHT_FILES)}")
            return found[0].resolve()
        if path.is_file():
            return path.resolve()
    if _is_path(spec.weights):
        raise BackboneUnavailable(f"{spec.name}: weights file not found: {candidates[0]}")
    return None


def _fetch_hint(spec: OpenClipName, repo: str, filename: str) -> str:
    return (f"on a networked machine run `python -c \"import open_clip; open_clip.create_model('{spec.arch}', "
            f"pretrained='{spec.weights}'); open_clip.get_tokenizer('{spec.arch}')\"` (it fills the Hugging Face "
            f"cache), or download {filename} of "
            f"https://huggingface.co/{repo} (`hf download {repo} {filename}`) and use "
            f"open_clip:{spec.arch}:/path/to/{filename}")


def _tag_weights(spec: OpenClipName) -> Path:
    """A pretrained tag's file: from the Hugging Face cache, else downloaded by open_clip."""
    import open_clip
    from huggingface_hub import constants, try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.weights)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(spec.arch)) or "none"
        raise BackboneUnavailable(f"{spec.name}: {spec.weights!r} is neither a local file nor an open_clip pretrained "
                                  f"tag of {spec.arch} (its tags: {tags})")
    # hf_hub is "org/model/" (open_clip's default file name) or "org/model/file"
    repo, filename = os.path.split(cfg.get("hf_hub", ""))
    filename = filename or "open_clip_pytorch_model.bin"
    if repo:
        names = [filename.replace(".bin", ".safetensors").replace("pytorch_model", "model"), filename]
        for name in names:
            cached = try_to_load_from_cache(repo, name)
            if isinstance(cached, str):
                return Path(cached)
    if constants.HF_HUB_OFFLINE:
        raise BackboneUnavailable(f"{spec.name}: the weights are not in the Hugging Face cache and downloads are off "
                                  f"(HF_HUB_OFFLINE=1); {_fetch_hint(spec, repo, filename)}")
    host = urllib.parse.urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:  # without a name server the hub client retries each file for tens of seconds before failing
        socket.getaddrinfo(host, 443)
    except OSError:
        raise BackboneUnavailable(f"{spec.name}: the weights are not in the Hugging Face cache and {host} cannot be "
                                  f"reached; {_fetch_hint(spec, repo, filename)}") from None
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    try:
        hub_log.setLevel(logging.CRITICAL)  # it logs every retry of a failed download: the one line below says it
        path = open_clip.pretrained.download_pretrained(cfg)
    except Exception as err:  # noqa: BLE001 - offline, proxy, missing file: all mean unavailable
        raise BackboneUnavailable(f"{spec.name}: the weights could not be downloaded ({type(err).__name__}); "
                                  f"{_fetch_hint(spec, repo, filename)}") from None
    finally:
        hub_log.setLevel(level)
    if not path:
        raise BackboneUnavailable(f"{spec.name}: open_clip gives no download for this tag")
    return Path(path)


def weights_file(name: str, models_dir: str | os.PathLike | None = None) -> tuple[OpenClipName, Path]:
    """The parsed name, with WEIGHTS resolved to an absolute local path, and the weights file."""
    spec = parse_name(name)
    local = _local_weights(spec, models_dir)
    if local is not None:  # named by its absolute path: the same file from any working folder
        return OpenClipName(spec.arch, str(local)), local
    return spec, _tag_weights(spec)


def weights_identity(path: Path) -> str:
    """What feature caches and checkpoints record as these weights."""
    return f"{path.name}:{file_digest(str(path))}"


def _preprocess_cfg(spec: OpenClipName, model: nn.Module, path: Path) -> dict:
    """open_clip's preprocessing for these weights: the architecture's, with a tag's own (or, for a
    Hugging Face snapshot folder, its ``open_clip_config.json``'s) values over it."""
    import json

    import open_clip

    cfg = dict(model.visual.preprocess_cfg)
    if not Path(spec.weights).is_absolute():  # a pretrained tag
        cfg.update({k: v for k, v in open_clip.get_pretrained_cfg(spec.arch, spec.weights).items() if k in cfg})
    snapshot = path.parent / "open_clip_config.json"
    if snapshot.is_file():
        cfg.update(json.loads(snapshot.read_text(encoding="utf-8")).get("preprocess_cfg", {}))
    return cfg


def load_model(name: str, models_dir: str | os.PathLike | None = None
               ) -> tuple[OpenClipName, nn.Module, Path, dict]:
    """(resolved name, the open_clip model in eval mode with its weights, the weights file, its
    preprocessing config)."""
    import open_clip

    spec, path = weights_file(name, models_dir)
    tag = {} if Path(spec.weights).is_absolute() else open_clip.get_pretrained_cfg(spec.arch, spec.weights)
    with BUILD_LOCK:  # (registry.BUILD_LOCK: the random initialisation must not meet a fork)
        # OpenAI's weights were trained with QuickGELU: their tag says so, the architecture's config may not
        model = open_clip.create_model(spec.arch, pretrained=None, force_quick_gelu=bool(tag.get("quick_gelu")))
    try:
        open_clip.load_checkpoint(model, str(path), weights_only=True)
    except Exception as err:  # noqa: BLE001 - a file of another architecture, or not a weights file
        raise BackboneUnavailable(f"{spec.name}: {path} does not load into {spec.arch} "
                                  f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    return spec, model.eval(), path, _preprocess_cfg(spec, model, path)


def logit_scale(model: nn.Module) -> float:
    """The model's trained inverse temperature."""
    return float(model.logit_scale.detach().exp().reshape(-1)[0])


class _ClipImageTower(_PooledBackbone):
    """uint8 images -> the image tower's embedding; a view of another size is resized to the tower's input."""

    def __init__(self, visual: nn.Module, normalize: Normalize, size: int, interpolation: str):
        super().__init__(normalize)
        self.visual = visual
        self.size = size
        self.interpolation = interpolation

    def pool_view(self, x: torch.Tensor, square: int) -> torch.Tensor:
        if x.shape[-1] != self.size:
            from torchvision.transforms.v2 import functional as TF

            x = TF.resize(x, [self.size, self.size], interpolation=_interpolation(self.interpolation), antialias=True)
        return self.visual(self.normalize(x)).float()


def _interpolation(name: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)


def _image_backbone(spec: OpenClipName, model: nn.Module, path: Path, cfg: dict) -> ImageBackbone:
    size = cfg["size"]
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean, std = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    interpolation = str(cfg.get("interpolation", "bicubic"))
    tower = _ClipImageTower(model.visual, Normalize(mean, std), size, interpolation).eval()
    dim = getattr(model.visual, "output_dim", None) or _embed_dim(model)
    return ImageBackbone(spec.name, dim, tower, size, weights_identity(path), mean, std,
                         interpolation=interpolation, resize_mode=str(cfg.get("resize_mode", "shortest")))


def _embed_dim(model: nn.Module) -> int:
    """The image tower's output size, from one forward (towers that do not state it)."""
    with torch.no_grad():
        size = model.visual.image_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        return int(model.visual(torch.zeros(1, 3, *size)).shape[-1])


@dataclass
class OpenClipTextBackbone(TextBackbone):
    """An open_clip text tower with its own tokenizer (fixed context length, no attention mask: the
    tower masks causally and pools at the end token); ``encode`` and queries give its embedding."""

    logit_scale: float = 1.0  # the model's inverse temperature (zero-shot scores use it)

    @property
    def preprocess(self) -> dict:
        return {"tokenizer": type(self.tokenizer).__name__, "context_length": self.max_length, "pooling": self.pooling}

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        # every text is padded to the context length; the non-padding tokens (id 0 pads) order batches
        return [int(n) for n in (self.tokenizer(list(texts)) != 0).sum(1)] if len(texts) else []

    def tokenize_one(self, text: str) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokenizer([text])}

    def forward_pooled(self, batch: dict) -> torch.Tensor:
        ids = batch["input_ids"]
        if _trims_padding(self.model):
            return _causal_text_forward(self.model, ids[:, : int((ids != 0).sum(1).max())]).float()
        return self.model.encode_text(ids).float()

    def trunk_states(self, batch: dict, top_layers: int) -> torch.Tensor:
        raise ValueError(f"{self.name}: the text top of an open_clip tower cannot be trained (use --text-top-layers 0)")

    def set_top(self, top) -> None:  # noqa: ANN001 - a TextTop
        raise ValueError(f"{self.name}: an open_clip text tower takes no trained text top")

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = TEXT_BATCH_SIZE,
               device: str | torch.device | None = None,
               progress: Callable[[int], object] | None = None) -> np.ndarray:
        device = resolve_device(device)
        self.model.to(device).eval()
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            ids = self.tokenizer(list(texts[start:start + batch_size])).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out[start:start + len(ids)] = self.forward_pooled({"input_ids": ids}).cpu().numpy()
            if progress:
                progress(len(ids))
        return out


def _trims_padding(model: nn.Module) -> bool:
    """Whether the text tower masks causally and pools at the end token (CLIP's): then the padding after
    the longest text's end token cannot change the output, and is not computed."""
    return (type(model).__name__ == "CLIP" and getattr(model, "attn_mask", None) is not None
            and getattr(model, "text_pool_type", None) == "argmax")


def _causal_text_forward(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """open_clip ``CLIP.encode_text`` on ``ids`` cut after the longest text's end token (positions and
    the causal mask cut to match): the same output as on the full context, in a fraction of the work."""
    from open_clip.transformer import text_global_pool

    n = ids.shape[1]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(ids).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = text_global_pool(x, ids, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def _text_backbone(spec: OpenClipName, model: nn.Module, path: Path) -> OpenClipTextBackbone:
    import open_clip

    try:
        tokenizer = open_clip.get_tokenizer(spec.arch)
    except Exception as err:  # noqa: BLE001 - a Hugging Face tokenizer not in the cache, offline
        raise BackboneUnavailable(
            f"{spec.name}: its tokenizer could not be loaded ({type(err).__name__}); run it once on a networked "
            f"machine (`python -c \"import open_clip; open_clip.get_tokenizer('{spec.arch}')\"`) to fill the "
            "Hugging Face cache") from None
    model.visual = nn.Identity()  # the text backbone keeps the text tower only
    with torch.no_grad():
        dim = int(model.encode_text(tokenizer(["a"])).shape[-1])
    return OpenClipTextBackbone(spec.name, dim, model, tokenizer, "end token", weights_identity(path),
                                max_length=int(getattr(tokenizer, "context_length", 77)),
                                logit_scale=logit_scale(model))


def open_clip_image(name: str, weights: str | os.PathLike | None = None,
                    models_dir: str | os.PathLike | None = None) -> ImageBackbone:
    """The image tower of ``open_clip:ARCH:WEIGHTS``."""
    _no_separate_weights(name, weights)
    spec, model, path, cfg = load_model(name, models_dir)
    return _image_backbone(spec, model, path, cfg)


def open_clip_text(name: str, weights: str | os.PathLike | None = None,
                   models_dir: str | os.PathLike | None = None) -> OpenClipTextBackbone:
    """The text tower of ``open_clip:ARCH:WEIGHTS``."""
    _no_separate_weights(name, weights)
    spec, model, path, _ = load_model(name, models_dir)
    return _text_backbone(spec, model, path)


def load_towers(name: str, models_dir: str | os.PathLike | None = None
                ) -> tuple[ImageBackbone, OpenClipTextBackbone]:
    """Both towers of ``open_clip:ARCH:WEIGHTS``, from one load of the model."""
    spec, model, path, cfg = load_model(name, models_dir)
    image = _image_backbone(spec, model, path, cfg)
    return image, _text_backbone(spec, model, path)


def canonical_name(name: str, models_dir: str | os.PathLike | None = None) -> str:
    """``name`` as backbones record it: a local WEIGHTS as its absolute file path (nothing is loaded)."""
    spec = parse_name(name)
    local = _local_weights(spec, models_dir)
    return OpenClipName(spec.arch, str(local)).name if local is not None else spec.name


def _no_separate_weights(name: str, weights: str | os.PathLike | None) -> None:
    if weights:
        raise ValueError(f"{name}: an open_clip model names its weights in its name (open_clip:ARCH:WEIGHTS); "
                         "drop --image-weights/--text-weights")


def slug(name: str) -> str:
    """A file-name-safe short form of a model name (for folders of its own)."""
    import hashlib

    spec = parse_name(name)
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{spec.arch}-{Path(spec.weights).name}")[:60]
    return f"{readable}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


register_family(FAMILY, image=open_clip_image, text=open_clip_text)
