"""The LEAP regulariser: pulls the soft remaining ratio rho down to the target."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from .pruning_state import PruningState, mask_modules, pruning_state


@dataclass(frozen=True)
class Penalty:
    """One evaluation of the regulariser; `loss` = lambda * R carries the gradient."""

    loss: torch.Tensor
    rho: float
    distance: float
    lam: float


# A head's attention (Q K^T, softmax, the weighted sum of V) per token and head_dim
# unit of sequence length, in weights' worth: the two products make 2 multiply-adds,
# and ONNX Runtime on CPU spends about as long again on the softmax, the mask and the
# copies around them (benchmarks/head_cost.py fitted 3.8-4.4 at 128 tokens, 3.5-3.6
# at 256; more at 64, where a head's fixed overhead weighs more).
ATTENTION_COST = 4


def head_cost(head_dim: int, length: int) -> int:
    """What one kept head's attention costs per token, in weights' worth."""
    return ATTENTION_COST * length * head_dim


def attention_work(state: PruningState) -> list[tuple[int, str | None]]:
    """Per attention block: all its heads' `head_cost`, and the key of its head mask.

    Empty when the target counts weights alone (no `attention_length`); the key is
    None where the block's heads are not masked, so its attention is a fixed cost.
    """
    length = state.config.attention_length
    if length is None:
        return []
    work = []
    for block in state.structure.attention:
        q = state.masks_of(block.q.weight)
        key = q.rows.key if q is not None and q.rows is not None else None  # Q's rows: the head mask
        work.append((block.num_heads * head_cost(block.head_dim, length), key))
    return work


def soft_remaining(gm: fx.GraphModule) -> torch.Tensor:
    """rho = sum_W numel(W) * prod(keep ratios of W's masks) / sum_W numel(W).

    Keep ratios are sigmoid(T), floored at 1/n. For BERT with heads (a), O rows (o),
    FC1 rows (f1) and FC2 rows (f2) this is MLPruning's (3a + a*o + 4*f1 + 4*f1*f2)/12
    per layer, counted with the real matrix sizes of whatever was discovered. With
    `attention_length` set, each head's attention joins both sums at `head_cost`,
    scaled by its block's head keep ratio, and rho becomes the share of the work kept.
    """
    state = pruning_state(gm, "prepared")
    masks = mask_modules(gm)
    floor = state.config.floor_ratios
    device = next(iter(gm.parameters())).device
    kept = torch.zeros((), device=device)
    total = 0
    ratios: dict[str, torch.Tensor] = {}
    for lm in state.linears:
        factor = torch.ones((), device=device)
        for ref in lm.refs():
            if ref.key not in ratios:
                ratios[ref.key] = masks[ref.key].keep_ratio(floor)
            factor = factor * ratios[ref.key]
        kept = kept + lm.site.numel * factor
        total += lm.site.numel
    for cost, key in attention_work(state):
        kept = kept + cost * (masks[key].keep_ratio(floor) if key is not None else 1.0)
        total += cost
    return kept / max(total, 1)


def penalty(gm: fx.GraphModule, target: float | None = None) -> Penalty:
    """R = (rho - r)^2 when rho > r, else 0; lambda adapts to R as in MLPruning.

    target: the r to pull toward; None is the config's target.
    """
    state = pruning_state(gm, "prepared")
    cfg = state.config
    rho = soft_remaining(gm)
    r = cfg.target if target is None else target
    distance = torch.clamp(rho - r, min=0.0) ** 2
    d = float(distance.detach())
    if d < cfg.small_penalty:
        lam = cfg.lambda_small
    else:
        lam = max(cfg.lambda_f * d / (1.0 - r) ** 2 if r < 1 else 0.0, cfg.lambda_min)
    loss = lam * distance
    state.last_penalty = {"rho": float(rho.detach()), "R": d, "lambda": lam}
    return Penalty(loss, float(rho.detach()), d, lam)


def regularization(gm: fx.GraphModule) -> torch.Tensor:
    """lambda * R, to add to the task loss every step."""
    return penalty(gm).loss
