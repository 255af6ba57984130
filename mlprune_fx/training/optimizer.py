"""AdamW groups for a prepared model, the learning-rate schedule, and the derived mask learning rate."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.pruning_state import MASK_CONTAINER, mask_modules, pruning_state
from .prepared_model import unwrap

# Thresholds get no momentum: the regulariser's gradient vanishes once rho is below the
# target, and momentum would carry them on, about 1 / (1 - beta1) steps of mask_lr past it.
THRESHOLD_BETAS = (0.0, 0.999)
DESCENT = 0.5  # share of the steps the regulariser drives the thresholds before the hold


def optimizer_groups(
    model: nn.Module,
    lr: float = 3e-5,
    mask_lr: float = 1e-2,
    weight_decay: float = 0.0,
    freeze_embeddings: bool = False,
    threshold_betas: tuple[float, float] | None = THRESHOLD_BETAS,
) -> list[dict]:
    """AdamW groups: model weights at `lr`; mask scores, and thresholds, at `mask_lr`.

    threshold_betas: the thresholds' Adam betas (no momentum by default, so the descent
    brakes as the regulariser's gradient fades); None keeps the optimizer's own.
    """
    weights, scores, thresholds = [], [], []
    for name, param in model.named_parameters():
        name = name.removeprefix("module.")
        if freeze_embeddings and "embeddings." in name:
            param.requires_grad_(False)
            continue
        if not param.requires_grad:
            continue
        if not name.startswith(MASK_CONTAINER + "."):
            weights.append(param)
        else:
            (thresholds if name.endswith(".threshold") else scores).append(param)
    groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay}]
    if scores:
        groups.append({"params": scores, "lr": mask_lr, "weight_decay": 0.0})
    if thresholds:
        extra = {"betas": threshold_betas} if threshold_betas is not None else {}
        groups.append({"params": thresholds, "lr": mask_lr, "weight_decay": 0.0, **extra})
    return groups


def schedule_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up to 1, then linear decay to 0 at `steps`."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    return max(0.0, (steps - step) / max(1, steps - warmup))


def linear_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule_factor(step, steps, warmup))


def default_mask_lr(prepared: nn.Module, steps: int, warmup: float = 0.1, descent: float = DESCENT) -> float:
    """The mask learning rate that lets thresholds reach the target's level by mid-descent.

    Adam moves a parameter whose gradient keeps its sign by about its learning rate
    per step, and the regulariser's gradient keeps its sign while rho > target. The
    farthest a threshold has to travel is from its value now to logit(target) (a
    single mask per matrix at the target; with several masks per matrix each keeps
    more). Dividing that distance by the learning-rate schedule's area over the
    first half of the descent phase gives the rate; it depends on the run length,
    the target and the starting thresholds, never on tuning.
    """
    prepared = unwrap(prepared)
    target = pruning_state(prepared, "prepared").config.share
    thresholds = [float(m.threshold.detach()) for m in mask_modules(prepared).values()]
    if not thresholds or target >= 1:
        return 1e-2
    distance = max(max(thresholds) - math.log(target / (1 - target)), 1.0)
    warm = int(warmup * steps)
    reach = max(1, int(0.5 * descent * steps))
    area = sum(schedule_factor(s, steps, warm) for s in range(reach))
    return distance / max(area, 1e-9)
