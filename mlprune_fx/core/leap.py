"""The LEAP regulariser: pulls the soft remaining ratio rho down to the target."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from .cost_model import CostModel, default_cost_model
from .errors import ConfigError
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


@dataclass(frozen=True)
class WorkTerms:
    """What the target counts, in one unit: every kept weight 1 (the default); weights' worth with
    `attention_length` (each kept head also charged its attention); or, with a speed-up target,
    nanoseconds per token under the cost model. rho = (fixed + kept work) / (fixed + all work)."""

    fixed: float
    weight: dict[str, float]  # linear weight name -> cost of one kept weight
    heads: tuple[tuple[float, str | None], ...]  # per attention block: all its heads' cost, its head mask key


def _head_key(state: PruningState, block) -> str | None:
    q = state.masks_of(block.q.weight)
    return q.rows.key if q is not None and q.rows is not None else None  # Q's rows: the head mask


def model_shape(state: PruningState) -> dict[str, int]:
    """The encoder's sizes, as a cost model records what it was fitted on."""
    s = state.structure
    att, ffn = (s.attention[0] if s.attention else None), (s.ffn[0] if s.ffn else None)
    hidden = att.o.out_features if att else (ffn.fc2.out_features if ffn else 0)
    return {"hidden": hidden, "layers": max(len(s.attention), len(s.ffn)), "heads": att.num_heads if att else 0,
            "head_dim": att.head_dim if att else 0, "ffn": ffn.rows if ffn else 0}


def work_terms(state: PruningState) -> WorkTerms:
    """The unit the target counts in, per weight and per head (see WorkTerms)."""
    cfg = state.config
    if cfg.speedup is not None:
        cost = active_cost_model(cfg)
        weight = {lm.site.weight: (cost.block_weight_ns if lm.blocks is not None else cost.weight_ns) * len(lm.nodes)
                  for lm in state.linears}  # a shared weight is computed at each of its uses
        heads = tuple((cost.head_ns * cost.seq * block.num_heads * block.head_dim, _head_key(state, block))
                      for block in state.structure.attention)
        shape = model_shape(state)
        return WorkTerms(cost.fixed_ns * shape["hidden"] * shape["layers"], weight, heads)
    weight = {lm.site.weight: 1.0 for lm in state.linears}
    if cfg.attention_length is None:
        return WorkTerms(0.0, weight, ())
    heads = tuple((block.num_heads * head_cost(block.head_dim, cfg.attention_length), _head_key(state, block))
                  for block in state.structure.attention)
    return WorkTerms(0.0, weight, heads)


def check_reachable(state: PruningState) -> None:
    """Refuse a speed-up the granularities cannot reach: what every mask at its floor (one unit) still costs."""
    cfg = state.config
    if cfg.speedup is None:
        return
    terms = work_terms(state)
    least, total = terms.fixed, terms.fixed
    for lm in state.linears:
        cost = terms.weight[lm.site.weight] * lm.site.numel
        total += cost
        least += cost * (0.0 if lm.refs() else 1.0)
    for cost, key in terms.heads:
        total += cost
        least += 0.0 if key is not None else cost
    reachable = total / max(least, 1e-12)
    if cfg.speedup > reachable * 0.999:
        raise ConfigError(
            f"speedup={cfg.speedup:g} cannot be reached: with granularities {cfg.granularity} the cost model predicts "
            f"at most {reachable:.2f}x (what pruning leaves: embeddings, LayerNorms, unmasked linears and heads). "
            f"Ask for less, or prune more kinds of units"
        )


def active_cost_model(config) -> CostModel:
    """The config's cost model, or the one shipped with the package."""
    return config.cost_model if config.cost_model is not None else default_cost_model()


def soft_remaining(gm: fx.GraphModule) -> torch.Tensor:
    """rho = (fixed + sum_W cost(W) numel(W) prod(keep ratios of W's masks) + sum_heads ...) / (the same, all kept).

    Keep ratios are sigmoid(T), floored at 1/n. Counting weights alone (every cost 1,
    nothing fixed), for BERT with heads (a), O rows (o), FC1 rows (f1) and FC2 rows (f2)
    this is MLPruning's (3a + a*o + 4*f1 + 4*f1*f2)/12 per layer, with the real matrix
    sizes of whatever was discovered. With `attention_length` or a speed-up target the
    heads' attention joins both sums, scaled by its block's head keep ratio (`work_terms`).
    """
    state = pruning_state(gm, "prepared")
    masks = mask_modules(gm)
    floor = state.config.floor_ratios
    terms = work_terms(state)
    device = next(iter(gm.parameters())).device
    kept = torch.full((), terms.fixed, device=device, dtype=torch.float32)
    total = terms.fixed
    ratios: dict[str, torch.Tensor] = {}
    for lm in state.linears:
        factor = torch.ones((), device=device)
        for ref in lm.refs():
            if ref.key not in ratios:
                ratios[ref.key] = masks[ref.key].keep_ratio(floor)
            factor = factor * ratios[ref.key]
        cost = terms.weight[lm.site.weight] * lm.site.numel
        kept = kept + cost * factor
        total += cost
    for cost, key in terms.heads:
        kept = kept + cost * (masks[key].keep_ratio(floor) if key is not None else 1.0)
        total += cost
    return kept / max(total, 1e-12)


def penalty(gm: fx.GraphModule, target: float | None = None) -> Penalty:
    """R = (rho - r)^2 when rho > r, else 0; lambda adapts to R as in MLPruning.

    target: the r to pull toward; None is the config's (its target, or 1 / speedup).
    """
    state = pruning_state(gm, "prepared")
    cfg = state.config
    rho = soft_remaining(gm)
    r = cfg.share if target is None else target
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
