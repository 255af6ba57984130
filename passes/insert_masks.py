"""Insert learnable masks: every prunable `linear(x, W, b)` becomes `linear(x, W*M, b*m)`."""

from __future__ import annotations

import torch
from torch import fx, nn

from ..core.config import PruningConfig
from ..core.errors import ConfigError
from ..core.learnable_mask import LearnableMask
from ..core.mask_functions import expand_blocks, expand_units, masked_bias, masked_weight
from ..core.pruning_state import MASK_CONTAINER, META_KEY, LinearMasks, MaskRef, PruningState
from ..core.structures import EncoderStructure, LinearSite


def _slug(name: str) -> str:
    return name.removesuffix(".weight").replace(".", "_")


def plan_masks(structure: EncoderStructure, config: PruningConfig) -> tuple[dict[str, tuple[str, tuple[int, ...]]], list[LinearMasks]]:
    """Decide which masks exist (key -> granularity, shape) and which axes they act on."""
    masks: dict[str, tuple[str, tuple[int, ...]]] = {}
    axes: dict[str, dict[str, MaskRef]] = {}

    def add(key, granularity, shape) -> MaskRef:
        masks[key] = (granularity, tuple(shape))
        return MaskRef(key)

    def bind(site: LinearSite, axis: str, ref: MaskRef) -> None:
        axes.setdefault(site.weight, {})[axis] = ref

    for block in structure.attention:
        if config.uses("head"):
            ref = add(_slug(block.name) + "__heads", "head", (block.num_heads,))
            ref = MaskRef(ref.key, block.head_dim)
            for site in (block.q, block.k, block.v):
                bind(site, "rows", ref)
            bind(block.o, "cols", ref)
        if config.uses("row") and config.prune_output_rows and block.o_residual:
            bind(block.o, "rows", add(_slug(block.o.weight) + "__rows", "row", (block.o.out_features,)))
    for block in structure.ffn:
        if config.uses("row"):
            ref = add(_slug(block.fc1.weight) + "__rows", "row", (block.fc1.out_features,))
            bind(block.fc1, "rows", ref)
            bind(block.fc2, "cols", ref)
            if config.prune_output_rows and block.fc2_residual:
                bind(block.fc2, "rows", add(_slug(block.fc2.weight) + "__rows", "row", (block.fc2.out_features,)))
    for site in structure.linears():
        if config.uses("block"):
            b = config.block_size
            if site.out_features % b or site.in_features % b:
                raise ConfigError(
                    f"block_size={b} does not divide {site.weight} of shape "
                    f"[{site.out_features}, {site.in_features}]: choose a block size that divides "
                    "both dimensions, or leave this matrix out with PruningConfig(skip=...)"
                )
            bind(site, "blocks", add(_slug(site.weight) + "__blocks", "block", (site.out_features // b, site.in_features // b)))
        if config.uses("unstructured"):
            bind(site, "elements", add(_slug(site.weight) + "__elements", "unstructured", (site.out_features, site.in_features)))
    linears = [LinearMasks(site, **axes.get(site.weight, {})) for site in structure.linears()]
    return masks, linears


def insert_masks(gm: fx.GraphModule, structure: EncoderStructure, config: PruningConfig) -> fx.GraphModule:
    masks, linears = plan_masks(structure, config)
    container = nn.ModuleDict(
        {
            key: LearnableMask(gran, shape, config.initial_threshold, config.initial_score)
            for key, (gran, shape) in masks.items()
        }
    )
    first = next(n for n in gm.graph.nodes if n.op not in ("placeholder", "get_attr"))
    device = next(iter(gm.parameters())).device
    gm.add_submodule(MASK_CONTAINER, container.to(device))
    graph = gm.graph
    produced: dict[tuple[str, int, str], fx.Node] = {}

    def mask_node(ref: MaskRef | None, how: str = "units") -> fx.Node | None:
        if ref is None:
            return None
        base_key = (ref.key, 1, "raw")
        if base_key not in produced:
            with graph.inserting_before(first):
                produced[base_key] = graph.call_module(f"{MASK_CONTAINER}.{ref.key}", ())
        if how == "blocks":
            k = (ref.key, config.block_size, "blocks")
            if k not in produced:
                with graph.inserting_before(first):
                    produced[k] = graph.call_function(expand_blocks, (produced[base_key], config.block_size))
            return produced[k]
        if ref.unit == 1:
            return produced[base_key]
        k = (ref.key, ref.unit, "units")
        if k not in produced:
            with graph.inserting_before(first):
                produced[k] = graph.call_function(expand_units, (produced[base_key], ref.unit))
        return produced[k]

    nodes = {n.name: n for n in graph.nodes}
    for lm in linears:
        linear = nodes[lm.site.node]
        weight, bias = linear.args[1], (linear.args[2] if len(linear.args) > 2 else None)
        rows, cols = mask_node(lm.rows), mask_node(lm.cols)
        elements = mask_node(lm.blocks, "blocks")
        extra = mask_node(lm.elements)
        with graph.inserting_before(linear):
            if elements is not None and extra is not None:
                elements = graph.call_function(torch.mul, (elements, extra))
            elif extra is not None:
                elements = extra
            kwargs = {k: v for k, v in (("rows", rows), ("cols", cols), ("elements", elements)) if v is not None}
            if kwargs:
                new_w = graph.call_function(masked_weight, (weight,), kwargs)
                linear.args = (linear.args[0], new_w, *linear.args[2:])
            if bias is not None and rows is not None:
                new_b = graph.call_function(masked_bias, (bias, rows))
                linear.args = (*linear.args[:2], new_b, *linear.args[3:])
    graph.lint()
    gm.recompile()
    gm.meta[META_KEY] = PruningState(config=config, structure=structure, linears=linears)
    return gm
