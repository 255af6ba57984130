"""The LEAP part of a training step, shared by `train` and `LeapTrainer`.

Each step adds lambda * R to the task loss until the hold engages; after `descent` of the
steps the thresholds are calibrated to the hard target and held (with `hold_masks`, the
scores too), and the penalty is only logged. Both loops call `loss`, `after_step` and
`release`, so what they train and log is the same.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn

from ..core.leap import penalty
from ..core.pruning_state import pruning_state
from .hold import ADJUST_WARNING, ThresholdHold, describe_adjust, hold_step
from .prepared_model import unwrap


class PenaltyStep:
    """The penalty, the hold at its step, and what both loops log about them."""

    def __init__(self, prepared: nn.Module, steps: int, descent: float | None, hold_masks: bool = False) -> None:
        self.prepared = unwrap(prepared)
        self.hold_at = hold_step(steps, descent)
        self.hold = ThresholdHold(self.prepared, freeze_scores=hold_masks) if self.hold_at is not None else None
        self.last: dict[str, float] = {}

    @property
    def holding(self) -> bool:
        return self.hold is not None and self.hold.engaged

    def loss(self) -> torch.Tensor | None:
        """lambda * R to add to the task loss, or None once the thresholds are held."""
        holding = self.holding
        with torch.set_grad_enabled(not holding):
            pen = penalty(self.prepared)
        self.last = {"rho": pen.rho, "lambda": pen.lam, "penalty": float(pen.loss.detach())}
        return None if holding else pen.loss

    def drop_held_grads(self) -> None:
        """Drop the held parameters' gradients (for loops that do not pass their optimizers)."""
        if self.hold is not None:
            self.hold.drop_grads()

    def after_step(self, done: int, optimizers: Iterable[torch.optim.Optimizer] = ()) -> dict[str, float] | None:
        """Engage the hold once `done` steps have run; returns what it did, None when nothing happened.

        optimizers: the held gradients are dropped by a pre-hook on each before its step.
        """
        if self.hold is None or self.hold.engaged or done < self.hold_at:
            return None
        reached = self.hold.engage(optimizers)
        if abs(self.hold.adjust) > ADJUST_WARNING:
            warnings.warn(
                f"the regulariser left the hard ratio at {self.hold.before:.3f} for a target of "
                f"{pruning_state(self.prepared).config.share:.3g}, so the hold {describe_adjust(self.hold.adjust)}. "
                "Train longer so the regulariser gets closer itself",
                stacklevel=3,
            )
        return {"hold_from": done, "hold_adjust": self.hold.adjust, "hold_before": self.hold.before,
                "hold_remaining": reached}

    def release(self) -> float | None:
        """Remove the hold's hooks; the share of the units kept at the hold that are gone since (None without one)."""
        if self.hold is None:
            return None
        churn = self.hold.churn()
        self.hold.release()
        return churn
