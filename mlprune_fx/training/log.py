"""What a training run records: per-step loss, rho and lambda, the hold, and a running accuracy."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch


@dataclass
class TrainLog:
    """Per-step loss, soft rho and lambda; hard remaining every `log_every` steps; the hold.

    hold_churn: share of the units kept when the hold began that the trained model no
    longer keeps (scores go on learning under held thresholds; 0 with `hold_masks`).
    grad_norm: per step (when clipping), the norm of every gradient before clipping.
    accuracy: per step, the accuracy on the training batch (classification; the
    progress bar shows its mean over the last 50 batches).
    """

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    rho: list[float] = field(default_factory=list)
    lam: list[float] = field(default_factory=list)
    remaining_steps: list[int] = field(default_factory=list)
    remaining: list[float] = field(default_factory=list)
    mask_lr: float | None = None
    hold_from: int | None = None
    adjust: float | None = None
    before_hold: float | None = None
    hold_churn: float | None = None
    kd: list[dict[str, float]] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)


class RunningAccuracy:
    """Training accuracy over the last `window` batches, for the progress bar.

    Counts classification logits [..., classes] against integer labels of the leading
    shape, skipping HF's ignore index -100; anything else (regression) is not counted.
    """

    def __init__(self, window: int = 50) -> None:
        self.counts: deque[tuple[int, int]] = deque(maxlen=window)
        self.last = 0.0

    def add(self, logits: torch.Tensor | None, labels: torch.Tensor | None) -> bool:
        if logits is None or labels is None or labels.is_floating_point() or tuple(logits.shape[:-1]) != tuple(labels.shape):
            return False
        valid = labels != -100
        total = int(valid.sum())
        if not total:
            return False
        correct = int(((logits.detach().argmax(-1) == labels) & valid).sum())
        self.counts.append((correct, total))
        self.last = correct / total
        return True

    @property
    def value(self) -> float:
        return sum(c for c, _ in self.counts) / max(sum(t for _, t in self.counts), 1)
