"""The hold: calibrate the thresholds to the hard target by one shared factor, then keep them.

The regulariser sees sigmoid(T), not the ceil(sigmoid(T) * n) units Top-k keeps; its
coefficient falls to `lambda_small` within sqrt(small_penalty) (1.7 %) of the target; and
thresholds the task loss pushed far up escape its pull (its gradient goes through
sigmoid'(T)). So on its own it settles above the target, and the hold corrects the level
while keeping the per-matrix allocation it learnt (docs/training.md).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.pruning_state import mask_modules, pruning_state
from .prepared_model import hard_target_share, unwrap

ADJUST_WARNING = 0.25  # a hold that moves every mask by more than this is worth a warning


def scaled_ratios(ratios: torch.Tensor, adjust: float) -> torch.Tensor:
    """Every mask's kept fraction moved by one shared amount `adjust` in [-1, 1].

    adjust < 0 removes that share of what each mask keeps (a -> (1 + adjust) a);
    adjust > 0 restores that share of what each mask prunes (1 - a -> (1 - adjust)(1 - a)).
    """
    if adjust <= 0:
        return ratios * (1.0 + adjust)
    return 1.0 - (1.0 - adjust) * (1.0 - ratios)


class ThresholdHold:
    """Calibrate the thresholds to the hard target by one shared factor, then keep them fixed.

    The factor scales every mask's kept (or pruned) fraction alike, so each matrix
    gives up, or gets back, the same share of what the regulariser gave it: the
    allocation survives, only its level changes. (A shared shift in logit space
    would not do that: it moves mid-range thresholds a lot and saturated ones, far
    above or below zero, not at all.) Holding works through the optimizer: a step
    pre-hook drops the thresholds' gradients, and optimizers skip parameters without
    a gradient (no momentum drift), so it works alike under DDP, Accelerate and Trainer.
    freeze_scores: drop the scores' gradients as well, so no unit enters or leaves a
    mask during the hold.
    """

    def __init__(self, prepared: nn.Module, freeze_scores: bool = False) -> None:
        self.prepared = unwrap(prepared)
        masks = mask_modules(self.prepared).values()
        self.thresholds = [m.threshold for m in masks]
        self.held = self.thresholds + ([m.scores for m in masks] if freeze_scores else [])
        self.kept_at_hold: dict[str, list[int]] | None = None
        self.engaged = False
        self.adjust: float | None = None
        self.before: float | None = None
        self.after: float | None = None
        self._handles: list = []

    @torch.no_grad()
    def calibrate(self, target: float | None = None, iterations: int = 50) -> float:
        """Bisect the shared adjustment (see `scaled_ratios`); returns the hard ratio reached."""
        target = pruning_state(self.prepared, "prepared").config.share if target is None else target
        base = torch.sigmoid(torch.stack([t.detach().double().reshape(()) for t in self.thresholds]))

        def ratio_at(adjust: float) -> float:
            ratios = scaled_ratios(base, adjust).clamp(1e-12, 1 - 1e-12)
            for t, value in zip(self.thresholds, torch.logit(ratios)):
                t.fill_(float(value))
            return hard_target_share(self.prepared)

        self.before = ratio_at(0.0)
        lo, hi = -1.0, 1.0  # ratio(lo) < target <= ratio(hi) once bracketed
        r_lo, r_hi = ratio_at(lo), ratio_at(hi)
        if r_lo >= target:
            hi, r_hi = lo, r_lo
        else:
            for _ in range(iterations):
                mid = 0.5 * (lo + hi)
                r = ratio_at(mid)
                if r >= target:
                    hi, r_hi = mid, r
                else:
                    lo, r_lo = mid, r
                if hi - lo < 1e-7:
                    break
        self.adjust = hi if abs(r_hi - target) <= abs(target - r_lo) else lo
        self.after = ratio_at(self.adjust)
        return self.after

    def kept_units(self) -> dict[str, list[int]]:
        """Flat indices of the units each mask keeps now."""
        masks = mask_modules(self.prepared).items()
        return {k: torch.nonzero(m().detach().flatten()).flatten().tolist() for k, m in masks}

    def churn(self) -> float | None:
        """Share of the units kept when the hold began that are no longer kept (None before the hold)."""
        if self.kept_at_hold is None:
            return None
        now = self.kept_units()
        gone = sum(len(set(units) - set(now[k])) for k, units in self.kept_at_hold.items())
        return gone / max(sum(len(units) for units in self.kept_at_hold.values()), 1)

    def engage(self, optimizers: Iterable[torch.optim.Optimizer] = ()) -> float:
        """Calibrate, then stop the thresholds (and scores, with freeze_scores): gradients dropped before each step."""
        reached = self.calibrate()
        self.kept_at_hold = self.kept_units()
        for opt in optimizers:
            inner = getattr(opt, "optimizer", opt)  # accelerate's AcceleratedOptimizer wraps the real one
            self._handles.append(inner.register_step_pre_hook(lambda *_: self.drop_grads()))
        self.engaged = True
        return reached

    def drop_grads(self) -> None:
        if self.engaged:
            for t in self.held:
                t.grad = None

    def release(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.engaged = False


def describe_adjust(adjust: float) -> str:
    """What a hold adjustment did, in words."""
    if adjust <= 0:
        return f"removed {-adjust:.0%} of every mask's kept units"
    return f"restored {adjust:.0%} of every mask's pruned units"


def hold_step(steps: int, descent: float | None) -> int | None:
    """The step after which thresholds are calibrated and held; None when they never are."""
    if descent is None or descent >= 1:
        return None
    if not 0 < descent < 1:
        raise ConfigError(f"descent={descent} must lie in (0, 1], or be None for no hold phase")
    return max(1, round(descent * steps))
