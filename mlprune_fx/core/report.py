"""How much of each prunable matrix the current masks keep."""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx

from .kept_weights import current_masks, effective_mask, kept_weights
from .latency import LatencyPrediction, predict_latency
from .leap import soft_remaining
from .pruning_state import pruning_state


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
    """Per-matrix and overall remaining ratios (the denominator is every prunable encoder weight), and
    the latency the cost model predicts for the converted model (`latency`: ms, dense_ms, speedup)."""

    matrices: tuple[MatrixReport, ...]
    heads_kept: dict[str, tuple[int, int]]
    soft_remaining: float | None
    penalty: dict[str, float]
    latency: LatencyPrediction | None = None

    @property
    def predicted_speedup(self) -> float | None:
        return self.latency.speedup if self.latency is not None else None

    @property
    def predicted_ms(self) -> float | None:
        return self.latency.ms if self.latency is not None else None

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
        if self.latency is not None:
            p = self.latency
            lines.append(f"predicted ONNX Runtime latency at batch {p.batch} x {p.seq}: {p.ms:.3g} ms against "
                         f"{p.dense_ms:.3g} ms dense ({p.speedup:.2f}x faster; cost model)")
        if self.penalty:
            lines.append("last penalty: " + ", ".join(f"{k}={v:.4g}" for k, v in self.penalty.items()))
        return "\n".join(lines)


def sparsity_report(gm: fx.GraphModule) -> SparsityReport:
    """Remaining ratios from the hard masks (what convert will keep)."""
    state = pruning_state(gm)
    masks = {k: v.detach().cpu() for k, v in current_masks(gm).items()}
    block = state.config.block_size
    rows = []
    for lm in state.linears:
        kept_rows = int((effective_mask(lm, masks, block).sum(1) > 0).sum())
        shape = (lm.site.out_features, lm.site.in_features)
        rows.append(MatrixReport(lm.site.weight, shape, round(float(kept_weights(lm, masks, block))), kept_rows))
    heads = {}
    for attention in state.structure.attention:
        lm = state.masks_of(attention.q.weight)
        if lm is not None and lm.rows is not None:
            heads[attention.name] = (int(masks[lm.rows.key].sum()), attention.num_heads)
    soft = float(soft_remaining(gm).detach()) if state.stage == "prepared" else None
    return SparsityReport(tuple(rows), heads, soft, dict(state.last_penalty), predict_latency(gm))
