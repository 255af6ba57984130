"""The cost model applied to hard masks: the latency the converted model will have, and the dense one's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import fx

from .kept_weights import current_masks, effective_mask
from .leap import active_cost_model, model_shape
from .pruning_state import pruning_state


@dataclass(frozen=True)
class LatencyPrediction:
    ms: float  # the pruned (converted) model, ONNX Runtime, at the cost model's batch x seq
    dense_ms: float
    batch: int
    seq: int

    @property
    def speedup(self) -> float:
        return self.dense_ms / max(self.ms, 1e-12)


def _block_density(mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, block: int) -> tuple[float, int] | None:
    """(kept-block density, kept blocks) of the compacted matrix, or None when its sides are not whole blocks."""
    kept = mask[rows][:, cols]
    out, inp = kept.shape
    if out == 0 or inp == 0 or out % block or inp % block:
        return None
    tiles = kept.reshape(out // block, block, inp // block, block).amax(dim=(1, 3)) > 0
    return float(tiles.float().mean()), int(tiles.sum())


@dataclass(frozen=True)
class LatencyCounts:
    """What the cost model's terms count in one model (see CostModel)."""

    dense_weights: float
    block_weights: float
    heads_x_dim: float
    hidden_x_layers: float
    scattered: float = 0.0

    def ms(self, cost) -> float:
        return cost.ms(self.dense_weights, self.block_weights, self.heads_x_dim, self.hidden_x_layers, self.scattered)


Compacting = Callable[[int, int, int], bool]  # (out_features, in_features, kept rows) -> drop the pruned output rows


def output_row_sites(state) -> set[str]:
    """The weights whose output rows compact_rows may drop: attention outputs and FC2s added to the residual."""
    sites = {b.o.weight for b in state.structure.attention if b.o_residual}
    return sites | {b.fc2.weight for b in state.structure.ffn if b.fc2_residual}


@torch.no_grad()
def latency_counts(gm: fx.GraphModule, max_block_density: float, dense: bool = False,
                   compacting: Compacting | None = None) -> LatencyCounts:
    """The counts of the model the hard masks describe, as convert builds it: compacted dense linears at
    their kept rows x columns, block-sparse ones (kept-block density below `max_block_density`) at their
    kept blocks, kept heads, scattered outputs, and what pruning leaves. compacting: convert's choice for
    pruned output rows (None: always drop them). dense: the same model with nothing pruned."""
    state = pruning_state(gm)
    masks = {k: v.detach().cpu().float() for k, v in current_masks(gm).items()}
    block = state.config.block_size
    output_rows = output_row_sites(state)
    dense_w = block_w = scattered = 0.0
    for lm in state.linears:
        uses = len(lm.nodes)
        if dense:
            dense_w += lm.site.numel * uses
            continue
        mask = effective_mask(lm, masks, block)
        rows = torch.nonzero(mask.sum(1) > 0).flatten()
        cols = torch.nonzero(mask.sum(0) > 0).flatten()
        out = mask.shape[0]
        if lm.site.weight in output_rows and lm.rows is not None and lm.rows.repeat == 1 and len(rows) < out:
            if len(rows) and compacting is not None and lm.blocks is None and not compacting(out, len(cols), len(rows)):
                rows = torch.arange(out)
            elif len(rows):
                scattered += out * uses
        lowered = _block_density(mask, rows, cols, block) if lm.blocks is not None else None
        if lowered is not None and lowered[0] < max_block_density:
            block_w += lowered[1] * block * block * uses
        else:
            dense_w += len(rows) * len(cols) * uses
    heads = 0.0
    for attention in state.structure.attention:
        lm = state.masks_of(attention.q.weight)
        masked = not dense and lm is not None and lm.rows is not None
        heads += (float(masks[lm.rows.key].sum()) if masked else attention.num_heads) * attention.head_dim
    shape = model_shape(state)
    return LatencyCounts(dense_w, block_w, heads, shape["hidden"] * shape["layers"], scattered)


def predict_latency(gm: fx.GraphModule) -> LatencyPrediction:
    """What the config's cost model (or the shipped one) predicts for the converted model and for dense."""
    cost = active_cost_model(pruning_state(gm).config)
    pruned = latency_counts(gm, cost.max_block_density, compacting=cost.compacting_pays)
    dense = latency_counts(gm, cost.max_block_density, dense=True)
    return LatencyPrediction(pruned.ms(cost), dense.ms(cost), cost.batch, cost.seq)
