"""Small matchers the analysis shares: ops, linear sites, residual adds, the linears a value comes from."""

from __future__ import annotations

import torch
from torch import fx

from ..core.structures import LinearSite
from .dropout import is_dropout

aten = torch.ops.aten

SHAPE_OPS = {
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.transpose.int,
    aten.permute.default,
    aten.contiguous.default,
    aten.clone.default,
}
SCALE_OPS = {aten.mul.Tensor, aten.div.Tensor, aten.mul.Scalar, aten.div.Scalar}
CASTS = {aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.to.device}
MATMULS = {aten.matmul.default, aten.bmm.default}
NORMS = {aten.layer_norm.default, aten.native_layer_norm.default, aten.rms_norm.default}


def is_op(node, targets) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def is_linear(node) -> bool:
    return is_op(node, {aten.linear.default})


def _is_parameter(gm: fx.GraphModule, target: str) -> bool:
    try:
        gm.get_parameter(target)
        return True
    except AttributeError:
        return False


def linear_site(gm: fx.GraphModule, node: fx.Node) -> LinearSite | None:
    """The site of `linear(x, W, b)` when W (and b) are parameters of the graph."""
    if not is_linear(node):
        return None
    w = node.args[1]
    b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    if not (isinstance(w, fx.Node) and w.op == "get_attr"):
        return None
    if b is not None and not (isinstance(b, fx.Node) and b.op == "get_attr"):
        return None
    weight = gm.get_parameter(w.target) if _is_parameter(gm, w.target) else None
    if weight is None or weight.dim() != 2:
        return None
    return LinearSite(node.name, w.target, b.target if b is not None else None, *weight.shape)


def passes_through(gm: fx.GraphModule, node) -> bool:
    """Shape ops, casts, dropout and scaling by a constant leave which rows mean what unchanged."""
    if is_op(node, SHAPE_OPS | CASTS) or is_dropout(gm, node):
        return True
    if not is_op(node, SCALE_OPS):
        return False
    scale = node.args[1]
    if not isinstance(scale, fx.Node):
        return True
    val = scale.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dim() == 0


def users_of(node: fx.Node) -> list[fx.Node]:
    """The users that compute something (not the dtype checks torch.export leaves behind)."""
    return [u for u in node.users if u.target is not aten._assert_tensor_metadata.default]


def forward_to_linear(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """Follow single users through shape ops to a linear that takes the value as input."""
    while True:
        users = users_of(node)
        if len(users) != 1:
            return None
        user = users[0]
        if is_linear(user):
            return user if user.args[0] is node else None
        if not passes_through(gm, user) or user.args[0] is not node:
            return None
        node = user


def linear_sources(gm: fx.GraphModule) -> dict[fx.Node, frozenset[fx.Node]]:
    """For every node, the linear nodes its value is computed from, looking no further back than a linear."""
    sources: dict[fx.Node, frozenset[fx.Node]] = {}
    empty: frozenset[fx.Node] = frozenset()
    for node in gm.graph.nodes:
        if is_linear(node):
            sources[node] = frozenset({node})
            continue
        found = empty
        for arg in node.all_input_nodes:
            found = found | sources.get(arg, empty)
        sources[node] = found
    return sources


def parameters_behind(gm: fx.GraphModule, node: fx.Node, limit: int = 400) -> list[str]:
    """Parameters and buffers a value is computed from, looking no further back than a linear."""
    found: list[str] = []
    seen: set[fx.Node] = set()
    stack = [node]
    while stack and len(seen) < limit:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "get_attr":
            found.append(n.target)
        elif not is_linear(n):
            stack.extend(n.all_input_nodes)
    return sorted(set(found))


def _after_dropout(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    while len(node.users) == 1 and is_dropout(gm, next(iter(node.users))):
        node = next(iter(node.users))
    return node


def _residual_inputs(block_input: fx.Node) -> set[fx.Node]:
    """What a residual add may add back: the block's input, or (pre-norm) what was normalised into it."""
    found = {block_input}
    if is_op(block_input, NORMS) and isinstance(block_input.args[0], fx.Node):
        found.add(block_input.args[0])
    return found


def residual_add(gm: fx.GraphModule, linear: fx.Node, block_input: fx.Node) -> str | None:
    """The add joining `linear`'s output (maybe through dropout) to the residual stream `block_input` reads."""
    node = _after_dropout(gm, linear)
    users = list(node.users)
    if len(users) != 1 or not is_op(users[0], {aten.add.Tensor}) or "alpha" in users[0].kwargs:
        return None
    add = users[0]
    if len(add.args) != 2 or add.args[0] is add.args[1] or node not in add.args:
        return None
    other = add.args[1] if add.args[0] is node else add.args[0]
    if other not in _residual_inputs(block_input):
        return None
    if _shape(other) is not None and _shape(other) != _shape(add):
        return None
    return add.name


def joins_residual(gm: fx.GraphModule, linear: fx.Node, block_input: fx.Node) -> bool:
    """True when `linear`'s output is added (or index_added, once compacted) to the residual stream."""
    if residual_add(gm, linear, block_input):
        return True
    node = _after_dropout(gm, linear)
    users = list(node.users)
    return (
        len(users) == 1
        and is_op(users[0], {aten.index_add.default})
        and users[0].args[0] in _residual_inputs(block_input)
        and users[0].args[3] is node
    )


def _shape(node: fx.Node) -> tuple | None:
    val = node.meta.get("val")
    return tuple(str(s) for s in val.shape) if isinstance(val, torch.Tensor) else None


def common_name(*targets: str) -> str:
    parts = [t.split(".")[:-1] for t in targets]
    prefix = []
    for group in zip(*parts):
        if len(set(group)) != 1:
            break
        prefix.append(group[0])
    return ".".join(prefix) or targets[0].rsplit(".", 1)[0]
