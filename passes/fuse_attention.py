"""fuse_attention: an encoder layer's split-heads / SDPA / merge-heads chain -> `mlprune::attention`.

Exported as is, that chain is a dozen ONNX nodes per layer (transposes, the mask's Where and
IsNaN, two MatMuls, Softmax), each a pass over the activations; as `mlprune::attention` it is one
`com.microsoft.MultiHeadAttention` node, ONNX Runtime's fused CPU kernel. Used by export_onnx on a
copy of the converted model; chains that do not match exactly are left alone.
"""

from __future__ import annotations

import math

import torch
from torch import fx

from ..runtime.attention import additive_mask
from .graph_utils import concrete_shapes, finish, remove_dead_nodes

_aten = torch.ops.aten
_RESHAPES = (_aten.view.default, _aten.reshape.default, _aten._unsafe_view.default)
_COPIES = (_aten.contiguous.default, _aten.clone.default)


def _is_swap_1_2(node: object) -> bool:
    return (
        isinstance(node, fx.Node) and node.op == "call_function" and node.target is _aten.transpose.int
        and sorted(d % 4 for d in node.args[1:3]) == [1, 2]
    )


def _split_heads(node: object, _shape) -> tuple[fx.Node, int, int] | None:
    """x [B, S, H*D] -> view [B, S, H, D] -> transpose(1, 2): (x, H, D), with H and D static."""
    if not _is_swap_1_2(node):
        return None
    view = node.args[0]
    if not isinstance(view, fx.Node) or view.target not in _RESHAPES or len(view.users) != 1:
        return None
    x, shape4, shape3 = view.args[0], _shape(view), _shape(view.args[0])
    if shape4 is None or shape3 is None or len(shape4) != 4 or len(shape3) != 3:
        return None
    heads, head = shape4[2], shape4[3]
    if shape3[2] != heads * head:
        return None
    return x, heads, head


def _merged_output(sdpa: fx.Node, _shape) -> fx.Node | None:
    """The [B, S, H*D] reshape that ends sdpa -> (same-shape reshapes) -> transpose(1, 2) -> (copies) -> reshape."""
    node = sdpa
    while len(node.users) == 1 and next(iter(node.users)).target in _RESHAPES and _shape(next(iter(node.users))) == _shape(sdpa):
        node = next(iter(node.users))
    if len(node.users) != 1 or not _is_swap_1_2(next(iter(node.users))):
        return None
    node = next(iter(node.users))
    while len(node.users) == 1 and next(iter(node.users)).target in _COPIES:
        node = next(iter(node.users))
    if len(node.users) != 1:
        return None
    merged = next(iter(node.users))
    shape = _shape(merged)
    return merged if merged.target in _RESHAPES and shape is not None and len(shape) == 3 else None


def _sdpa_args(node: fx.Node) -> dict:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
    args = dict(zip(names, node.args))
    args.update(node.kwargs)
    return args


def fuse_attention(gm: fx.GraphModule, example_inputs: dict[str, torch.Tensor]) -> fx.GraphModule:
    """Replace every matching self-attention chain; the rest of the graph is untouched.

    Head counts and sizes are read from a run on `example_inputs` (compaction leaves the
    graph's recorded shapes stale).
    """
    shapes = concrete_shapes(gm, example_inputs)

    def _shape(node: object) -> tuple | None:
        return shapes.get(node) if isinstance(node, fx.Node) else None

    biases: dict[fx.Node, fx.Node] = {}
    for sdpa in [n for n in gm.graph.nodes if n.op == "call_function" and n.target is _aten.scaled_dot_product_attention.default]:
        args = _sdpa_args(sdpa)
        if args.get("dropout_p", 0.0) != 0.0 or args.get("is_causal", False) or args.get("enable_gqa", False):
            continue
        parts = [_split_heads(args[k], _shape) for k in ("query", "key", "value")]
        if any(p is None for p in parts) or len({(h, d) for _, h, d in parts}) != 1:
            continue
        (q, heads, head), (k, _, _), (v, _, _) = parts
        mask = args.get("attn_mask")
        if mask is not None and (_shape(mask) is None or len(_shape(mask)) != 4 or _shape(mask)[1] not in (1, heads)):
            continue
        merged = _merged_output(sdpa, _shape)
        if merged is None:
            continue
        scale = args.get("scale")
        scale = float(scale) if scale is not None else 1.0 / math.sqrt(head)
        with gm.graph.inserting_before(sdpa):
            bias = None
            if mask is not None:
                if mask not in biases:
                    with gm.graph.inserting_after(mask):
                        biases[mask] = gm.graph.call_function(additive_mask, (mask,))
                bias = biases[mask]
            fused = gm.graph.call_function(torch.ops.mlprune.attention.default, (q, k, v, bias, heads, scale))
        fused.meta = dict(merged.meta)
        merged.replace_all_uses_with(fused)
    remove_dead_nodes(gm)
    return finish(gm)
