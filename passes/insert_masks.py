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


def _block_keys(structure: EncoderStructure) -> dict[int, str]:
    """A head-mask key stem per attention block: its name, made unique unless the blocks share their weights."""
    keys: dict[int, str] = {}
    owners: dict[str, tuple] = {}
    for block in structure.attention:
        weights = tuple(site.weight for site in block.sites)
        stem = _slug(block.name)
        key, n = stem, 1
        while key in owners and owners[key] != weights:
            n += 1
            key = f"{stem}_{n}"
        owners[key] = weights
        keys[id(block)] = key
    return keys


def _row_unit(config: PruningConfig, rows: int) -> int:
    """Rows are pruned a block at a time when blocks are pruned too: compacting whole block rows keeps the
    kept blocks aligned, so the matrix still tiles and runs block-sparse (single rows would leave sides the
    block size does not divide, and the matrix dense)."""
    return config.block_size if config.uses("block") and rows % config.block_size == 0 else 1


def plan_masks(structure: EncoderStructure, config: PruningConfig) -> tuple[dict[str, tuple[str, tuple[int, ...]]], list[LinearMasks]]:
    """Decide which masks exist (key -> granularity, shape) and which axes they act on.

    Masks belong to weights: a weight read by several linears (a layer shared by every layer, a
    projection applied to two inputs) gets one set of masks, applied at each of its uses.
    """
    masks: dict[str, tuple[str, tuple[int, ...]]] = {}
    axes: dict[str, dict[str, MaskRef]] = {}
    keys = _block_keys(structure)

    def add(key, granularity, shape) -> MaskRef:
        masks[key] = (granularity, tuple(shape))
        return MaskRef(key)

    def bind(site: LinearSite, axis: str, ref: MaskRef) -> None:
        axes.setdefault(site.weight, {})[axis] = ref

    def add_rows(weight: str, rows: int) -> MaskRef:
        unit = _row_unit(config, rows)
        return MaskRef(add(_slug(weight) + "__rows", "row", (rows // unit,)).key, unit)

    for block in structure.attention:
        if config.uses("head"):
            key = add(keys[id(block)] + "__heads", "head", (block.num_heads,)).key
            for site in block.head_sites:
                bind(site, "rows", MaskRef(key, block.head_dim, block.row_repeat(site)))
            bind(block.o, "cols", MaskRef(key, block.head_dim))
        if config.uses("row") and config.prune_output_rows and block.o_residual:
            bind(block.o, "rows", add_rows(block.o.weight, block.o.out_features))
    for block in structure.ffn:
        if config.uses("row"):
            rows = add_rows(block.fc1.weight, block.rows)
            bind(block.fc1, "rows", MaskRef(rows.key, rows.unit, block.fc1_chunks))
            if block.paired is not None:
                bind(block.paired, "rows", rows)
            bind(block.fc2, "cols", rows)
            if config.prune_output_rows and block.fc2_residual:
                bind(block.fc2, "rows", add_rows(block.fc2.weight, block.fc2.out_features))
    uses: dict[str, list[LinearSite]] = {}
    for site in structure.linears():
        uses.setdefault(site.weight, []).append(site)
    for weight, sites in uses.items():
        site = sites[0]
        if config.uses("block"):
            b = config.block_size
            if site.out_features % b or site.in_features % b:
                raise ConfigError(
                    f"block_size={b} does not divide {site.weight} of shape "
                    f"[{site.out_features}, {site.in_features}]: choose a block size that divides "
                    "both dimensions, or leave this matrix out with PruningConfig(skip=...)"
                )
            bind(site, "blocks", add(_slug(weight) + "__blocks", "block", (site.out_features // b, site.in_features // b)))
        if config.uses("unstructured"):
            bind(site, "elements", add(_slug(weight) + "__elements", "unstructured", (site.out_features, site.in_features)))
    linears = [
        LinearMasks(sites[0], **axes.get(weight, {}), uses=tuple(s.node for s in sites[1:]))
        for weight, sites in uses.items()
    ]
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
        if ref.unit == 1 and ref.repeat == 1:
            return produced[base_key]
        k = (ref.key, ref.unit, ref.repeat)
        if k not in produced:
            with graph.inserting_before(first):
                produced[k] = graph.call_function(expand_units, (produced[base_key], ref.unit, ref.repeat))
        return produced[k]

    nodes = {n.name: n for n in graph.nodes}
    order = {n: i for i, n in enumerate(graph.nodes)}
    for lm in linears:
        uses = sorted((nodes[name] for name in lm.nodes), key=order.__getitem__)
        linear = uses[0]
        weight, bias = linear.args[1], (linear.args[2] if len(linear.args) > 2 else None)
        rows, cols = mask_node(lm.rows), mask_node(lm.cols)
        elements = mask_node(lm.blocks, "blocks")
        extra = mask_node(lm.elements)
        new_w = new_b = None
        with graph.inserting_before(linear):
            if elements is not None and extra is not None:
                elements = graph.call_function(torch.mul, (elements, extra))
            elif extra is not None:
                elements = extra
            kwargs = {k: v for k, v in (("rows", rows), ("cols", cols), ("elements", elements)) if v is not None}
            if kwargs:
                new_w = graph.call_function(masked_weight, (weight,), kwargs)
            if bias is not None and rows is not None:
                new_b = graph.call_function(masked_bias, (bias, rows))
        for use in uses:
            if new_w is not None:
                use.args = (use.args[0], new_w, *use.args[2:])
            if new_b is not None:
                use.args = (*use.args[:2], new_b, *use.args[3:])
    graph.lint()
    gm.recompile()
    gm.meta[META_KEY] = PruningState(config=config, structure=structure, linears=linears)
    return gm
