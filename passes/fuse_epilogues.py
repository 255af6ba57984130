"""fuse_epilogues: fold a GELU and a residual add into the block-sparse op that feeds them.

Each fold removes a full pass over the activations and, in ONNX Runtime, a node and its thread
wake-up; the kernel applies both to the output tile while it is still in registers.
"""

from __future__ import annotations

import torch
from torch import fx

from ..core.pruning_state import META_KEY
from ..runtime.library import is_block_sparse_linear
from .graph_utils import finish

_POSITIONAL = ("x", "values", "row_ptr", "col_idx", "bias", "out_features")


def _kwargs(node: fx.Node) -> dict:
    merged = dict(zip((*_POSITIONAL, "activation", "residual"), node.args))
    merged.update(node.kwargs)
    merged.setdefault("activation", "none")
    merged.setdefault("residual", None)
    return merged


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _same_shape(a: fx.Node, b: object) -> bool:
    """Same shape and dtype as far as the graph's metadata can tell (no broadcasting fold)."""
    va, vb = a.meta.get("val"), getattr(b, "meta", {}).get("val")
    if not isinstance(va, torch.Tensor) or not isinstance(vb, torch.Tensor) or va.dtype != vb.dtype:
        return False
    return len(va.shape) == len(vb.shape) and all(str(x) == str(y) for x, y in zip(va.shape, vb.shape))


def _is_exact_gelu(node: fx.Node) -> bool:
    if node.op != "call_function" or node.target is not torch.ops.aten.gelu.default:
        return False
    approximate = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
    return approximate == "none"


def _residual_of(node: fx.Node, user: fx.Node) -> fx.Node | None:
    if user.op != "call_function" or user.target is not torch.ops.aten.add.Tensor or user.kwargs.get("alpha", 1) != 1:
        return None
    if len(user.args) != 2 or user.args[0] is user.args[1]:
        return None
    other = user.args[1] if user.args[0] is node else user.args[0]
    return other if isinstance(other, fx.Node) and _same_shape(node, other) and _same_shape(user, node) else None


def _replace(gm: fx.GraphModule, old: fx.Node, absorbed: fx.Node, kwargs: dict, renamed: dict[str, str]) -> fx.Node:
    """A new op node at `absorbed`'s place (its inputs all exist there) that stands for `absorbed`."""
    with gm.graph.inserting_before(absorbed):
        new = gm.graph.call_function(
            old.target, tuple(kwargs[n] for n in _POSITIONAL), {"activation": kwargs["activation"], "residual": kwargs["residual"]}
        )
    new.meta = dict(absorbed.meta)
    absorbed.replace_all_uses_with(new)
    gm.graph.erase_node(absorbed)
    gm.graph.erase_node(old)
    for site, name in renamed.items():
        if name == old.name:
            renamed[site] = new.name
    return new


def fuse_epilogues(gm: fx.GraphModule) -> fx.GraphModule:
    """block_sparse_linear -> gelu -> add(residual) becomes one block_sparse_linear call."""
    state = gm.meta.get(META_KEY)
    renamed = state.renamed if state is not None else {}
    for node in [n for n in gm.graph.nodes if is_block_sparse_linear(n)]:
        kwargs = _kwargs(node)
        if kwargs["residual"] is not None:
            continue
        user = _only_user(node)
        if user is not None and kwargs["activation"] == "none" and _is_exact_gelu(user):
            kwargs["activation"] = "gelu"
            node = _replace(gm, node, user, kwargs, renamed)
            user = _only_user(node)
        residual = _residual_of(node, user) if user is not None else None
        if residual is not None:
            kwargs["residual"] = residual
            _replace(gm, node, user, kwargs, renamed)
    return finish(gm)
