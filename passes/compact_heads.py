"""compact_heads: physically remove pruned attention heads."""

from __future__ import annotations

import operator

import torch
from torch import fx

from ..core.mask_functions import broadcast_bias, expand_units
from ..core.pruning_state import PruningState, pruning_state
from ..core.structures import AttentionBlock, HeadTerm
from .graph_utils import add_index_buffer, finish, get_tensor, kept_indices, nodes_by_name, remove_dead_nodes, set_tensor


def _zero_bias(gm: fx.GraphModule, block: AttentionBlock, name: str) -> str:
    w = get_tensor(gm, block.o.weight)
    gm.register_buffer(name, torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
    return name


def _slice(gm: fx.GraphModule, target: str | None, index: torch.Tensor, dim: int) -> None:
    if target is None:
        return
    t = get_tensor(gm, target)
    set_tensor(gm, target, t.index_select(dim, index.to(t.device)))


def _slice_weights(gm, block: AttentionBlock, mask: torch.Tensor, done: set[str]) -> None:
    """Rows of every per-head linear and O's columns, once per weight (shared weights have many uses)."""
    for site in block.head_sites:
        if site.weight not in done:
            rows = kept_indices(expand_units(mask, block.head_dim, block.row_repeat(site)))
            _slice(gm, site.weight, rows, 0)
            _slice(gm, site.bias, rows, 0)
            done.add(site.weight)
    if block.o.weight not in done:
        _slice(gm, block.o.weight, kept_indices(expand_units(mask, block.head_dim)), 1)
        done.add(block.o.weight)


def _rewrite_shapes(gm, block: AttentionBlock, kept: int, nodes) -> None:
    for arg in block.shape_args:
        node = nodes[arg.node]
        shape = list(node.args[1])
        value = kept * arg.multiple
        if arg.kind == "batch_heads":
            size = next(a for a in shape[arg.index].args if not isinstance(a, int))
            with gm.graph.inserting_before(node):
                value = gm.graph.call_function(operator.mul, (value, size))
        shape[arg.index] = value
        node.args = (node.args[0], shape, *node.args[2:])


def _slice_terms(gm, block: AttentionBlock, heads: torch.Tensor, nodes) -> None:
    """Tensors from outside the block with a slice per head: read only the kept heads' slices."""
    for i, term in enumerate(block.head_terms):
        node = nodes[term.node]
        index = _term_index(term, heads, block.num_heads)
        name = f"{block.name.replace('.', '_')}__kept_heads_{i}"
        buffer = add_index_buffer(gm, name, index, node)
        with gm.graph.inserting_before(node):
            picked = gm.graph.call_function(torch.ops.aten.index_select.default, (node.args[term.arg], term.axis, buffer))
        args = list(node.args)
        args[term.arg] = picked
        node.args = tuple(args)


def _term_index(term: HeadTerm, heads: torch.Tensor, num_heads: int) -> torch.Tensor:
    outer = torch.arange(term.outer)[:, None, None] * num_heads * term.inner
    inner = torch.arange(term.inner)[None, None, :]
    return (outer + heads[None, :, None] * term.inner + inner).reshape(-1)


def _drop_block(gm, state: PruningState, block: AttentionBlock, nodes) -> None:
    """No head left: O's output is its bias at every position."""
    o_node = nodes[state.renamed.get(block.o.node, block.o.node)]
    x = nodes[block.q.node].args[0]
    bias = block.o.bias or _zero_bias(gm, block, f"{block.name.replace('.', '_')}__no_heads_bias")
    with gm.graph.inserting_before(o_node):
        b_node = gm.graph.get_attr(bias)
        new = gm.graph.call_function(broadcast_bias, (x, b_node))
    o_node.replace_all_uses_with(new)
    gm.graph.erase_node(o_node)
    state.renamed[block.o.node] = new.name


def compact_heads(gm: fx.GraphModule) -> fx.GraphModule:
    """Slice per-head rows (Q, K, V, position projections) and O's columns down to the kept heads.

    Reshapes written with -1 absorb the new head count; head counts the analysis found in shape
    arguments are rewritten, and tensors from outside the block with a slice per head are indexed.
    A block with no head left becomes O's bias.
    """
    state = pruning_state(gm, "frozen")
    nodes = nodes_by_name(gm)
    done: set[str] = set()
    for block in state.structure.attention:
        lm = state.masks_of(block.q.weight)
        if lm is None or lm.rows is None:
            continue
        mask = state.frozen[lm.rows.key]
        heads = kept_indices(mask)
        kept = len(heads)
        if kept == block.num_heads:
            continue
        _slice_weights(gm, block, mask, done)
        _rewrite_shapes(gm, block, kept, nodes)
        if kept == 0:
            _drop_block(gm, state, block, nodes)
        else:
            _slice_terms(gm, block, heads, nodes)
    remove_dead_nodes(gm)
    return finish(gm)
