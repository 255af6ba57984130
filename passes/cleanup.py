"""cleanup: drop dead nodes, then every parameter, buffer and submodule nothing reads."""

from __future__ import annotations

from torch import fx

from .graph_utils import finish, remove_dead_nodes


def cleanup(gm: fx.GraphModule) -> fx.GraphModule:
    remove_dead_nodes(gm)
    used = {n.target for n in gm.graph.nodes if n.op in ("get_attr", "call_module")}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name in used:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_name) if owner_name else gm
        delattr(owner, attr)
    gm.delete_all_unused_submodules()
    return finish(gm)
