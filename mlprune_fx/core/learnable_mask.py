"""Learnable Top-k masks: scores pick what stays, a threshold decides how much."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import GRANULARITIES
from .errors import ConfigError


class _TopK(torch.autograd.Function):
    """M = 1 on the k = ceil(sigmoid(T) * n) largest scores; straight-through backward.

    dL/dS = dL/dM, and dL/dT = sum(dL/dM * M) reaches T directly (not through the
    sigmoid), as in MLPruning.
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        k = keep_count(threshold, scores.numel())
        flat = scores.detach().reshape(-1)
        mask = torch.zeros_like(flat)
        if k > 0:
            mask[torch.topk(flat, k, sorted=False).indices] = 1.0
        mask = mask.view_as(scores)
        ctx.save_for_backward(mask)
        ctx.threshold_shape = threshold.shape
        return mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return grad, (grad * mask).sum().reshape(ctx.threshold_shape)


def keep_count(threshold: torch.Tensor, n: int) -> int:
    """k = ceil(sigmoid(T) * n), clamped to [0, n]."""
    ratio = float(torch.sigmoid(threshold.detach().float()))
    return max(0, min(n, math.ceil(ratio * n)))


class LearnableMask(nn.Module):
    """Binary mask over heads, rows, blocks or single weights, learned by Top-k.

    `scores` rank the units, the scalar `threshold` sets the kept fraction
    sigmoid(threshold). `frozen` (a buffer) replaces the Top-k once training ends.
    """

    def __init__(
        self,
        granularity: str,
        shape: tuple[int, ...] | torch.Size,
        initial_threshold: float = 10.0,
        initial_score: float = 0.0,
    ) -> None:
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ConfigError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.granularity = granularity
        self.scores = nn.Parameter(torch.full(tuple(shape), float(initial_score)))
        self.threshold = nn.Parameter(torch.tensor(float(initial_threshold)))

    @property
    def numel(self) -> int:
        return self.scores.numel()

    def forward(self) -> torch.Tensor:
        return _TopK.apply(self.scores, self.threshold)

    def keep_ratio(self, floor: bool = True) -> torch.Tensor:
        """Differentiable kept fraction sigmoid(T), floored at 1/n for the regulariser."""
        ratio = torch.sigmoid(self.threshold)
        if floor:
            ratio = torch.clamp(ratio, min=1.0 / self.numel)
        return ratio

    def extra_repr(self) -> str:
        return f"granularity={self.granularity!r}, shape={tuple(self.scores.shape)}"
