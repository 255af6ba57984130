"""What the hard masks keep: per matrix, and as the share the target counts.

The one place kept weights are counted: the sparsity report, the training loop's
hard ratio and the hold's bisection all read `kept_weights` / `kept_share`.
"""

from __future__ import annotations

import torch
from torch import fx

from .leap import work_terms
from .mask_functions import expand_blocks, expand_units, masked_weight
from .pruning_state import LinearMasks, mask_modules, pruning_state


def current_masks(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    """The hard masks now: the frozen ones once convert has run, else each mask module's Top-k."""
    state = pruning_state(gm)
    if state.frozen:
        return dict(state.frozen)
    with torch.no_grad():
        return {k: m().detach() for k, m in mask_modules(gm).items()}


def effective_mask(lm: LinearMasks, masks: dict[str, torch.Tensor], block: int) -> torch.Tensor:
    """The [out, in] 0/1 mask all of one matrix's masks make together."""
    def get(ref, expand):
        return None if ref is None else expand(masks[ref.key].cpu(), ref)

    rows = get(lm.rows, lambda m, r: expand_units(m, r.unit, r.repeat))
    cols = get(lm.cols, lambda m, r: expand_units(m, r.unit, r.repeat))
    elements = get(lm.blocks, lambda m, r: expand_blocks(m, block))
    extra = get(lm.elements, lambda m, r: m)
    if elements is not None and extra is not None:
        elements = elements * extra
    elif extra is not None:
        elements = extra
    return masked_weight(torch.ones(lm.site.out_features, lm.site.in_features), rows, cols, elements)


def kept_weights(lm: LinearMasks, masks: dict[str, torch.Tensor], block: int) -> torch.Tensor:
    """Weights of one matrix its masks keep, as r^T (E * B) c, without building the full mask
    when only rows, columns and blocks are masked (the hold's bisection counts often)."""
    out, inp = lm.site.out_features, lm.site.in_features
    f64 = torch.float64  # exact counts at any matrix size
    r = expand_units(masks[lm.rows.key].to(f64), lm.rows.unit, lm.rows.repeat) if lm.rows else None
    c = expand_units(masks[lm.cols.key].to(f64), lm.cols.unit, lm.cols.repeat) if lm.cols else None
    blocks = masks[lm.blocks.key].to(f64) if lm.blocks else None
    elements = masks[lm.elements.key].to(f64) if lm.elements else None
    if elements is None and blocks is None:
        return (r.sum() if r is not None else torch.tensor(float(out), dtype=f64)) * (c.sum() if c is not None else inp)
    if elements is None:
        rb = r.view(-1, block).sum(1) if r is not None else torch.full((out // block,), float(block), dtype=f64)
        cb = c.view(-1, block).sum(1) if c is not None else torch.full((inp // block,), float(block), dtype=f64)
        return rb @ blocks @ cb
    full = elements if blocks is None else elements * expand_blocks(blocks, block)
    r = r if r is not None else torch.ones(out, dtype=f64)
    c = c if c is not None else torch.ones(inp, dtype=f64)
    return r @ full @ c


@torch.no_grad()
def kept_share(gm: fx.GraphModule, work: bool = False) -> float:
    """Share of the prunable weights the hard masks keep (what convert keeps).

    work: count what the target counts instead (`leap.work_terms`): with `attention_length`
    each kept head's attention joins both sums; with a speed-up target the share is the
    predicted latency over the dense model's.
    """
    state = pruning_state(gm)
    masks = {k: v.detach().cpu() for k, v in current_masks(gm).items()}
    block = state.config.block_size
    terms = work_terms(state) if work else None
    kept = terms.fixed if terms else 0.0
    total = kept
    for lm in state.linears:
        cost = terms.weight[lm.site.weight] if terms else 1.0
        kept += cost * float(kept_weights(lm, masks, block))
        total += cost * lm.site.numel
    for cost, key in terms.heads if terms else ():
        kept += cost * (float(masks[key].float().mean()) if key is not None else 1.0)
        total += cost
    return kept / max(total, 1e-12)
