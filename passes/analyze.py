"""Find attention and FFN blocks from the graph's data flow, not from module names.

The matchers live beside this file (`find_attention`, `find_ffn`); here they run in order, blocks
that share weights are checked for sharing them consistently, and every linear left over is listed
with the reason it was left alone.
"""

from __future__ import annotations

import torch
from torch import fx

from ..core.structures import AttentionBlock, EncoderStructure, FeedForwardBlock, LinearSite, SkippedLinear
from .find_attention import find_attention
from .find_ffn import find_ffn
from .graph_match import linear_site, linear_sources

aten = torch.ops.aten

Block = AttentionBlock | FeedForwardBlock


def _signature(block: Block) -> tuple:
    """What two blocks sharing weights must agree on: every weight in its role, and the shape of the block."""
    if isinstance(block, AttentionBlock):
        roles = (block.q, block.k, block.v, block.o, *block.score_linears)
        return ("attention", tuple((s.weight, s.bias) for s in roles), block.num_heads, block.head_dim)
    roles = (block.fc1, block.paired, block.fc2)
    return ("ffn", tuple((s.weight, s.bias) if s else None for s in roles), block.fc1_chunks)


def _inconsistent_sharing(blocks: list[Block], sites: dict[str, LinearSite]) -> dict[int, str]:
    """Blocks whose weights are also read elsewhere, or shared with a block of another shape: index -> reason."""
    owner = {site.node: i for i, block in enumerate(blocks) for site in block.sites}
    uses: dict[str, list[str]] = {}
    for node, site in sites.items():
        uses.setdefault(site.weight, []).append(node)
    dropped: dict[int, str] = {}
    for weight, nodes in uses.items():
        if len(nodes) < 2:
            continue
        holders = {owner[n] for n in nodes if n in owner}
        if not holders:
            continue
        outside = [n for n in nodes if n not in owner]
        signatures = {_signature(blocks[i]) for i in holders}
        biases = {sites[n].bias for n in nodes}
        if outside:
            reason = (f"shared weight {weight} is also read by {outside[0]}, outside any block; a shared weight "
                      "is pruned only when every use of it is in a block of the same shape")
        elif len(signatures) > 1 or len(biases) > 1:
            reason = (f"shared weight {weight} is used by blocks of different shapes or roles; a shared weight "
                      "is pruned only when every use of it is in a block of the same shape")
        else:
            continue
        for i in holders:
            dropped.setdefault(i, reason)
    return dropped


def find_structures(gm: fx.GraphModule, skip: tuple[str, ...] = ()) -> EncoderStructure:
    """Attention and FFN blocks of `gm`; every other linear is listed with a reason."""
    sites: dict[str, LinearSite] = {}
    for node in gm.graph.find_nodes(op="call_function", target=aten.linear.default):
        site = linear_site(gm, node)
        if site is not None:
            sites[node.name] = site
    used: set[str] = set()
    skipped: dict[str, str] = {}
    attention = find_attention(gm, sites, used, skipped, linear_sources(gm))
    ffn = find_ffn(gm, sites, used, skipped)
    blocks: list[Block] = [*attention, *ffn]
    while dropped := _inconsistent_sharing(blocks, sites):
        for i, reason in dropped.items():
            for site in blocks[i].sites:
                skipped[site.node] = reason
                used.discard(site.node)
        blocks = [b for i, b in enumerate(blocks) if i not in dropped]
    if skip:
        for block in [b for b in blocks if any(s in w.weight for s in skip for w in b.sites)]:
            for site in block.sites:
                skipped[site.node] = "skipped by PruningConfig.skip"
                used.discard(site.node)
            blocks.remove(block)
    structure = EncoderStructure(
        attention=[b for b in blocks if isinstance(b, AttentionBlock)],
        ffn=[b for b in blocks if isinstance(b, FeedForwardBlock)],
    )
    seen: set[str] = set()
    for name, site in sites.items():
        if name not in used and site.weight not in seen:
            seen.add(site.weight)
            reason = skipped.get(name, "not part of an attention or FFN block")
            structure.skipped.append(SkippedLinear(site.weight, reason))
    return structure
