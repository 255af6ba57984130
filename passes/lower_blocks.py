"""lower_blocks: block-sparse linears -> `torch.ops.mlprune.block_sparse_linear` on packed blocks."""

from __future__ import annotations

import warnings

import torch
from torch import fx

from ..core.pruning_state import pruning_state
from .graph_utils import finish, get_tensor, nodes_by_name

DEFAULT_MAX_DENSITY = 0.7  # measured break-even vs ONNX Runtime dense GEMM: BENCHMARKS.md


def block_mask_of(weight: torch.Tensor, block: int) -> torch.Tensor:
    """1 for every b x b block of `weight` holding a nonzero, else 0."""
    out, inp = weight.shape
    tiles = weight.detach().reshape(out // block, block, inp // block, block)
    return (tiles.abs().amax(dim=(1, 3)) > 0).to(torch.float32)


def lower_blocks(gm: fx.GraphModule, max_density: float = DEFAULT_MAX_DENSITY) -> fx.GraphModule:
    """Replace each block-masked linear whose kept-block density is below `max_density`.

    The blocks are read from the frozen, compacted weight itself: skipping an
    all-zero block changes nothing, so the result is exact even after heads and
    rows moved the mask's coordinates. Denser matrices stay dense, where a
    tuned dense GEMM is faster than any sparse kernel.
    """
    from ..runtime.ops import SUPPORTED_BLOCK_SIZES, load_library, pack_blocks

    state = pruning_state(gm, "frozen")
    block = state.config.block_size
    if block not in SUPPORTED_BLOCK_SIZES:
        return gm
    load_library()
    nodes = nodes_by_name(gm)
    skipped_dtypes: set[torch.dtype] = set()
    op = torch.ops.mlprune.block_sparse_linear.default
    for lm in state.linears:
        uses = [(name, nodes.get(state.renamed.get(name, name))) for name in lm.nodes]
        uses = [(name, node) for name, node in uses if node is not None and node.target is torch.ops.aten.linear.default]
        if lm.blocks is None or not uses:
            continue
        weight = get_tensor(gm, lm.site.weight)
        if weight.dtype != torch.float32:
            skipped_dtypes.add(weight.dtype)
            continue
        out, inp = weight.shape
        if out == 0 or inp == 0 or out % block or inp % block:
            continue
        mask = block_mask_of(weight, block)
        density = float(mask.mean())
        if density >= max_density:
            continue
        packed = pack_blocks(weight.detach().float(), mask, block)
        owner = lm.site.weight.removesuffix(".weight")
        owner_module = gm.get_submodule(owner) if "." in lm.site.weight else gm
        prefix = "" if owner_module is gm else owner + "."
        for name in ("values", "row_ptr", "col_idx"):
            owner_module.register_buffer(f"block_{name}", getattr(packed, name).contiguous())
        for site_node, node in uses:  # every use of a shared weight reads the same packed blocks
            with gm.graph.inserting_before(node):
                attrs = [gm.graph.get_attr(f"{prefix}block_{name}") for name in ("values", "row_ptr", "col_idx")]
                bias = node.args[2] if len(node.args) > 2 else None
                new = gm.graph.call_function(op, (node.args[0], *attrs, bias, out))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            state.renamed[site_node] = new.name
        state.lowered[lm.site.weight] = density
    if skipped_dtypes:
        warnings.warn(
            f"block-sparse matrices stay dense: the native kernel computes in float32 and these weights are "
            f"{sorted(str(d) for d in skipped_dtypes)}; convert a float32 model (model.float()) to run them block-sparse",
            stacklevel=3,
        )
    return finish(gm)
