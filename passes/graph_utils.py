"""Small helpers the rewrite passes share: parameter surgery and node lookup."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator

import torch
from torch import fx, nn


def get_tensor(gm: fx.GraphModule, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def set_tensor(gm: fx.GraphModule, target: str, value: torch.Tensor) -> None:
    """Replace a parameter (or buffer) in place of the old one, keeping its name."""
    owner_name, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_name) if owner_name else gm
    old = getattr(owner, name)
    if isinstance(old, nn.Parameter):
        setattr(owner, name, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))
    else:
        owner.register_buffer(name, value.detach().clone())


@contextlib.contextmanager
def no_pytree_spec_warning() -> Iterator[None]:
    """Hide the FutureWarning torch's pytree raises when a captured graph's input/output specs are
    copied (by us, or by torch.export's own passes): it names an API we never call, so it only
    confuses users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        yield


def copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A deep copy, without torch's pytree FutureWarning (see `no_pytree_spec_warning`)."""
    with no_pytree_spec_warning():
        return copy.deepcopy(gm)


def nodes_by_name(gm: fx.GraphModule) -> dict[str, fx.Node]:
    return {n.name: n for n in gm.graph.nodes}


def kept_indices(mask: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(mask.reshape(-1) > 0, as_tuple=False).reshape(-1)


def add_index_buffer(gm: fx.GraphModule, name: str, index: torch.Tensor, before: fx.Node) -> fx.Node:
    """Register `index` as a buffer of `gm` and return a get_attr node for it."""
    gm.register_buffer(name, index.to(torch.long), persistent=True)
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(name)


def _unobserved_write(node: fx.Node, order: dict[fx.Node, int]) -> bool:
    """An in-place op on an intermediate tensor that nothing reads afterwards (`scores += bias` in a
    block whose output is gone): removing it changes nothing."""
    schema = node.target._schema
    written = [i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write]
    if written != [0] or not node.args or not isinstance(node.args[0], fx.Node):
        return False
    target = node.args[0]
    if target.op != "call_function" or node not in order or not _fresh(target):
        return False
    return all(u is node or order.get(u, len(order)) < order[node] for u in target.users)


def _fresh(node: fx.Node) -> bool:
    """The op returns a new tensor, not a view of another one (a write to a view is a write to its base)."""
    schema = getattr(node.target, "_schema", None)
    return schema is not None and not schema.is_mutable and all(r.alias_info is None for r in schema.returns)


def _has_side_effect(node: fx.Node, order: dict[fx.Node, int]) -> bool:
    """Only real side effects keep a node alive; random ops like dropout-in-SDPA do not."""
    if node.op in ("placeholder", "output"):
        return True
    if node.op == "call_module":
        return node.target == "_guards_fn"
    if node.op == "call_function":
        schema = getattr(node.target, "_schema", None)
        if schema is not None and schema.is_mutable:
            return not _unobserved_write(node, order)
        return "assert" in getattr(node.target, "__name__", str(node.target))
    return False


def remove_dead_nodes(gm: fx.GraphModule) -> None:
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    gm.graph.eliminate_dead_code(is_impure_node=lambda node: _has_side_effect(node, order))


def finish(gm: fx.GraphModule) -> fx.GraphModule:
    gm.graph.lint()
    gm.recompile()
    return gm


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.shapes[n] = tuple(out.shape)
        return out


@torch.no_grad()
def concrete_shapes(gm: fx.GraphModule, inputs: dict[str, torch.Tensor]) -> dict[fx.Node, tuple[int, ...]]:
    """Each tensor node's shape on `inputs` (keyword inputs of gm's forward). Needed where the
    graph's recorded metadata predates the compaction passes, which change inner sizes."""
    from torch.fx._pytree import tree_flatten_spec

    codegen = gm.graph._codegen
    spec = getattr(getattr(codegen, "pytree_info", None), "in_spec", None)
    flat = tree_flatten_spec(((), dict(inputs)), spec) if spec is not None else list(inputs.values())
    recorder = _ShapeRecorder(gm)
    recorder.run(*flat)
    return recorder.shapes
