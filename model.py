"""The trainable part: two small projection heads mapping frozen backbone features to one space.

The backbones are frozen and their features cached, so the model is these heads, and optionally the
text encoder's last layers (``text_top``, a ``crossmodal.backbones.TextTop``) trained with them on
cached token states; the contrastive temperature lives in the loss (``loss.InfoNCELoss``), not here.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from crossmodal.backbones import TextTop
from crossmodal.zero_shot import IdentityHeads, is_zero_shot

import config


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout``, with the CPU mask made from random bytes (``p`` rounded to a multiple of 1/256).

    On a CPU, ``F.dropout`` draws one Bernoulli number per element, a large share of a training
    step of these heads; eight mask bytes per 64-bit integer draw make the same dropout several
    times faster (docs/performance.md). The mask is then made in x's dtype by arithmetic (byte
    values are exact in every float dtype): a boolean mask would cost a cast in every product,
    forward and backward.
    Other devices keep ``F.dropout``.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0:
        return F.dropout(x, p, training)
    n = x.numel()
    bits = torch.randint(-2**63, 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64).view(torch.uint8)[:n]
    drop = max(1, min(255, round(p * 256)))  # byte values below this are dropped
    keep = bits.view_as(x).to(x.dtype).sub_(drop - 1).clamp_(0, 1)  # 1 where byte >= drop, else 0
    return x * keep * (256.0 / (256 - drop))


class Dropout(nn.Module):
    """``nn.Dropout`` through ``dropout`` above (no parameters: checkpoints are unchanged)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ProjectionHead(nn.Module):
    """Residual MLP head: LayerNorm, then a linear skip plus a GELU MLP branch, L2-normalised.

    The linear skip keeps a good linear map easy to learn (cached features are already strong);
    the MLP branch adds capacity on top of it.
    """

    def __init__(
        self,
        in_dim: int,  # backbone feature size
        out_dim: int = config.EMBED_DIM,  # shared embedding size
        hidden_dim: int = config.HEAD_HIDDEN_DIM,  # width of the MLP branch
        dropout: float = config.HEAD_DROPOUT,  # inside the MLP branch (the only regulariser besides weight decay)
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)  # backbones differ wildly in feature scale
        self.skip = nn.Linear(in_dim, out_dim)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            Dropout(dropout),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # cached features are float16; compute in the head's own dtype
        x = self.norm(x.to(self.skip.weight.dtype))
        return F.normalize(self.skip(x) + self.mlp(x), dim=-1)


class FoldedHead(nn.Module):
    """A ``ProjectionHead``'s eval-mode function in fewer operations, for serving one query at a time.

    The LayerNorm's scale and shift are folded into the two layers that read its output, which
    become one matrix (skip and MLP input side by side), and the MLP's output bias moves into the
    skip's, whose sum with the MLP branch the last product then makes. Outputs equal the head's to
    float32 rounding (~1e-7), in fewer operations per query. A snapshot: later changes to the head's weights
    do not reach it (a search engine's index is a snapshot of them too).
    """

    def __init__(self, head: ProjectionHead) -> None:
        super().__init__()
        with torch.no_grad():
            w_in = torch.cat([head.skip.weight, head.mlp[0].weight]).float()  # (out + hidden, in)
            b_in = torch.cat([head.skip.bias + head.mlp[-1].bias, head.mlp[0].bias]).float()
            self.register_buffer("w_in_t", (w_in * head.norm.weight.float()).t().contiguous())
            self.register_buffer("b_in", b_in + w_in @ head.norm.bias.float())
            self.register_buffer("w_out_t", head.mlp[-1].weight.float().t().contiguous())
        self.eps = head.norm.eps
        self.out_dim = head.skip.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, in_dim) -> (n, out_dim) unit vectors
        x = F.layer_norm(x.float(), x.shape[-1:], eps=self.eps)
        z = torch.addmm(self.b_in, x, self.w_in_t)  # [skip | MLP input]
        return F.normalize(torch.addmm(z[:, : self.out_dim], F.gelu(z[:, self.out_dim :]), self.w_out_t), dim=-1)


class RetrievalModel(nn.Module):
    """An image head and a text head into a shared ``embed_dim``-d, unit-norm space."""

    def __init__(
        self,
        image_dim: int,  # image backbone feature size
        text_dim: int,  # text backbone feature size
        embed_dim: int = config.EMBED_DIM,  # shared embedding size
        hidden_dim: int = config.HEAD_HIDDEN_DIM,  # MLP width of both heads
        dropout: float = config.HEAD_DROPOUT,  # dropout of both heads
        text_top: TextTop | dict | None = None,  # trained last text layers, or their config_dict()
    ) -> None:
        super().__init__()
        self._config = {"image_dim": int(image_dim), "text_dim": int(text_dim), "embed_dim": int(embed_dim),
                        "hidden_dim": int(hidden_dim), "dropout": float(dropout)}
        self.image_head = ProjectionHead(image_dim, embed_dim, hidden_dim, dropout)
        self.text_head = ProjectionHead(text_dim, embed_dim, hidden_dim, dropout)
        self.text_top = TextTop.from_config(text_top) if isinstance(text_top, dict) else text_top
        if self.text_top is not None:  # absent otherwise: checkpoints without a top keep their config
            self._config["text_top"] = self.text_top.config_dict()

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """(n, image_dim) float16/float32 features -> (n, embed_dim) unit vectors."""
        return self.image_head(x)

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        """(n, text_dim) float16/float32 features -> (n, embed_dim) unit vectors."""
        return self.text_head(x)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(image_features), self.encode_text(text_features)

    def folded_text_encoder(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``encode_text`` through folded snapshots of the text head(s): what search serves."""
        return folded_text_encoder(self)

    def config_dict(self) -> dict:
        """Constructor kwargs: ``RetrievalModel(**model.config_dict())`` rebuilds this architecture."""
        return dict(self._config)


class EnsembleModel(nn.Module):
    """Several independently trained ``RetrievalModel``s used as one.

    Each member's unit vectors are concatenated and scaled by 1/sqrt(n): the result is a unit
    vector again, and a dot product is the members' mean cosine similarity, so search, caches and
    the app need no change. (Flickr8k dev, Lite0+Lite2 views: one model 354.2 rsum, two 359.6.)
    """

    def __init__(self, members: list[dict]) -> None:  # members: each RetrievalModel's config_dict()
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if any(m.get("text_top") for m in members):
            raise ValueError("an ensemble of models with trained text tops cannot share one text encoder")
        self.members = nn.ModuleList(RetrievalModel(**_head_config(m)) for m in members)
        self.scale = len(members) ** -0.5

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.encode_image(x) for m in self.members], dim=-1) * self.scale

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.encode_text(x) for m in self.members], dim=-1) * self.scale

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(image_features), self.encode_text(text_features)

    def folded_text_encoder(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``encode_text`` through folded snapshots of the text head(s): what search serves."""
        return folded_text_encoder(self)

    def config_dict(self) -> dict:
        """``build_model(model.config_dict())`` rebuilds it; ``embed_dim`` is the concatenated size."""
        first = self.members[0].config_dict()
        return {"members": [m.config_dict() for m in self.members], "image_dim": first["image_dim"],
                "text_dim": first["text_dim"], "embed_dim": sum(m.config_dict()["embed_dim"] for m in self.members)}


def folded_text_encoder(model: RetrievalModel | EnsembleModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model.encode_text`` through ``FoldedHead`` snapshots of its text head(s): what search serves."""
    if isinstance(model, EnsembleModel):
        heads, scale = [FoldedHead(m.text_head) for m in model.members], model.scale
        return lambda x: torch.cat([h(x) for h in heads], dim=-1) * scale
    return FoldedHead(model.text_head)


def _head_config(model_config: dict) -> dict:
    """``RetrievalModel`` kwargs from a checkpoint's config; those written before the image-pooling
    option was removed record ``"pool": None``, and one trained with a pool is refused."""
    cfg = dict(model_config)
    pool = cfg.pop("pool", None)
    if pool is not None:
        raise ValueError(f"this checkpoint was trained with pool={pool!r}, an option since removed; retrain it")
    return cfg


def build_model(model_config: dict) -> RetrievalModel | EnsembleModel | IdentityHeads:
    """The model a checkpoint's ``model_config`` describes (an ensemble when it lists members; the
    identity heads of a zero-shot model, ``crossmodal.zero_shot``)."""
    if is_zero_shot(model_config):
        return IdentityHeads(**model_config)
    if "members" in model_config:
        return EnsembleModel(model_config["members"])
    return RetrievalModel(**_head_config(model_config))


class CheckpointError(ValueError):
    """A file that is not a checkpoint of tensors and plain data; the message names it."""


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's contents, unpickled with ``weights_only=True``: tensors and plain data only, so
    a file from anywhere (a shared collection's manifest names one) cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}; train one with `python run_train.py`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        why = next((line.strip().split(". ")[0] for line in str(err).splitlines() if "Unsupported global" in line),
                   str(err).splitlines()[0] if str(err) else type(err).__name__)
        raise CheckpointError(f"{path} is not a checkpoint of tensors and plain data; refused to load it ({why})") \
            from err
    if not isinstance(state, dict) or "model_config" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not a checkpoint written by run_train.py (no model_config/model)")
    return state


def load_checkpoint(path: str | Path) -> tuple[RetrievalModel | EnsembleModel | IdentityHeads, dict]:
    """The trained heads (eval mode) and the checkpoint's contents."""
    state = read_checkpoint(path)
    model = build_model(state["model_config"])
    model.load_state_dict(state["model"])
    return model.eval(), state
