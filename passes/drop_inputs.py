"""drop_inputs: remove training-only inputs (labels) and the outputs computed from them."""

from __future__ import annotations

from torch import fx
from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo
from torch.utils._pytree import TreeSpec

from .graph_utils import finish, remove_dead_nodes


def drop_inputs(gm: fx.GraphModule, names: tuple[str, ...] = ("labels",)) -> fx.GraphModule:
    """An inference signature: `labels` gone, and with it `loss` from the output.

    Only whole top-level output fields may depend on a dropped input (HF's `loss`);
    anything else raises, since removing it would change what the model returns.
    """
    codegen = gm.graph._codegen
    placeholders = {n.name: n for n in gm.graph.find_nodes(op="placeholder")}
    drop = [placeholders[n] for n in names if n in placeholders]
    if not drop or not isinstance(codegen, _PyTreeCodeGen):
        return gm
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            gm.graph.erase_node(node)
    tainted: set[fx.Node] = set(drop)
    for node in gm.graph.nodes:
        if any(a in tainted for a in node.all_input_nodes):
            tainted.add(node)
    output = next(iter(gm.graph.find_nodes(op="output")))
    leaves = list(output.args[0])
    info = codegen.pytree_info
    spec = info.out_spec
    keep_children, keep_context, keep_leaves = [], [], []
    start = 0
    context = spec.context if isinstance(spec.context, list) else None
    for i, child in enumerate(spec.children()):
        n = child.num_leaves
        part = leaves[start : start + n]
        start += n
        hit = [isinstance(x, fx.Node) and x in tainted for x in part]
        if all(hit) and context is not None:
            continue
        if any(hit):
            raise ValueError(
                f"output field {context[i] if context else i} depends on {names}; "
                "keep the training inputs with convert(..., inference=False)"
            )
        keep_children.append(child)
        keep_leaves.extend(part)
        if context is not None:
            keep_context.append(context[i])
    new_out = TreeSpec(spec.type, keep_context if context is not None else spec.context, keep_children)
    output.args = (tuple(keep_leaves),)
    in_spec = info.in_spec
    args_spec, kwargs_spec = in_spec.children()
    kw_keep = [(k, c) for k, c in zip(kwargs_spec.context, kwargs_spec.children()) if k not in names]
    new_kwargs = TreeSpec(dict, [k for k, _ in kw_keep], [c for _, c in kw_keep])
    new_in = TreeSpec(in_spec.type, in_spec.context, [args_spec, new_kwargs])
    remove_dead_nodes(gm)
    for node in drop:
        gm.graph.erase_node(node)
    codegen.pytree_info = _PyTreeInfo([a for a in info.orig_args if a not in names], new_in, new_out)
    return finish(gm)
