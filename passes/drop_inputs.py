"""drop_inputs / drop_outputs: change a captured graph's signature.

drop_inputs removes training-only inputs (labels) and the outputs computed from them;
drop_outputs removes whole output fields (e.g. the hidden states distillation needed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import fx
from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo
from torch.utils._pytree import TreeSpec

from ..core.errors import ConfigError
from .graph_utils import finish, remove_dead_nodes


def _drop_output_fields(gm: fx.GraphModule, should_drop: Callable[[object, list], bool]) -> bool:
    """Remove each top-level output field whose `should_drop(key, leaves)` holds; True if any went."""
    codegen = gm.graph._codegen
    info = codegen.pytree_info
    spec = info.out_spec
    context = spec.context if isinstance(spec.context, list) else None
    output = next(iter(gm.graph.find_nodes(op="output")))
    leaves = list(output.args[0])
    children, keys, kept = [], [], []
    start = 0
    for i, child in enumerate(spec.children()):
        part = leaves[start : start + child.num_leaves]
        start += child.num_leaves
        key = context[i] if context is not None else i
        if should_drop(key, part):
            continue
        children.append(child)
        keys.append(key)
        kept.extend(part)
    if len(children) == spec.num_children:
        return False
    output.args = (tuple(kept),)
    new_spec = TreeSpec(spec.type, keys if context is not None else spec.context, children)
    codegen.pytree_info = _PyTreeInfo(info.orig_args, info.in_spec, new_spec)
    return True


def drop_outputs(gm: fx.GraphModule, names: Iterable[str]) -> fx.GraphModule:
    """Remove the named top-level output fields and what only they needed."""
    names = set(names)
    if isinstance(gm.graph._codegen, _PyTreeCodeGen) and _drop_output_fields(gm, lambda key, _: key in names):
        remove_dead_nodes(gm)
        return finish(gm)
    return gm


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
    keyed = isinstance(codegen.pytree_info.out_spec.context, list)

    def depends(key, part) -> bool:
        hit = [isinstance(x, fx.Node) and x in tainted for x in part]
        if any(hit) and not (all(hit) and keyed):
            raise ConfigError(
                f"output field {key} depends on {names}; keep the training inputs with convert(..., inference=False)"
            )
        return all(hit) and bool(hit)

    _drop_output_fields(gm, depends)
    info = codegen.pytree_info
    args_spec, kwargs_spec = info.in_spec.children()
    kw_keep = [(k, c) for k, c in zip(kwargs_spec.context, kwargs_spec.children()) if k not in names]
    new_kwargs = TreeSpec(dict, [k for k, _ in kw_keep], [c for _, c in kw_keep])
    new_in = TreeSpec(info.in_spec.type, info.in_spec.context, [args_spec, new_kwargs])
    remove_dead_nodes(gm)
    for node in drop:
        gm.graph.erase_node(node)
    codegen.pytree_info = _PyTreeInfo([a for a in info.orig_args if a not in names], new_in, info.out_spec)
    return finish(gm)
