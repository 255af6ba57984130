"""Make a train-mode capture obey `.train()` / `.eval()` again.

torch.export bakes `dropout(x, p, train=True)` and SDPA's `dropout_p` into the
graph. Each becomes a call to a small submodule that reads `self.training`, so
the GraphModule switches like the model it came from.
"""

from __future__ import annotations

import torch
from torch import fx, nn

_aten = torch.ops.aten
DROPOUT_CONTAINER = "mlprune_dropout"


class DropoutRate(nn.Module):
    """Returns `p` while training and 0.0 in eval: SDPA's dropout_p argument."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self) -> float:
        return self.p if self.training else 0.0

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _sdpa_dropout_arg(node: fx.Node):
    if len(node.args) > 4:
        return node.args[4], ("args", 4)
    if "dropout_p" in node.kwargs:
        return node.kwargs["dropout_p"], ("kwargs", "dropout_p")
    return None, None


def make_dropout_switchable(gm: fx.GraphModule) -> fx.GraphModule:
    container = nn.ModuleDict()
    gm.add_submodule(DROPOUT_CONTAINER, container)
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is _aten.dropout.default:
            x, p = node.args[0], float(node.args[1])
            key = f"d{count}"
            count += 1
            container[key] = nn.Dropout(p)
            with gm.graph.inserting_before(node):
                new = gm.graph.call_module(f"{DROPOUT_CONTAINER}.{key}", (x,))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
        elif node.target is _aten.scaled_dot_product_attention.default:
            p, where = _sdpa_dropout_arg(node)
            if not isinstance(p, (int, float)) or p == 0:
                continue
            key = f"d{count}"
            count += 1
            container[key] = DropoutRate(p)
            with gm.graph.inserting_before(node):
                rate = gm.graph.call_module(f"{DROPOUT_CONTAINER}.{key}", ())
            if where[0] == "args":
                args = list(node.args)
                args[4] = rate
                node.args = tuple(args)
            else:
                node.kwargs = {**node.kwargs, "dropout_p": rate}
    gm.graph.lint()
    gm.recompile()
    return gm


def is_dropout(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True for the dropout calls this pass made (and any raw aten dropout left)."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.Dropout)
    return node.op == "call_function" and node.target is _aten.dropout.default


def remove_dropout(gm: fx.GraphModule) -> fx.GraphModule:
    """An inference graph needs no dropout: route around every dropout call."""
    for node in list(gm.graph.nodes):
        if is_dropout(gm, node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        elif node.op == "call_module" and isinstance(gm.get_submodule(node.target), DropoutRate):
            node.replace_all_uses_with(0.0)
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm
