"""quantize_linears: every kept encoder linear -> its int8 form.

Dense ones become `torch.ops.mlprune.int8_linear` (X quantized per tensor, exported as ONNX Runtime's
`DynamicQuantizeMatMul`); block-sparse ones become `torch.ops.mlprune.block_sparse_linear_int8` on the
native kernel (X quantized per row), keeping the GELU and residual folded into them. Weights are int8
per output channel. Pooler, classifier and whatever else the analysis left alone stay float32.
"""

from __future__ import annotations

import torch
from torch import fx

from ..core.errors import ConfigError
from ..core.pruning_state import pruning_state
from ..runtime.library import is_block_sparse_linear
from .graph_utils import finish, get_tensor, nodes_by_name, remove_dead_nodes


def _owner(gm: fx.GraphModule, weight: str) -> tuple[torch.nn.Module, str]:
    owner = weight.rpartition(".")[0]
    return (gm.get_submodule(owner), owner + ".") if owner else (gm, "")


def _constant(gm: fx.GraphModule, weight: str, name: str, value: torch.Tensor, before: fx.Node) -> fx.Node:
    """A get_attr of `value`, kept as a buffer beside `weight` (registered again by each use: the same tensor)."""
    module, prefix = _owner(gm, weight)
    module.register_buffer(name, value.contiguous())
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(prefix + name)


def _replace(gm: fx.GraphModule, node: fx.Node, op, args: tuple, kwargs: dict) -> fx.Node:
    with gm.graph.inserting_before(node):
        new = gm.graph.call_function(op, args, kwargs)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


def _check_float32(weight: str, tensor: torch.Tensor) -> None:
    if tensor.dtype != torch.float32:
        raise ConfigError(
            f"quantize='int8' needs float32 weights, but {weight} is {tensor.dtype}: convert a float32 model "
            "(model.float() before prepare), or leave quantize=None to keep the model in its own precision"
        )


def quantize_linears(gm: fx.GraphModule) -> fx.GraphModule:
    """Swap each prunable linear that convert kept for its int8 op; records them in `state.quantized`."""
    from ..runtime import int8

    state = pruning_state(gm, ("frozen", "converted"))
    nodes = nodes_by_name(gm)
    for lm in state.linears:
        weight = lm.site.weight
        made: dict[str, fx.Node] = {}  # the int8 constants, made once for every use of a shared weight
        for site_node in lm.nodes:
            node = nodes.get(state.renamed.get(site_node, site_node))
            if node is None:
                continue
            if node.op == "call_function" and node.target is torch.ops.aten.linear.default:
                if not made:
                    w = get_tensor(gm, weight)
                    _check_float32(weight, w)
                    q = int8.quantize_weight(w)
                    made = {"weight_int8_t": q.values.T.contiguous(), "weight_scale": q.scale}
                attrs = [_constant(gm, weight, name, value, node) for name, value in made.items()]
                bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
                new = _replace(gm, node, torch.ops.mlprune.int8_linear.default, (node.args[0], *attrs, bias), {})
                kind = "int8"
            elif is_block_sparse_linear(node):
                x, values, row_ptr, col_idx, bias, out_features = node.args[:6]
                if not made:
                    fp32 = get_tensor(gm, values.target)
                    _check_float32(weight, fp32)
                    packed = int8.quantize_blocks(fp32, get_tensor(gm, row_ptr.target), out_features)
                    made = dict(zip(("block_int8_values", "block_int8_w_scale", "block_int8_w_sum"), packed))
                attrs = [_constant(gm, weight, name, value, node) for name, value in made.items()]
                args = (x, attrs[0], row_ptr, col_idx, attrs[1], attrs[2], bias, out_features, *node.args[6:])
                kwargs = {k: v for k, v in node.kwargs.items() if k in ("activation", "residual")}
                new = _replace(gm, node, torch.ops.mlprune.block_sparse_linear_int8.default, args, kwargs)
                kind = "int8 block-sparse"
            else:
                continue
            state.renamed[site_node] = new.name
            state.quantized[weight] = kind
    state.quantization = "int8"
    if "int8 block-sparse" in state.quantized.values():
        int8.note_kernel_path()
    remove_dead_nodes(gm)
    return finish(gm)
