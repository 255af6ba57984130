"""Find attention and FFN blocks from the graph's data flow, not from module names."""

from __future__ import annotations

import torch
from torch import fx

from ..core.structures import (
    AttentionBlock,
    EncoderStructure,
    FeedForwardBlock,
    LinearSite,
    ShapeArg,
    SkippedLinear,
)
from .dropout import is_dropout

aten = torch.ops.aten

_SHAPE_OPS = {
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.transpose.int,
    aten.permute.default,
    aten.contiguous.default,
    aten.clone.default,
}
_RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
_SCALE_OPS = {aten.mul.Tensor, aten.div.Tensor, aten.mul.Scalar, aten.div.Scalar}
_SCORE_OPS = _SCALE_OPS | {aten.add.Tensor, aten.sub.Tensor, aten.masked_fill.Scalar, aten.where.self}
_MATMULS = {aten.matmul.default, aten.bmm.default}
_ELEMENTWISE = {
    aten.gelu.default, aten.relu.default, aten.silu.default, aten.tanh.default,
    aten.sigmoid.default, aten.erf.default, aten.pow.Tensor_Scalar, aten.mul.Tensor,
    aten.add.Tensor, aten.sub.Tensor, aten.div.Tensor, aten.mul.Scalar, aten.add.Scalar,
    aten.gelu_.default, aten.relu_.default, aten.neg.default, aten.exp.default,
}


def _is(node, targets) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def _linear_site(gm: fx.GraphModule, node: fx.Node) -> LinearSite | None:
    if not _is(node, {aten.linear.default}):
        return None
    w = node.args[1]
    b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    if not (isinstance(w, fx.Node) and w.op == "get_attr"):
        return None
    if b is not None and not (isinstance(b, fx.Node) and b.op == "get_attr"):
        return None
    weight = gm.get_parameter(w.target) if _is_param(gm, w.target) else None
    if weight is None or weight.dim() != 2:
        return None
    return LinearSite(node.name, w.target, b.target if b is not None else None, *weight.shape)


def _is_param(gm: fx.GraphModule, target: str) -> bool:
    try:
        gm.get_parameter(target)
        return True
    except AttributeError:
        return False


def _passes_through(gm, node) -> bool:
    return _is(node, _SHAPE_OPS) or is_dropout(gm, node) or (
        _is(node, _SCALE_OPS) and not isinstance(node.args[1], fx.Node)
    )


def _back_to_linear(gm, node, path: list[fx.Node]) -> fx.Node | None:
    """Walk producers through shape ops and scalar scaling to a linear."""
    while isinstance(node, fx.Node):
        if _is(node, {aten.linear.default}):
            return node
        if not _passes_through(gm, node):
            return None
        path.append(node)
        node = node.args[0]
    return None


def _forward_to_linear(gm, node, path: list[fx.Node]) -> fx.Node | None:
    """Follow single users through shape ops to a linear that takes the value as input."""
    while True:
        users = list(node.users)
        if len(users) != 1:
            return None
        user = users[0]
        if _is(user, {aten.linear.default}):
            return user if user.args[0] is node else None
        if not _passes_through(gm, user) or user.args[0] is not node:
            return None
        path.append(user)
        node = user


def _back_through_scores(node) -> fx.Node | None:
    """From softmax's input back through scaling/masking to the QK^T matmul."""
    seen = 0
    while isinstance(node, fx.Node) and seen < 16:
        seen += 1
        if _is(node, _MATMULS):
            return node
        if _is(node, {aten._to_copy.default, aten.to.dtype}) or _is(node, _SCORE_OPS):
            nxt = [a for a in node.args if isinstance(a, fx.Node) and _reaches_matmul(a)]
            if len(nxt) != 1:
                return None
            node = nxt[0]
            continue
        return None
    return None


def _reaches_matmul(node: fx.Node, depth: int = 8) -> bool:
    if depth == 0 or not isinstance(node, fx.Node):
        return False
    if _is(node, _MATMULS):
        return True
    if _is(node, _SCORE_OPS | {aten._to_copy.default, aten.to.dtype}):
        return any(_reaches_matmul(a, depth - 1) for a in node.args if isinstance(a, fx.Node))
    return False


def _attention_cores(gm) -> list[tuple[fx.Node, fx.Node, fx.Node, fx.Node, fx.Node]]:
    """(core, q, k, v, out) for every SDPA call and every matmul-softmax-matmul chain."""
    cores = []
    for node in gm.graph.nodes:
        if _is(node, {aten.scaled_dot_product_attention.default}):
            q, k, v = node.args[:3]
            cores.append((node, q, k, v, node))
        elif _is(node, {aten.softmax.int, aten._softmax.default}):
            qk = _back_through_scores(node.args[0])
            if qk is None:
                continue
            probs = node
            while len(probs.users) == 1 and (is_dropout(gm, next(iter(probs.users))) or _is(next(iter(probs.users)), {aten._to_copy.default, aten.to.dtype})):
                probs = next(iter(probs.users))
            pv = [u for u in probs.users if _is(u, _MATMULS) and u.args[0] is probs]
            if len(pv) != 1:
                continue
            cores.append((node, qk.args[0], qk.args[1], pv[0].args[1], pv[0]))
    return cores


def _shape_args(path: list[fx.Node], heads: int, head_dim: int) -> list[ShapeArg]:
    """Integers in reshapes that would go stale once heads are removed."""
    found = []
    for node in path:
        if not _is(node, _RESHAPES):
            continue
        shape = node.args[1]
        for i, s in enumerate(shape):
            if isinstance(s, int) and s > 0:
                if s == heads and i < len(shape) - 1 and shape[-1] == head_dim:
                    found.append(ShapeArg(node.name, i, "heads"))
                elif s == heads * head_dim and i == len(shape) - 1:
                    found.append(ShapeArg(node.name, i, "hidden"))
    return found


def _head_dim(path: list[fx.Node]) -> int | None:
    for node in path:
        if _is(node, _RESHAPES) and len(node.args[1]) == 4:
            last = node.args[1][-1]
            if isinstance(last, int) and last > 0:
                return last
    return None


def _residual_add(gm, linear: fx.Node, block_input: fx.Node) -> str | None:
    """The add joining `linear`'s output (maybe through dropout) to `block_input`."""
    node = linear
    while len(node.users) == 1 and is_dropout(gm, next(iter(node.users))):
        node = next(iter(node.users))
    users = list(node.users)
    if len(users) != 1 or not _is(users[0], {aten.add.Tensor}) or "alpha" in users[0].kwargs:
        return None
    add = users[0]
    if len(add.args) != 2 or set(add.args) != {node, block_input}:
        return None
    return add.name


def _joins_residual(gm, linear: fx.Node, block_input: fx.Node) -> bool:
    """True when `linear`'s output is added (or index_added, once compacted) to `block_input`."""
    if _residual_add(gm, linear, block_input):
        return True
    node = linear
    while len(node.users) == 1 and is_dropout(gm, next(iter(node.users))):
        node = next(iter(node.users))
    users = list(node.users)
    return (
        len(users) == 1
        and _is(users[0], {aten.index_add.default})
        and users[0].args[0] is block_input
        and users[0].args[3] is node
    )


def _common_name(*targets: str) -> str:
    parts = [t.split(".")[:-1] for t in targets]
    prefix = []
    for group in zip(*parts):
        if len(set(group)) != 1:
            break
        prefix.append(group[0])
    return ".".join(prefix) or targets[0].rsplit(".", 1)[0]


def _find_attention(gm, sites, used, skipped) -> list[AttentionBlock]:
    blocks = []
    for core, q_in, k_in, v_in, out in _attention_cores(gm):
        paths = {"q": [], "k": [], "v": [], "o": []}
        lq = _back_to_linear(gm, q_in, paths["q"])
        lk = _back_to_linear(gm, k_in, paths["k"])
        lv = _back_to_linear(gm, v_in, paths["v"])
        lo = _forward_to_linear(gm, out, paths["o"])
        found = {"q": lq, "k": lk, "v": lv, "o": lo}
        missing = [r for r, n in found.items() if n is None or n.name not in sites]
        if missing:
            for n in found.values():
                if n is not None and n.name in sites and n.name not in used:
                    skipped[n.name] = f"attention at {core.name}: could not trace {'/'.join(missing).upper()} to a linear"
            continue
        q, k, v, o = (sites[n.name] for n in (lq, lk, lv, lo))
        head_dim = _head_dim(paths["q"]) or _head_dim(paths["v"])
        reason = None
        if lq.args[0] is not lk.args[0] or lk.args[0] is not lv.args[0]:
            reason = "Q, K and V do not read the same input (cross-attention is left alone)"
        elif not head_dim or q.out_features != k.out_features or q.out_features != v.out_features:
            reason = "Q/K/V widths or head size could not be read from the graph"
        elif q.out_features % head_dim or o.in_features != v.out_features:
            reason = "head size does not divide the Q/K/V width"
        elif any(n.name in used for n in (lq, lk, lv, lo)):
            reason = "a linear is shared with another block"
        if reason:
            for n in (lq, lk, lv, lo):
                skipped.setdefault(n.name, reason)
            continue
        heads = q.out_features // head_dim
        shape_args = _shape_args(sum(paths.values(), []), heads, head_dim)
        residual = _residual_add(gm, lo, lq.args[0]) if o.out_features == q.in_features else None
        blocks.append(
            AttentionBlock(
                _common_name(q.weight, o.weight), q, k, v, o, heads, head_dim, core.name,
                tuple(shape_args), residual,
            )
        )
        used.update(n.name for n in (lq, lk, lv, lo))
    return blocks


def _zero_preserving(gm, fc1: fx.Node, fc2: fx.Node, inner: list[fx.Node]) -> bool:
    """Run the activation path on zeros: f(0) must be 0 for a pruned row to vanish."""
    env = {fc1: torch.zeros(2, 3)}
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


def _activation_path(gm, fc1: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    """The elementwise subgraph from fc1 to the next linear, if fc1 feeds only it."""
    inner: list[fx.Node] = []
    frontier = [fc1]
    members = {fc1}
    target = None
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user in members:
                continue
            if _is(user, {aten.linear.default}):
                if user.args[0] is not node or (target is not None and target is not user):
                    return None
                target = user
                continue
            if not (_is(user, _ELEMENTWISE) or is_dropout(gm, user)):
                return None
            if any(isinstance(a, fx.Node) and a not in members for a in user.args):
                return None
            members.add(user)
            inner.append(user)
            frontier.append(user)
    if target is None or not inner:
        return None
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    inner.sort(key=order.__getitem__)
    return target, inner


def _activation_name(gm, inner: list[fx.Node]) -> str:
    names = [n.target.__name__.split(".")[0] if n.op == "call_function" else "dropout" for n in inner]
    core = [n for n in names if n not in ("dropout", "mul", "add", "div", "sub", "pow")]
    return "+".join(dict.fromkeys(core or names))


def _find_ffn(gm, sites, used, skipped) -> list[FeedForwardBlock]:
    blocks = []
    for name, fc1 in sites.items():
        if name in used:
            continue
        node1 = gm.graph.find_nodes(op="call_function", target=aten.linear.default)
        node1 = next(n for n in node1 if n.name == name)
        found = _activation_path(gm, node1)
        if found is None:
            continue
        node2, inner = found
        if node2.name not in sites or node2.name in used:
            continue
        fc2 = sites[node2.name]
        if fc2.in_features != fc1.out_features:
            continue
        if fc2.out_features != fc1.in_features and not _joins_residual(gm, node2, node1.args[0]):
            continue  # an encoder FFN returns to the residual stream it read from
        if not _zero_preserving(gm, node1, node2, inner):
            skipped[name] = "FFN activation does not map 0 to 0, so rows cannot be removed exactly"
            continue
        residual = _residual_add(gm, node2, node1.args[0])
        blocks.append(
            FeedForwardBlock(_common_name(fc1.weight, fc2.weight), fc1, fc2, _activation_name(gm, inner), residual)
        )
        used.update((name, node2.name))
    return blocks


def find_structures(gm: fx.GraphModule, skip: tuple[str, ...] = ()) -> EncoderStructure:
    """Attention and FFN blocks of `gm`; every other linear is listed with a reason."""
    sites: dict[str, LinearSite] = {}
    for node in gm.graph.find_nodes(op="call_function", target=aten.linear.default):
        site = _linear_site(gm, node)
        if site is not None:
            sites[node.name] = site
    used: set[str] = set()
    skipped: dict[str, str] = {}
    attention = _find_attention(gm, sites, used, skipped)
    ffn = _find_ffn(gm, sites, used, skipped)
    structure = EncoderStructure(attention=attention, ffn=ffn)
    if skip:
        keep_att = [a for a in attention if not any(s in w.weight for s in skip for w in a.linears)]
        keep_ffn = [f for f in ffn if not any(s in w.weight for s in skip for w in f.linears)]
        for block in [b for b in [*attention, *ffn] if b not in keep_att and b not in keep_ffn]:
            for site in block.linears:
                skipped[site.node] = "skipped by PruningConfig.skip"
                used.discard(site.node)
        structure.attention, structure.ffn = keep_att, keep_ffn
    for name, site in sites.items():
        if name not in used:
            reason = skipped.get(name, "not part of an attention or FFN block")
            structure.skipped.append(SkippedLinear(site.weight, reason))
    return structure
