"""The trainable part: two small projection heads mapping frozen backbone features to one space.

The backbones are frozen and their features cached, so the model is only these heads; the
contrastive temperature lives in the loss (``loss.InfoNCELoss``), not here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import config


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
        dropout: float = config.HEAD_DROPOUT,  # dropout inside the MLP branch (the only regulariser besides weight decay)
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)  # backbones differ wildly in feature scale
        self.skip = nn.Linear(in_dim, out_dim)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # cached features are float16; compute in the head's own dtype
        x = self.norm(x.to(self.skip.weight.dtype))
        return F.normalize(self.skip(x) + self.mlp(x), dim=-1)


class RetrievalModel(nn.Module):
    """An image head and a text head into a shared ``embed_dim``-d, unit-norm space."""

    def __init__(
        self,
        image_dim: int,  # image backbone feature size
        text_dim: int,  # text backbone feature size
        embed_dim: int = config.EMBED_DIM,  # shared embedding size
        hidden_dim: int = config.HEAD_HIDDEN_DIM,  # MLP width of both heads
        dropout: float = config.HEAD_DROPOUT,  # dropout of both heads
    ) -> None:
        super().__init__()
        self._config = {"image_dim": int(image_dim), "text_dim": int(text_dim), "embed_dim": int(embed_dim),
                        "hidden_dim": int(hidden_dim), "dropout": float(dropout)}
        self.image_head = ProjectionHead(image_dim, embed_dim, hidden_dim, dropout)
        self.text_head = ProjectionHead(text_dim, embed_dim, hidden_dim, dropout)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """(n, image_dim) float16/float32 features -> (n, embed_dim) unit vectors."""
        return self.image_head(x)

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        """(n, text_dim) float16/float32 features -> (n, embed_dim) unit vectors."""
        return self.text_head(x)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(image_features), self.encode_text(text_features)

    def config_dict(self) -> dict:
        """Constructor kwargs: ``RetrievalModel(**model.config_dict())`` rebuilds this architecture."""
        return dict(self._config)
