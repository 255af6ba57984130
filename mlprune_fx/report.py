"""How much of each prunable matrix the current masks keep."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from .masking import expand_blocks, expand_units, masked_weight
from .state import LinearMasks, mask_modules, pruning_state


@dataclass(frozen=True)
class MatrixReport:
    weight: str
    shape: tuple[int, int]
    kept: int
    rows_kept: int

    @property
    def remaining(self) -> float:
        return self.kept / (self.shape[0] * self.shape[1])


@dataclass(frozen=True)
class SparsityReport:
    """Per-matrix and overall remaining ratios; the denominator is every prunable encoder weight."""

    matrices: tuple[MatrixReport, ...]
    heads_kept: dict[str, tuple[int, int]]
    soft_remaining: float | None
    penalty: dict[str, float]

    @property
    def kept(self) -> int:
        return sum(m.kept for m in self.matrices)

    @property
    def total(self) -> int:
        return sum(m.shape[0] * m.shape[1] for m in self.matrices)

    @property
    def remaining(self) -> float:
        return self.kept / max(self.total, 1)

    def __str__(self) -> str:
        width = max([len(m.weight) for m in self.matrices] + [6])
        lines = [f"{'matrix':<{width}}  {'shape':>11}  {'kept':>9}  remaining"]
        for m in self.matrices:
            shape = f"{m.shape[0]}x{m.shape[1]}"
            lines.append(f"{m.weight:<{width}}  {shape:>11}  {m.kept:>9}  {m.remaining:8.1%}")
        for name, (k, n) in self.heads_kept.items():
            lines.append(f"heads {name}: {k}/{n}")
        lines.append(f"overall: {self.kept}/{self.total} weights = {self.remaining:.2%} remaining")
        if self.soft_remaining is not None:
            lines.append(f"regulariser's rho (sigmoid of thresholds): {self.soft_remaining:.2%}")
        if self.penalty:
            lines.append("last penalty: " + ", ".join(f"{k}={v:.4g}" for k, v in self.penalty.items()))
        return "\n".join(lines)


def _current_masks(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    state = pruning_state(gm)
    if state.frozen:
        return dict(state.frozen)
    with torch.no_grad():
        return {k: m().detach() for k, m in mask_modules(gm).items()}


def _effective(lm: LinearMasks, masks: dict[str, torch.Tensor], block: int) -> torch.Tensor:
    ones = torch.ones(lm.site.out_features, lm.site.in_features)

    def get(ref, expand):
        return None if ref is None else expand(masks[ref.key].cpu(), ref)

    rows = get(lm.rows, lambda m, r: expand_units(m, r.unit))
    cols = get(lm.cols, lambda m, r: expand_units(m, r.unit))
    elements = get(lm.blocks, lambda m, r: expand_blocks(m, block))
    extra = get(lm.elements, lambda m, r: m)
    if elements is not None and extra is not None:
        elements = elements * extra
    elif extra is not None:
        elements = extra
    return masked_weight(ones, rows, cols, elements)


def sparsity_report(gm: fx.GraphModule) -> SparsityReport:
    """Remaining ratios from the hard masks (what convert will keep)."""
    from .leap import soft_remaining

    state = pruning_state(gm)
    masks = _current_masks(gm)
    rows = []
    for lm in state.linears:
        eff = _effective(lm, masks, state.config.block_size)
        rows.append(
            MatrixReport(lm.site.weight, (lm.site.out_features, lm.site.in_features), int(eff.sum()), int((eff.sum(1) > 0).sum()))
        )
    heads = {}
    for block in state.structure.attention:
        lm = state.masks_of(block.q.weight)
        if lm is not None and lm.rows is not None:
            heads[block.name] = (int(masks[lm.rows.key].sum()), block.num_heads)
    soft = float(soft_remaining(gm).detach()) if state.stage == "prepared" else None
    return SparsityReport(tuple(rows), heads, soft, dict(state.last_penalty))
