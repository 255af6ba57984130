"""compact_heads: physically remove pruned attention heads."""

from __future__ import annotations

import torch
from torch import fx

from ..core.mask_functions import broadcast_bias
from ..core.pruning_state import pruning_state
from ..core.structures import AttentionBlock
from .graph_utils import finish, get_tensor, kept_indices, nodes_by_name, remove_dead_nodes, set_tensor


def _zero_bias(gm: fx.GraphModule, block: AttentionBlock, name: str) -> str:
    w = get_tensor(gm, block.o.weight)
    gm.register_buffer(name, torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
    return name


def compact_heads(gm: fx.GraphModule) -> fx.GraphModule:
    """Slice Q/K/V rows and O columns down to the kept heads.

    Reshapes written with -1 absorb the new head count; constant head counts the
    analysis recorded are rewritten. A block with no head left becomes O's bias.
    """
    state = pruning_state(gm, "frozen")
    nodes = nodes_by_name(gm)
    for block in state.structure.attention:
        lm = state.masks_of(block.q.weight)
        if lm is None or lm.rows is None:
            continue
        heads = kept_indices(state.frozen[lm.rows.key])
        kept = len(heads)
        if kept == block.num_heads:
            continue
        rows = (heads[:, None] * block.head_dim + torch.arange(block.head_dim)).reshape(-1)
        for site in (block.q, block.k, block.v):
            w = get_tensor(gm, site.weight)
            set_tensor(gm, site.weight, w[rows.to(w.device)])
            if site.bias is not None:
                b = get_tensor(gm, site.bias)
                set_tensor(gm, site.bias, b[rows.to(b.device)])
        w = get_tensor(gm, block.o.weight)
        set_tensor(gm, block.o.weight, w[:, rows.to(w.device)])
        for arg in block.shape_args:
            node = nodes[arg.node]
            shape = list(node.args[1])
            shape[arg.index] = kept if arg.kind == "heads" else kept * block.head_dim
            node.args = (node.args[0], shape, *node.args[2:])
        if kept == 0:
            o_node = nodes[state.renamed.get(block.o.node, block.o.node)]
            x = nodes[block.q.node].args[0]
            bias = block.o.bias or _zero_bias(gm, block, f"{block.name.replace('.', '_')}__no_heads_bias")
            with gm.graph.inserting_before(o_node):
                b_node = gm.graph.get_attr(bias)
                new = gm.graph.call_function(broadcast_bias, (x, b_node))
            o_node.replace_all_uses_with(new)
            gm.graph.erase_node(o_node)
            state.renamed[block.o.node] = new.name
    remove_dead_nodes(gm)
    return finish(gm)
