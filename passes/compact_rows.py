"""compact_rows: remove pruned FFN rows (pairs of rows in a gated FFN), and pruned output rows of O and FC2."""

from __future__ import annotations

import torch
from torch import fx

from ..core.latency import Compacting
from ..core.mask_functions import broadcast_bias, expand_units
from ..core.pruning_state import LinearMasks, PruningState, pruning_state
from ..core.structures import LinearSite
from .graph_utils import add_index_buffer, finish, get_tensor, kept_indices, nodes_by_name, remove_dead_nodes, set_tensor

_aten = torch.ops.aten


def _slice(gm, target: str | None, index: torch.Tensor, dim: int) -> None:
    if target is None:
        return
    t = get_tensor(gm, target)
    set_tensor(gm, target, t.index_select(dim, index.to(t.device)))


def _site_node(state: PruningState, nodes, site: LinearSite) -> fx.Node:
    return nodes[state.renamed.get(site.node, site.node)]


def _bias_target(node: fx.Node, site: LinearSite) -> str | None:
    """A linear's bias, or the bias a `broadcast_bias` node stands on."""
    if node.target is broadcast_bias:
        return node.args[1].target
    return site.bias


def _compact_ffn_rows(gm, state: PruningState, nodes) -> None:
    done: set[str] = set()
    for block in state.structure.ffn:
        lm = state.masks_of(block.fc1.weight)
        if lm is None or lm.rows is None:
            continue
        mask = state.frozen[lm.rows.key]
        rows = kept_indices(expand_units(mask, lm.rows.unit))
        if len(rows) == block.rows:
            continue
        if block.fc1.weight not in done:
            pairs = kept_indices(expand_units(mask, lm.rows.unit, block.fc1_chunks))
            _slice(gm, block.fc1.weight, pairs, 0)
            _slice(gm, block.fc1.bias, pairs, 0)
            if block.paired is not None:
                _slice(gm, block.paired.weight, rows, 0)
                _slice(gm, block.paired.bias, rows, 0)
            _slice(gm, block.fc2.weight, rows, 1)
            done.add(block.fc1.weight)
        if len(rows) == 0:
            fc2 = _site_node(state, nodes, block.fc2)
            x = nodes[block.fc1.node].args[0]
            bias = block.fc2.bias
            if bias is None:
                bias = block.name.replace(".", "_") + "__no_rows_bias"
                w = get_tensor(gm, block.fc2.weight)
                gm.register_buffer(bias, torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
            with gm.graph.inserting_before(fc2):
                new = gm.graph.call_function(broadcast_bias, (x, gm.graph.get_attr(bias)))
            fc2.replace_all_uses_with(new)
            gm.graph.erase_node(fc2)
            nodes[new.name] = new
            state.renamed[block.fc2.node] = new.name


def _compact_output_rows(gm, state: PruningState, nodes, lm: LinearMasks, site: LinearSite, residual: str | None,
                         done: set[str], compacting: Compacting | None) -> None:
    """out = residual + f(W x + b) becomes residual.index_add(-1, kept, f(W[kept] x + b[kept])), where
    `compacting` says the saved rows pay for the scatter (otherwise the pruned rows stay, as zeros).

    `site` is one use of the weight; a shared weight is sliced at its first use only.
    """
    if lm.rows is None or residual is None or lm.rows.repeat != 1:
        return
    rows = kept_indices(expand_units(state.frozen[lm.rows.key], lm.rows.unit))
    if len(rows) == site.out_features:
        return
    if site.weight not in done and compacting is not None and lm.blocks is None:  # block-sparse: always compacted
        out, inp = get_tensor(gm, site.weight).shape
        if not compacting(out, inp, len(rows)):
            return
    node = _site_node(state, nodes, site)
    if site.weight not in done:
        _slice(gm, site.weight, rows, 0)
        _slice(gm, _bias_target(node, site), rows, 0)
        done.add(site.weight)
    add = nodes[residual]
    path_out, skip = add.args
    if not _reaches(path_out, node):
        path_out, skip = skip, path_out
    if len(rows) == 0:
        add.replace_all_uses_with(skip)
        gm.graph.erase_node(add)
        return
    index = add_index_buffer(gm, site.weight.removesuffix(".weight").replace(".", "_") + "__kept_rows", rows, add)
    with gm.graph.inserting_before(add):
        new = gm.graph.call_function(_aten.index_add.default, (skip, -1, index, path_out))
    add.replace_all_uses_with(new)
    gm.graph.erase_node(add)


def _reaches(node: fx.Node, source: fx.Node) -> bool:
    while isinstance(node, fx.Node):
        if node is source:
            return True
        node = node.args[0] if node.args else None
    return False


def compact_rows(gm: fx.GraphModule, compacting: Compacting | None = None) -> fx.GraphModule:
    """compacting(out_features, in_features, kept rows): whether to drop a dense matrix's pruned output rows
    (None: always), as the cost model's `compacting_pays` decides in convert. Block-masked matrices are
    always compacted: the block kernel skips zero blocks but writes every output row, so their zero rows
    would not be free (measured on MiniLM: compacted as fast or up to 6 % faster)."""
    state = pruning_state(gm, "frozen")
    nodes = nodes_by_name(gm)
    _compact_ffn_rows(gm, state, nodes)
    nodes = nodes_by_name(gm)
    done: set[str] = set()
    for block in state.structure.attention:
        lm = state.masks_of(block.o.weight)
        if lm is not None:
            _compact_output_rows(gm, state, nodes, lm, block.o, block.o_residual, done, compacting)
    for block in state.structure.ffn:
        lm = state.masks_of(block.fc2.weight)
        if lm is not None:
            _compact_output_rows(gm, state, nodes, lm, block.fc2, block.fc2_residual, done, compacting)
    remove_dead_nodes(gm)
    return finish(gm)
