"""FFN blocks from data flow: FC1 -> elementwise activation -> FC2, plain or gated.

A gated FFN (GLU, GeGLU, SwiGLU) computes act(input) * gate, with input and gate either the two
halves of one up-projection (`chunk(2, -1)`) or two up-projections reading the same input. Row r of
the FFN is then a pair of up-projection rows; a row mask covers both, and the block is accepted only
when the activation path maps zeros to zeros, so a pruned pair vanishes exactly.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from ..core.structures import FeedForwardBlock, LinearSite
from .dropout import is_dropout
from .graph_match import common_name, is_linear, is_op, joins_residual, residual_add

aten = torch.ops.aten

_ELEMENTWISE = {
    aten.gelu.default, aten.relu.default, aten.silu.default, aten.tanh.default,
    aten.sigmoid.default, aten.erf.default, aten.pow.Tensor_Scalar, aten.mul.Tensor,
    aten.add.Tensor, aten.sub.Tensor, aten.div.Tensor, aten.mul.Scalar, aten.add.Scalar,
    aten.gelu_.default, aten.relu_.default, aten.neg.default, aten.exp.default,
    aten._to_copy.default, aten.to.dtype,
}
_CHUNK = {aten.chunk.default}


def _is_chunk_of(node: fx.Node, fc1: fx.Node) -> bool:
    """`chunk(fc1, 2, -1)`: FC1's rows split into input and gate halves."""
    if not is_op(node, _CHUNK) or node.args[0] is not fc1:
        return False
    chunks = node.args[1]
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    val = fc1.meta.get("val")
    rank = val.dim() if isinstance(val, torch.Tensor) else None
    return chunks == 2 and rank is not None and dim % rank == rank - 1


def _path(gm, fc1: fx.Node) -> tuple[fx.Node, list[fx.Node], fx.Node | None, int] | None:
    """(FC2, the nodes between, a second up-projection, FC1's chunks) if FC1 feeds only an FFN path."""
    members: set[fx.Node] = {fc1}
    inner: list[fx.Node] = []
    frontier = [fc1]
    target = None
    chunks = 1
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user in members:
                continue
            if is_linear(user):
                if user.args[0] is not node or node is fc1 or (target is not None and target is not user):
                    return None
                target = user
                continue
            if _is_chunk_of(user, fc1):
                chunks = 2
            elif not (is_op(user, _ELEMENTWISE) or is_dropout(gm, user) or (is_op(user, {operator.getitem}) and is_op(node, _CHUNK))):
                return None
            members.add(user)
            inner.append(user)
            frontier.append(user)
    if target is None or not inner:
        return None
    paired = None
    for node in inner:
        for arg in node.all_input_nodes:
            if arg in members:
                continue
            if paired is None and is_linear(arg) and arg.args[0] is fc1.args[0] and all(u in members for u in arg.users):
                paired = arg
            elif arg is not paired:
                return None
    if paired is not None and chunks > 1:
        return None
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    inner.sort(key=order.__getitem__)
    return target, inner, paired, chunks


def _zero_preserving(fc1: fx.Node, fc2: fx.Node, inner: list[fx.Node], widths: dict[fx.Node, int]) -> bool:
    """Run the activation path on zeros: f(0) must be 0 for a pruned row to vanish."""
    env: dict[fx.Node, object] = {n: torch.zeros(2, w) for n, w in widths.items()}
    for node in inner:
        if node.op == "call_module":
            env[node] = env[node.args[0]]
            continue
        args = [env.get(a, a) if isinstance(a, fx.Node) else a for a in node.args]
        if any(isinstance(a, fx.Node) for a in args):
            return False
        env[node] = node.target(*args, **node.kwargs)
    out = env[fc2.args[0]]
    return isinstance(out, torch.Tensor) and bool((out == 0).all())


def _activation_name(inner: list[fx.Node], gated: bool) -> str:
    names = [n.target.__name__.split(".")[0] if n.op == "call_function" else "dropout" for n in inner]
    core = [n for n in names if n not in ("dropout", "mul", "add", "div", "sub", "pow", "chunk", "getitem", "_to_copy", "to")]
    if set(core) == {"tanh"} and "pow" in names:
        core = ["gelu (tanh approximation)"]
    name = "+".join(dict.fromkeys(core or names))
    return f"{name}, gated" if gated else name


def find_ffn(gm: fx.GraphModule, sites: dict[str, LinearSite], used: set[str], skipped: dict[str, str]) -> list[FeedForwardBlock]:
    blocks = []
    for node1 in gm.graph.find_nodes(op="call_function", target=aten.linear.default):
        name = node1.name
        if name not in sites or name in used:
            continue
        found = _path(gm, node1)
        if found is None:
            continue
        node2, inner, paired_node, chunks = found
        if node2.name not in sites or node2.name in used:
            continue
        if paired_node is not None and (paired_node.name not in sites or paired_node.name in used):
            continue
        fc1, fc2 = sites[name], sites[node2.name]
        paired = sites[paired_node.name] if paired_node is not None else None
        if fc1.out_features % chunks or fc2.in_features != fc1.out_features // chunks:
            continue
        if paired is not None and paired.out_features != fc1.out_features:
            continue
        if fc2.out_features != fc1.in_features and not joins_residual(gm, node2, node1.args[0]):
            continue  # an encoder FFN returns to the residual stream it read from
        widths = {node1: fc1.out_features, **({paired_node: paired.out_features} if paired else {})}
        if not _zero_preserving(node1, node2, inner, widths):
            for n in (name, paired_node.name if paired_node is not None else None):
                if n:
                    skipped[n] = "FFN activation does not map 0 to 0, so rows cannot be removed exactly"
            continue
        residual = residual_add(gm, node2, node1.args[0])
        gated = paired is not None or chunks > 1
        blocks.append(
            FeedForwardBlock(
                common_name(fc1.weight, fc2.weight), fc1, fc2, _activation_name(inner, gated), residual, paired, chunks
            )
        )
        used.update(n for n in (name, node2.name, paired_node.name if paired_node is not None else None) if n)
    return blocks
