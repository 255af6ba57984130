"""Plain records of what the analysis found. Nodes are referred to by name."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LinearSite:
    """One `aten.linear(x, W, b)` whose W (and b) are parameters of the graph."""

    node: str
    weight: str
    bias: str | None
    out_features: int
    in_features: int

    @property
    def numel(self) -> int:
        return self.out_features * self.in_features


@dataclass(frozen=True)
class ShapeArg:
    """An integer inside a view/reshape shape that counts heads or hidden channels."""

    node: str
    index: int
    kind: str  # "heads" or "hidden"


@dataclass(frozen=True)
class AttentionBlock:
    name: str
    q: LinearSite
    k: LinearSite
    v: LinearSite
    o: LinearSite
    num_heads: int
    head_dim: int
    core: str
    shape_args: tuple[ShapeArg, ...] = ()
    o_residual: str | None = None

    @property
    def linears(self) -> tuple[LinearSite, ...]:
        return (self.q, self.k, self.v, self.o)


@dataclass(frozen=True)
class FeedForwardBlock:
    name: str
    fc1: LinearSite
    fc2: LinearSite
    activation: str
    fc2_residual: str | None = None

    @property
    def linears(self) -> tuple[LinearSite, ...]:
        return (self.fc1, self.fc2)


@dataclass(frozen=True)
class SkippedLinear:
    weight: str
    reason: str


@dataclass
class EncoderStructure:
    """Everything prunable in a graph, plus the linears left alone and why."""

    attention: list[AttentionBlock] = field(default_factory=list)
    ffn: list[FeedForwardBlock] = field(default_factory=list)
    skipped: list[SkippedLinear] = field(default_factory=list)

    def linears(self) -> list[LinearSite]:
        out: list[LinearSite] = []
        for block in [*self.attention, *self.ffn]:
            out.extend(block.linears)
        return out

    def __bool__(self) -> bool:
        return bool(self.attention or self.ffn)

    def describe(self) -> str:
        lines = [f"{len(self.attention)} attention blocks, {len(self.ffn)} FFN blocks"]
        for a in self.attention:
            res = "residual" if a.o_residual else "no residual found"
            lines.append(
                f"  attention {a.name}: {a.num_heads} heads x {a.head_dim}, "
                f"Q/K/V/O = {a.q.weight}, {a.k.weight}, {a.v.weight}, {a.o.weight} ({res})"
            )
        for f in self.ffn:
            res = "residual" if f.fc2_residual else "no residual found"
            lines.append(
                f"  ffn {f.name}: {f.fc1.in_features} -> {f.fc1.out_features} ({f.activation}) -> "
                f"{f.fc2.out_features}, FC1/FC2 = {f.fc1.weight}, {f.fc2.weight} ({res})"
            )
        if self.skipped:
            lines.append("left alone:")
            lines.extend(f"  {s.weight}: {s.reason}" for s in self.skipped)
        return "\n".join(lines)
