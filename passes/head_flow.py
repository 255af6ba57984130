"""Follow an attention block's heads through its data flow: which axis of which tensor counts heads.

The linears whose rows are laid out per head ([repeat][heads][head_dim]) seed the walk; every tensor
computed from them gets, per axis, either no tag or a tag saying the axis is outer x heads x inner
(row-major). Each op the walk meets must keep the head axis whole and unmixed (a reshape may split
or merge it, a matmul may not contract over it, a softmax may not normalise along it), or the block
is left alone with the reason. What the walk returns is what compaction must touch when heads go:
integers in shape arguments that count heads, and tensors from outside the block that carry one
slice per head (a relative-position bias shared by every layer).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import sympy
import torch
from torch import fx

from ..core.errors import UnsupportedStructure
from ..core.structures import HeadTerm, ShapeArg
from .dropout import is_dropout

aten = torch.ops.aten


@dataclass(frozen=True)
class _Tag:
    outer: sympy.Expr
    inner: sympy.Expr


@dataclass
class HeadFlow:
    """What the walk found: shape integers to rewrite and outside tensors to slice, per head."""

    shape_args: list[ShapeArg] = field(default_factory=list)
    head_terms: list[HeadTerm] = field(default_factory=list)


_RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
_FLATTENS = {aten.flatten.using_ints}
_SAME = {
    aten.contiguous.default, aten.clone.default, aten.alias.default, aten.detach.default,
    aten._to_copy.default, aten.to.dtype, aten.to.device, aten.to.dtype_layout, aten.to.other,
    aten.neg.default, aten.gelu.default, aten.relu.default, aten.silu.default, aten.tanh.default,
    aten.sigmoid.default, aten.exp.default, aten.sqrt.default, aten.rsqrt.default, aten.abs.default,
    aten.clamp.default, aten.lift_fresh_copy.default, aten.type_as.default,
}
_ELEMENTWISE = {
    aten.add.Tensor, aten.add_.Tensor, aten.sub.Tensor, aten.sub_.Tensor, aten.mul.Tensor, aten.mul_.Tensor,
    aten.div.Tensor, aten.div_.Tensor, aten.where.self, aten.masked_fill.Scalar, aten.masked_fill.Tensor,
    aten.masked_fill_.Scalar, aten.pow.Tensor_Scalar, aten.add.Scalar, aten.mul.Scalar, aten.div.Scalar,
    aten.sub.Scalar, aten.minimum.default, aten.maximum.default,
}
_SOFTMAX = {aten.softmax.int, aten._softmax.default, aten._log_softmax.default, aten.log_softmax.int}
_MATMULS = {aten.matmul.default, aten.bmm.default}
_IGNORED = {aten.sym_size.int, aten._assert_tensor_metadata.default}


def _expr(size) -> sympy.Expr:
    return sympy.sympify(size.node.expr) if isinstance(size, torch.SymInt) else sympy.Integer(int(size))


def _divides(a: sympy.Expr, b: sympy.Expr) -> bool:
    """a | b, where a and b are sizes (positive integer symbols allowed)."""
    ratio = sympy.cancel(b / a)
    return ratio.is_integer is True


def _equal(a: sympy.Expr, b: sympy.Expr) -> bool:
    return sympy.expand(a - b) == 0


def _prod(sizes) -> sympy.Expr:
    out = sympy.Integer(1)
    for s in sizes:
        out = out * s
    return out


def _static(expr: sympy.Expr) -> int | None:
    return int(expr) if expr.is_Integer else None


def _name(node: fx.Node) -> str:
    target = node.target
    return getattr(target, "__name__", str(target)) if node.op == "call_function" else str(target)


class _Walk:
    def __init__(self, gm: fx.GraphModule, heads: int):
        self.gm = gm
        self.heads = heads
        self.H = sympy.Integer(heads)
        self.layout: dict[fx.Node, object] = {}
        self.region: set[fx.Node] = set()
        self.flow = HeadFlow()

    # -- shapes -------------------------------------------------------------------------------
    def shape(self, node) -> tuple[sympy.Expr, ...] | None:
        val = node.meta.get("val") if isinstance(node, fx.Node) else None
        if isinstance(val, torch.Tensor):
            return tuple(_expr(s) for s in val.shape)
        if isinstance(node, fx.Node) and (is_dropout(self.gm, node) or node.target in _SAME) and node.args:
            return self.shape(node.args[0])
        return None

    def tensor_shape(self, node) -> tuple[sympy.Expr, ...]:
        shape = self.shape(node)
        if shape is None:
            raise UnsupportedStructure(f"{node.name} ({_name(node)}) has no recorded shape")
        return shape

    def of(self, node) -> tuple:
        """The layout of a tensor argument: its tags, or no tag on any axis when it comes from outside."""
        if node in self.layout:
            value = self.layout[node]
            if isinstance(value, list):
                raise UnsupportedStructure(f"{node.name} is a tuple where a tensor was expected")
            return value
        return (None,) * len(self.tensor_shape(node))

    # -- recording what compaction rewrites ----------------------------------------------------
    def shape_arg(self, node: fx.Node, index: int, element) -> None:
        """`element`, the index-th entry of node's shape list, is the size of a tagged axis."""
        if isinstance(element, int):
            if element == -1:
                return
            if element % self.heads:
                raise UnsupportedStructure(f"{node.name}: shape entry {element} is not a multiple of the head count")
            self.flow.shape_args.append(ShapeArg(node.name, index, "heads", element // self.heads))
            return
        if isinstance(element, fx.Node) and element.op == "call_function":
            if element.target is aten.sym_size.int and element.args[0] in self.region:
                return  # read from a tagged tensor at run time: right after compaction too
            if element.target is operator.mul:
                ints = [a for a in element.args if isinstance(a, int)]
                if len(ints) == 1 and ints[0] % self.heads == 0:
                    self.flow.shape_args.append(ShapeArg(node.name, index, "batch_heads", ints[0] // self.heads))
                    return
        raise UnsupportedStructure(f"{node.name}: the size {element} of a head axis is computed in a way not understood")

    def outside(self, operand: fx.Node, axis: int, tag: _Tag, consumer: fx.Node, arg: int) -> None:
        """`operand` (from outside the block) has a full-size axis where the block has heads."""
        if operand.target is aten.expand.default and all(u in self.region for u in operand.users):
            source = self.tensor_shape(operand.args[0])
            lead = len(self.tensor_shape(operand)) - len(source)
            if axis < lead or source[axis - lead] == 1:
                self.shape_arg(operand, axis, operand.args[1][axis])
                return
        outer, inner = _static(tag.outer), _static(tag.inner)
        if outer is None or inner is None or not isinstance(arg, int):
            raise UnsupportedStructure(
                f"{consumer.name} ({_name(consumer)}) reads {operand.name}, a tensor from outside the block "
                "with one slice per head along an axis that also counts the batch"
            )
        self.flow.head_terms.append(HeadTerm(consumer.name, arg, axis, outer, inner))

    # -- broadcasting ------------------------------------------------------------------------
    def is_tensor(self, value) -> bool:
        return isinstance(value, fx.Node) and (value in self.layout or self.shape(value) is not None)

    def operand(self, position, node: fx.Node) -> tuple:
        return (position, node, self.of(node), self.tensor_shape(node))

    def broadcast(self, node: fx.Node, operands: list[tuple], rank: int) -> tuple:
        """Tags of an elementwise result. Operands are (position in args, node, tags, shape), aligned at
        the right; one from outside the block with a full-size axis where heads are is recorded."""
        out = []
        for j in range(rank):
            tags = set()
            for _, _, layout, _ in operands:
                k = j - (rank - len(layout))
                if k >= 0 and layout[k] is not None:
                    tags.add(layout[k])
            if len(tags) > 1:
                raise UnsupportedStructure(f"{node.name} ({_name(node)}) combines different head layouts on one axis")
            tag = next(iter(tags), None)
            if tag is not None:
                for position, value, layout, shape in operands:
                    k = j - (rank - len(layout))
                    if k < 0 or layout[k] is not None or shape[k] == 1:
                        continue
                    if value in self.region:
                        raise UnsupportedStructure(f"{node.name} ({_name(node)}) mixes heads with another axis")
                    self.outside(value, k, tag, node, position)
            out.append(tag)
        return tuple(out)

    # -- ops ----------------------------------------------------------------------------------
    def reshape(self, node: fx.Node, source: fx.Node, shape_list) -> tuple:
        a, b = self.tensor_shape(source), self.tensor_shape(node)
        tags = self.of(source)
        out: list = [None] * len(b)
        for ga, gb in _groups(a, b):
            tagged = [i for i in ga if tags[i] is not None]
            if not tagged:
                continue
            if len(tagged) > 1:
                raise UnsupportedStructure(f"{node.name} ({_name(node)}) merges two head axes")
            t = tags[tagged[0]]
            stride = t.inner * _prod(a[i] for i in ga if i > tagged[0])
            span = stride * self.H
            chosen = None
            for j in gb:
                below = _prod(b[x] for x in gb if x > j)
                top = below * b[j]
                if chosen is None and _divides(below, stride) and _divides(span, top):
                    chosen = j
                    out[j] = _Tag(sympy.cancel(top / span), sympy.cancel(stride / below))
                elif not (_divides(span, below) or _divides(top, stride)):
                    raise UnsupportedStructure(f"{node.name} ({_name(node)}) splits the head axis")
            if chosen is None:
                raise UnsupportedStructure(f"{node.name} ({_name(node)}) splits the head axis")
            if shape_list is not None:
                self.shape_arg(node, chosen, shape_list[chosen])
        return tuple(out)

    def matmul(self, node: fx.Node) -> tuple:
        x, y = node.args[:2]
        lx, ly = self.of(x), self.of(y)
        if len(lx) < 2 or len(ly) < 2:
            raise UnsupportedStructure(f"{node.name}: a matmul of vectors")
        if lx[-1] or lx[-2] or ly[-1] or ly[-2]:
            raise UnsupportedStructure(f"{node.name} ({_name(node)}) multiplies along a head axis")
        sx, sy = self.tensor_shape(x), self.tensor_shape(y)
        rank = max(len(lx), len(ly)) - 2
        batch = self.broadcast(node, [(0, x, lx[:-2], sx[:-2]), (1, y, ly[:-2], sy[:-2])], rank)
        return (*batch, None, None)

    def step(self, node: fx.Node) -> object:
        t = node.target
        args = node.args
        if is_dropout(self.gm, node) or t in _SAME:
            return self.of(args[0])
        if t in _ELEMENTWISE:
            operands = [self.operand(i, a) for i, a in enumerate(args) if self.is_tensor(a)]
            if t in (aten.add_.Tensor, aten.sub_.Tensor, aten.mul_.Tensor, aten.div_.Tensor, aten.masked_fill_.Scalar) \
                    and args[0] not in self.region:
                raise UnsupportedStructure(f"{node.name} writes head-carrying values into a tensor from outside the block")
            return self.broadcast(node, operands, len(self.tensor_shape(node)))
        if t in _SOFTMAX:
            layout = self.of(args[0])
            if layout[args[1] % len(layout)] is not None:
                raise UnsupportedStructure(f"{node.name} normalises across heads")
            return layout
        if t in _RESHAPES:
            return self.reshape(node, args[0], args[1])
        if t in _FLATTENS:
            return self.reshape(node, args[0], None)
        if t is aten.permute.default:
            layout = self.of(args[0])
            return tuple(layout[d % len(layout)] for d in args[1])
        if t is aten.transpose.int:
            layout = list(self.of(args[0]))
            i, j = args[1] % len(layout), args[2] % len(layout)
            layout[i], layout[j] = layout[j], layout[i]
            return tuple(layout)
        if t is aten.t.default:
            return tuple(reversed(self.of(args[0])))
        if t is aten.unsqueeze.default:
            layout = list(self.of(args[0]))
            layout.insert(args[1] % (len(layout) + 1), None)
            return tuple(layout)
        if t in (aten.squeeze.dim, aten.squeeze.dims):
            layout = list(self.of(args[0]))
            dims = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
            dims = sorted({d % len(layout) for d in dims}, reverse=True)
            if any(layout[d] is not None for d in dims):
                raise UnsupportedStructure(f"{node.name} squeezes a head axis")
            for d in dims:
                del layout[d]
            return tuple(layout)
        if t is aten.expand.default:
            layout = self.of(args[0])
            lead = len(args[1]) - len(layout)
            for k, tag in enumerate(layout):
                if tag is not None:
                    self.shape_arg(node, lead + k, args[1][lead + k])
            return (None,) * lead + tuple(layout)
        if t is aten.repeat.default:
            layout = self.of(args[0])
            lead = len(args[1]) - len(layout)
            out = [None] * lead
            for k, tag in enumerate(layout):
                reps = args[1][lead + k]
                if tag is not None and reps != 1:
                    reps = _expr(reps.meta["val"]) if isinstance(reps, fx.Node) else sympy.Integer(reps)
                    tag = _Tag(tag.outer * reps, tag.inner)
                out.append(tag)
            return tuple(out)
        if t in _MATMULS:
            return self.matmul(node)
        if t is aten.scaled_dot_product_attention.default:
            return self.sdpa(node)
        if t is aten.gather.default:
            layout = self.of(args[0])
            dim = args[1] % len(layout)
            if layout[dim] is not None:
                raise UnsupportedStructure(f"{node.name} gathers along a head axis")
            index = args[2]
            shape, index_shape = self.tensor_shape(args[0]), self.tensor_shape(index)
            if any(tag is not None and not _equal(shape[k], index_shape[k]) for k, tag in enumerate(layout)):
                raise UnsupportedStructure(f"{node.name} gathers fewer heads than it reads")
            source = (0, args[0], tuple(None if k == dim else tag for k, tag in enumerate(layout)), shape)
            return self.broadcast(node, [source, self.operand(2, index)], len(layout))
        if t in (aten.slice.Tensor, aten.select.int):
            layout = list(self.of(args[0]))
            dim = (args[1] if len(args) > 1 else 0) % len(layout)
            if layout[dim] is not None:
                raise UnsupportedStructure(f"{node.name} ({_name(node)}) slices a head axis")
            if t is aten.select.int:
                del layout[dim]
            return tuple(layout)
        if t is aten.cat.default:
            parts = args[0]
            dim = (args[1] if len(args) > 1 else 0)
            layouts = [self.of(p) for p in parts]
            rank = len(layouts[0])
            if any(lay[dim % rank] is not None for lay in layouts):
                raise UnsupportedStructure(f"{node.name} concatenates along a head axis")
            if len(set(layouts)) != 1:
                raise UnsupportedStructure(f"{node.name} concatenates tensors with different head layouts")
            return layouts[0]
        if t is aten.unbind.int:
            layout = list(self.of(args[0]))
            dim = (args[1] if len(args) > 1 else 0) % len(layout)
            if layout[dim] is not None:
                raise UnsupportedStructure(f"{node.name} unbinds a head axis")
            del layout[dim]
            return [tuple(layout)] * len(node.meta["val"])
        if t is aten.chunk.default:
            layout = list(self.of(args[0]))
            dim = (args[2] if len(args) > 2 else 0) % len(layout)
            pieces = len(node.meta["val"])
            tag = layout[dim]
            if tag is not None:
                outer = _static(tag.outer)
                if outer is None or outer % pieces:
                    raise UnsupportedStructure(f"{node.name} chunks a head axis across heads")
                layout[dim] = _Tag(sympy.Integer(outer // pieces), tag.inner)
            return [tuple(layout)] * pieces
        if t is operator.getitem:
            value = self.layout.get(args[0])
            if not isinstance(value, list):
                raise UnsupportedStructure(f"{node.name} indexes something that is not a tuple of tensors")
            return value[args[1]]
        raise UnsupportedStructure(f"{_name(node)} at {node.name} is not understood on head-carrying tensors")

    def sdpa(self, node: fx.Node) -> tuple:
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
        given = dict(zip(names, node.args))
        given.update(node.kwargs)
        if given.get("enable_gqa"):
            raise UnsupportedStructure(f"{node.name}: grouped-query attention")
        q, k, v = given["query"], given["key"], given["value"]
        layouts = [self.of(x) for x in (q, k, v)]
        if any(lay[-1] or lay[-2] for lay in layouts) or len(set(layouts)) != 1:
            raise UnsupportedStructure(f"{node.name}: Q, K and V do not carry the same heads")
        mask = given.get("attn_mask")
        if isinstance(mask, fx.Node):
            position = 3 if len(node.args) > 3 else "attn_mask"
            self.broadcast(node, [self.operand(0, q), self.operand(position, mask)], len(layouts[0]))
        return layouts[0]


def _ignored(node: fx.Node) -> bool:
    """Run-time size reads (right after compaction too) and dtype checks."""
    return node.target in _IGNORED or getattr(node.target, "__name__", "").startswith("_assert")


def _groups(a: tuple, b: tuple) -> list[tuple[list[int], list[int]]]:
    """Minimal runs of input and output axes with equal products: how a reshape regroups axes."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) or j < len(b):
        ga, gb = [], []
        pa = pb = sympy.Integer(1)
        if i < len(a):
            ga.append(i)
            pa = pa * a[i]
            i += 1
        if j < len(b):
            gb.append(j)
            pb = pb * b[j]
            j += 1
        while not _equal(pa, pb):
            if _divides(pa, pb) and i < len(a):
                ga.append(i)
                pa = pa * a[i]
                i += 1
            elif _divides(pb, pa) and j < len(b):
                gb.append(j)
                pb = pb * b[j]
                j += 1
            else:
                raise UnsupportedStructure("a reshape whose axes could not be matched")
        if not ga and groups:
            groups[-1][1].extend(gb)
        elif not gb and groups:
            groups[-1][0].extend(ga)
        else:
            groups.append((ga, gb))
    return groups


def trace_heads(
    gm: fx.GraphModule, seeds: dict[fx.Node, int], sink: fx.Node, heads: int, head_dim: int
) -> HeadFlow:
    """Walk from `seeds` (linear node -> its number of [heads x head_dim] row ranges) to `sink` (O).

    Raises UnsupportedStructure when the heads cannot be followed; O must receive [..., heads x head_dim].
    """
    walk = _Walk(gm, heads)
    d = sympy.Integer(head_dim)
    for seed, repeat in seeds.items():
        rank = len(walk.tensor_shape(seed))
        walk.layout[seed] = (None,) * (rank - 1) + (_Tag(sympy.Integer(repeat), d),)
        walk.region.add(seed)
    for node in gm.graph.nodes:
        if node in walk.region or node is sink or node.op not in ("call_function", "call_module", "output"):
            continue
        if not any(a in walk.region for a in node.all_input_nodes) or _ignored(node):
            continue
        if node.op == "output":
            leaving = [a.name for a in node.all_input_nodes if a in walk.region]
            raise UnsupportedStructure(f"head-carrying values leave the block as model outputs (from {leaving})")
        if node.target is aten.linear.default:
            raise UnsupportedStructure(f"head-carrying values reach another linear, {node.name}")
        walk.region.add(node)
        walk.layout[node] = walk.step(node)
    if sink.args[0] not in walk.region:
        raise UnsupportedStructure(f"O ({sink.name}) does not read the attention output")
    tags = walk.of(sink.args[0])
    if any(tags[:-1]) or tags[-1] != _Tag(sympy.Integer(1), d):
        raise UnsupportedStructure(f"O ({sink.name}) does not read [..., heads x head_dim]")
    return walk.flow
