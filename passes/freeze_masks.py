"""freeze_masks: Top-k scores -> binary masks multiplied into the weights."""

from __future__ import annotations

import torch
from torch import fx

from ..core.kept_weights import effective_mask
from ..core.mask_functions import expand_units, masked_bias, masked_weight
from ..core.pruning_state import MASK_CONTAINER, mask_modules, pruning_state
from .graph_utils import finish, get_tensor, nodes_by_name, remove_dead_nodes, set_tensor


def _round_up_rows(mask: torch.Tensor, scores: torch.Tensor, multiple: int) -> torch.Tensor:
    """Keep the next best-scored rows until the kept count is a multiple of `multiple`."""
    n = mask.numel()
    k = int(mask.sum())
    want = min(n, -(-k // multiple) * multiple)
    if want == k:
        return mask
    kept_first = torch.where(mask.reshape(-1) > 0, torch.inf, scores.detach().reshape(-1))
    order = torch.argsort(kept_first, descending=True)
    rounded = torch.zeros_like(mask).reshape(-1)
    rounded[order[:want]] = 1.0
    return rounded.view_as(mask)


def freeze_masks(gm: fx.GraphModule, row_multiple: int = 1) -> fx.GraphModule:
    """Bake the current hard masks into W and b and drop every mask from the graph.

    The binary masks are kept in the pruning state: the compaction passes read
    them to know which heads, rows and blocks are gone. `row_multiple` rounds the
    kept count of every row mask up (best scores first), so that a block step
    that follows finds matrices whose sides its block size divides; the rows it
    adds are kept as zeros, so the model computes what the masked one did.
    """
    state = pruning_state(gm, "prepared")
    with torch.no_grad():
        modules = mask_modules(gm)
        masks = {k: m().detach().clone() for k, m in modules.items()}
        kept = dict(masks)
        if row_multiple > 1:
            for key, module in modules.items():
                if module.granularity == "row":
                    kept[key] = _round_up_rows(masks[key], module.scores, row_multiple)
        for lm in state.linears:
            eff = effective_mask(lm, masks, state.config.block_size)
            w = get_tensor(gm, lm.site.weight)
            set_tensor(gm, lm.site.weight, masked_weight(w, elements=eff.to(w.device)))
            if lm.site.bias is not None and lm.rows is not None:
                b = get_tensor(gm, lm.site.bias)
                rows = expand_units(masks[lm.rows.key], lm.rows.unit, lm.rows.repeat).to(b.device)
                set_tensor(gm, lm.site.bias, masked_bias(b, rows))
    nodes = nodes_by_name(gm)
    for lm in state.linears:
        for name in lm.nodes:
            linear = nodes[name]
            args = list(linear.args)
            for i in (1, 2):
                arg = args[i] if i < len(args) else None
                while isinstance(arg, fx.Node) and arg.op == "call_function" and arg.target in (masked_weight, masked_bias):
                    arg = arg.args[0]
                if i < len(args):
                    args[i] = arg
            linear.args = tuple(args)
    remove_dead_nodes(gm)
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target.startswith(MASK_CONTAINER + ".") and not node.users:
            gm.graph.erase_node(node)
    delattr(gm, MASK_CONTAINER)
    state.frozen = kept
    state.stage = "frozen"
    return finish(gm)
