"""Symmetric InfoNCE (CLIP loss) with a learnable, clamped temperature.

The temperature is a parameter of the loss, not of the model, so the optimiser must be given
``loss.parameters()`` too (train.py does). Across processes (``torchrun``), ``gather_rows`` gives
every process the whole global batch's embeddings, so each row meets every other process's negatives.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import config


class _ClampInward(torch.autograd.Function):
    """``x.clamp(lo, hi)`` whose gradient is not lost at the bounds.

    Plain ``clamp`` has zero gradient at and past a bound, so a log-temperature that one optimiser
    step pushed onto or past it would stay there for good. Here the gradient passes wherever a
    descent step (``x -= lr * grad``) moves ``x`` back inside; only the outward push is dropped, so
    the parameter does not drift further out either.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        # at/below lo keep only grad < 0 (descent raises x); at/above hi only grad > 0
        keep = ((x > ctx.lo) | (grad < 0)) & ((x < ctx.hi) | (grad > 0))
        return grad * keep, None, None


class InfoNCELoss(nn.Module):
    """Mean of the text->image and image->text cross-entropies over a batch of paired rows.

    Row i of ``image_emb`` and row i of ``text_emb`` are a positive pair; all other rows are
    negatives, except (with ``image_ids``) rows showing the same image, which are not negatives.
    """

    def __init__(
        self,
        init_temperature: float = config.INIT_TEMPERATURE,  # starting softmax temperature (CLIP: 0.07)
        min_temperature: float = config.MIN_TEMPERATURE,  # clamp floor: too sharp a softmax destabilises training
        max_temperature: float = config.MAX_TEMPERATURE,  # clamp ceiling
        learn_temperature: bool = True,  # learn the temperature, else keep it fixed
    ) -> None:
        super().__init__()
        if not 0 < min_temperature <= max_temperature:
            raise ValueError(f"need 0 < min_temperature <= max_temperature, got {min_temperature}, {max_temperature}")
        if init_temperature <= 0:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature}")
        self.min_temperature = float(min_temperature)
        self.max_temperature = float(max_temperature)
        # learnt in log space: positive by construction and scale-free steps
        self.log_temperature = nn.Parameter(torch.tensor(math.log(init_temperature), dtype=torch.float32),
                                            requires_grad=learn_temperature)

    def _clamped_log_t(self) -> torch.Tensor:
        return _ClampInward.apply(self.log_temperature, math.log(self.min_temperature), math.log(self.max_temperature))

    @property
    def temperature(self) -> float:
        """The temperature in use (after clamping), as a float."""
        return float(self._clamped_log_t().detach().exp())

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor,
                image_ids: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """Scalar loss for (B, d) L2-normalised rows; ``image_ids`` (B,) marks rows of the same image."""
        if image_emb.shape != text_emb.shape:
            raise ValueError(f"paired rows needed: image {tuple(image_emb.shape)} vs text {tuple(text_emb.shape)}")
        logits = image_emb @ text_emb.T / self._clamped_log_t().exp()  # (B images, B texts)
        if image_ids is not None:
            # a second caption of the same image is not a negative: drop it from both softmaxes
            ids = torch.as_tensor(image_ids, device=logits.device).view(-1)
            same = ids[:, None] == ids[None, :]
            same.fill_diagonal_(False)
            logits = logits.masked_fill(same, float("-inf"))
        target = torch.arange(len(logits), device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def gather_rows(local: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Every process's rows in rank order (``sizes``: each rank's row count), with gradients through
    this process's own rows only, as open_clip's ``gather_features`` does. Each process then computes
    the loss over the whole global batch; the sum of the processes' gradients is the gradient of one
    process that held the whole batch (``train.Distributed.reduce_gradients``)."""
    import torch.distributed as dist

    rank = dist.get_rank()
    padded = local.detach().new_zeros((max(sizes), *local.shape[1:]))  # all_gather needs equal shapes
    padded[: len(local)] = local.detach()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    parts = [part[:n] for part, n in zip(parts, sizes)]
    parts[rank] = local
    return torch.cat(parts)
