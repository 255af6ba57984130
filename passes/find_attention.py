"""Attention blocks from data flow: where scores meet values, the linears Q, K and V come from, O after.

Scores may carry additive terms (a relative-position bias, DeBERTa's content-to-position and
position-to-content terms); Q, K and V may be three row ranges of one fused linear; rotary
embeddings may turn Q and K. `head_flow.trace_heads` then follows the heads through all of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx

from ..core.errors import UnsupportedStructure
from ..core.structures import AttentionBlock, LinearSite
from .dropout import is_dropout
from .graph_match import (
    CASTS,
    MATMULS,
    common_name,
    forward_to_linear,
    is_op,
    parameters_behind,
    residual_add,
    users_of,
)
from .head_flow import trace_heads

aten = torch.ops.aten
_SOFTMAX = {aten.softmax.int, aten._softmax.default}
_RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}


@dataclass
class _Core:
    node: fx.Node  # the SDPA call, or the softmax of a matmul-softmax-matmul chain
    q: fx.Node
    k: fx.Node
    v: fx.Node
    out: fx.Node
    terms: list[fx.Node] = field(default_factory=list)  # what is added to the scores besides Q K^T


def _single(sources, node) -> fx.Node | None:
    found = sources.get(node, frozenset())
    return next(iter(found)) if len(found) == 1 else None


def _score_chain(softmax: fx.Node, limit: int = 2000) -> tuple[list[fx.Node], set[fx.Node]]:
    """Matmuls the scores are computed from, and every node between them and the softmax."""
    matmuls, seen, stack = [], set(), [softmax.args[0]]
    while stack and len(seen) < limit:
        node = stack.pop()
        if not isinstance(node, fx.Node) or node in seen or node.op in ("placeholder", "get_attr"):
            continue
        seen.add(node)
        if is_op(node, MATMULS):
            matmuls.append(node)
            continue
        if is_op(node, {aten.linear.default}):
            continue
        stack.extend(node.all_input_nodes)
    return matmuls, seen


def _descendants_within(start: fx.Node, allowed: set[fx.Node]) -> set[fx.Node]:
    found, stack = set(), [start]
    while stack:
        node = stack.pop()
        for user in node.users:
            if user in allowed and user not in found:
                found.add(user)
                stack.append(user)
    return found


def _is_tensor(node: fx.Node) -> bool:
    return isinstance(node.meta.get("val"), torch.Tensor)


def _softmax_core(gm, softmax: fx.Node, sources) -> _Core | None:
    probs, stack = {softmax}, [softmax]
    while stack:
        for user in users_of(stack.pop()):
            if user not in probs and (is_dropout(gm, user) or is_op(user, CASTS | _RESHAPES)):
                probs.add(user)
                stack.append(user)
    pv = [u for p in probs for u in users_of(p) if is_op(u, MATMULS) and u.args[0] is p]
    if len(pv) != 1:
        return None
    v = pv[0].args[1]
    lv = _single(sources, v)
    matmuls, between = _score_chain(softmax)
    if lv is None or not matmuls:
        return None
    x = lv.args[0]
    content, cross = [], []
    for m in matmuls:
        lq, lk = _single(sources, m.args[0]), _single(sources, m.args[1])
        if lq is None or lk is None:
            continue
        if lq.args[0] is x and lk.args[0] is x:
            content.append(m)
        elif lk.args[0] is x:
            cross.append(m)
    if len(content) != 1 and len(cross) != 1:
        return None
    qk = content[0] if len(content) == 1 else cross[0]  # a cross-attention is reported by the match
    chain = _descendants_within(qk, between) | {qk}
    chain.add(softmax)
    terms = []
    for node in chain:
        for arg in node.all_input_nodes:
            if arg not in chain and node is not qk and arg not in terms and _is_tensor(arg):
                terms.append(arg)
    return _Core(softmax, qk.args[0], qk.args[1], v, pv[0], terms)


def attention_cores(gm: fx.GraphModule, sources) -> list[_Core]:
    """Every SDPA call and every matmul-softmax-matmul chain."""
    cores: list[_Core] = []
    for node in gm.graph.nodes:
        if is_op(node, {aten.scaled_dot_product_attention.default}):
            q, k, v = node.args[:3]
            mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
            cores.append(_Core(node, q, k, v, node, [mask] if isinstance(mask, fx.Node) and _is_tensor(mask) else []))
        elif is_op(node, _SOFTMAX):
            core = _softmax_core(gm, node, sources)
            if core is not None:
                cores.append(core)
    return cores


def _tables_behind(gm, node: fx.Node) -> list[str]:
    """The 2-D parameters (embedding tables) a value is computed from."""
    found = []
    for target in parameters_behind(gm, node):
        owner, _, name = target.rpartition(".")
        value = getattr(gm.get_submodule(owner) if owner else gm, name, None)
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            found.append(target)
    return found


def _describe_term(gm, term: fx.Node, own: set[fx.Node], sources, sites) -> str | None:
    """Where an additive score term comes from, or None for the attention mask (inputs only)."""
    val = term.meta.get("val")
    if isinstance(val, torch.Tensor) and val.dim() == 0:
        return None
    linears = [n for n in sources.get(term, ()) if n not in own]
    if linears:
        weights = ", ".join(sorted(dict.fromkeys(sites[n.name].weight if n.name in sites else n.name for n in linears)))
        tables = sorted({t for n in linears for t in _tables_behind(gm, n.args[0])})
        return f"projections {weights}" + (f" of {', '.join(tables)}" if tables else "")
    tables = _tables_behind(gm, term)
    return ", ".join(tables) if tables else None


def _match(gm, core: _Core, sites: dict[str, LinearSite], sources) -> tuple[AttentionBlock | None, list[fx.Node], str | None]:
    """The block at `core`, the linear nodes it claims, or why it is left alone."""
    lq, lk, lv = (_single(sources, n) for n in (core.q, core.k, core.v))
    lo = forward_to_linear(gm, core.out)
    found = {"q": lq, "k": lk, "v": lv, "o": lo}
    missing = [r for r, n in found.items() if n is None or n.name not in sites]
    nodes = [n for n in found.values() if n is not None]
    if missing:
        return None, nodes, f"attention at {core.node.name}: could not trace {'/'.join(missing).upper()} to a linear"
    if not (lq.args[0] is lk.args[0] is lv.args[0]):
        return None, nodes, "Q, K and V do not read the same input (cross-attention is left alone)"
    term_linears = [n for t in core.terms for n in sources.get(t, ()) if n not in (lq, lk, lv)]
    extra = list(dict.fromkeys(term_linears))
    described = [d for t in core.terms if (d := _describe_term(gm, t, {lq, lk, lv}, sources, sites))]
    nodes += extra
    where = f"the scores take an additive term from {'; '.join(described)}; " if described else ""
    unknown = [n.name for n in extra if n.name not in sites]
    if unknown:
        return None, nodes, f"Q/K/V found; {where}it comes from linears {unknown} without parameter weights; left alone"
    q_val = core.q.meta.get("val")
    head_dim = q_val.shape[-1] if isinstance(q_val, torch.Tensor) else None
    q, k, v, o = (sites[n.name] for n in (lq, lk, lv, lo))
    repeats = [lq, lk, lv].count(lq)
    if not isinstance(head_dim, int) or q.out_features % (repeats * head_dim):
        return None, nodes, "Q/K/V widths or head size could not be read from the graph"
    heads = q.out_features // (repeats * head_dim)
    seeds = {}
    for node in dict.fromkeys([lq, lk, lv, *extra]):
        width = sites[node.name].out_features
        if width % (heads * head_dim):
            return None, nodes, f"Q/K/V found; {where}{node.name} is not {heads} heads x {head_dim} wide; left alone"
        seeds[node] = width // (heads * head_dim)
    if o.in_features != heads * head_dim:
        return None, nodes, "head size does not divide the Q/K/V width"
    try:
        flow = trace_heads(gm, seeds, lo, heads, head_dim)
    except UnsupportedStructure as exc:
        layout = f" (the fused QKV linear's rows were read as [{repeats}][heads][head_dim])" if repeats > 1 else ""
        return None, nodes, f"Q/K/V found; {where}{exc}{layout}; not supported, left alone"
    residual = residual_add(gm, lo, lq.args[0]) if o.out_features == q.in_features else None
    block = AttentionBlock(
        common_name(q.weight, o.weight), q, k, v, o, heads, head_dim, core.node.name,
        tuple(flow.shape_args), residual, tuple(sites[n.name] for n in extra), tuple(flow.head_terms),
        tuple(dict.fromkeys(described)),
    )
    return block, nodes, None


def find_attention(gm: fx.GraphModule, sites, used: set[str], skipped: dict[str, str], sources) -> list[AttentionBlock]:
    blocks = []
    for core in attention_cores(gm, sources):
        block, nodes, reason = _match(gm, core, sites, sources)
        if block is not None and any(n.name in used for n in nodes):
            block, reason = None, "a linear is shared with another block"
        if block is None:
            for n in nodes:
                if n.name in sites and n.name not in used:
                    skipped.setdefault(n.name, reason)
            continue
        blocks.append(block)
        used.update(n.name for n in nodes)
    return blocks
