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
    """An entry of a shape argument, `node.args[1][index]`, that counts heads: `multiple` x heads.
    kind "heads": an integer; "batch_heads": a symbolic `operator.mul(multiple x heads, size)` node
    (heads folded into the batch), rebuilt with the kept head count."""

    node: str
    index: int
    kind: str  # "heads" or "batch_heads"
    multiple: int = 1


@dataclass(frozen=True)
class HeadTerm:
    """A tensor from outside the block with one slice per head along `axis` (a relative-position bias
    shared by all layers), read by `node` as `args[arg]`. Its axis is laid out [outer][heads][inner];
    compaction reads only the kept heads' slices (index_select)."""

    node: str
    arg: int
    axis: int
    outer: int = 1
    inner: int = 1


@dataclass(frozen=True)
class AttentionBlock:
    """Q, K, V (one site three times when a fused QKV linear is split), O, and the linears whose rows
    are laid out per head and feed additive terms of the scores (DeBERTa's position projections)."""

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
    score_linears: tuple[LinearSite, ...] = ()
    head_terms: tuple[HeadTerm, ...] = ()
    score_terms: tuple[str, ...] = ()  # where the scores' additive terms come from, for describe

    @property
    def linears(self) -> tuple[LinearSite, ...]:
        """Q, K, V, O by role (a fused QKV appears three times)."""
        return (self.q, self.k, self.v, self.o)

    @property
    def sites(self) -> tuple[LinearSite, ...]:
        """Every linear use of the block once, O last."""
        return tuple(dict.fromkeys((self.q, self.k, self.v, *self.score_linears, self.o)))

    @property
    def head_sites(self) -> tuple[LinearSite, ...]:
        """The uses whose output rows are laid out per head."""
        return self.sites[:-1]

    def row_repeat(self, site: LinearSite) -> int:
        """How many [heads x head_dim] row ranges `site` holds (3 for a fused QKV)."""
        return site.out_features // (self.num_heads * self.head_dim)


@dataclass(frozen=True)
class FeedForwardBlock:
    """FC1 -> activation -> FC2. A gated FFN (act(input) * gate) has either FC1's rows chunked into
    input and gate (`fc1_chunks` = 2) or a second up-projection `paired`; one row mask covers each
    pair of rows."""

    name: str
    fc1: LinearSite
    fc2: LinearSite
    activation: str
    fc2_residual: str | None = None
    paired: LinearSite | None = None
    fc1_chunks: int = 1

    @property
    def linears(self) -> tuple[LinearSite, ...]:
        """FC1, FC2 by role."""
        return (self.fc1, self.fc2)

    @property
    def sites(self) -> tuple[LinearSite, ...]:
        return (self.fc1, self.paired, self.fc2) if self.paired is not None else (self.fc1, self.fc2)

    @property
    def rows(self) -> int:
        """The FFN width: rows the row mask has."""
        return self.fc2.in_features


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
        """Every linear use of every block, once each (a shared weight has one use per block)."""
        out: list[LinearSite] = []
        for block in [*self.attention, *self.ffn]:
            out.extend(block.sites)
        return list(dict.fromkeys(out))

    def shared_weights(self) -> dict[str, int]:
        """Weights read by more than one linear use, with their number of uses."""
        counts: dict[str, int] = {}
        for site in self.linears():
            counts[site.weight] = counts.get(site.weight, 0) + 1
        return {w: n for w, n in counts.items() if n > 1}

    def __bool__(self) -> bool:
        return bool(self.attention or self.ffn)

    def describe(self) -> str:
        lines = [f"{len(self.attention)} attention blocks, {len(self.ffn)} FFN blocks"]
        for a in self.attention:
            res = "residual" if a.o_residual else "no residual found"
            qkv = a.q.weight if a.q == a.k == a.v else f"{a.q.weight}, {a.k.weight}, {a.v.weight}"
            fused = " (fused QKV)" if a.q == a.k == a.v else ""
            lines.append(
                f"  attention {a.name}: {a.num_heads} heads x {a.head_dim}, "
                f"Q/K/V/O = {qkv}, {a.o.weight}{fused} ({res})"
            )
            if a.score_terms:
                sliced = f" ({len(a.head_terms)} outside tensor(s) sliced per kept head)" if a.head_terms else ""
                lines.append(f"    scores + {'; + '.join(a.score_terms)}{sliced}")
        for f in self.ffn:
            res = "residual" if f.fc2_residual else "no residual found"
            up = f"{f.fc1.weight} + {f.paired.weight} (paired rows)" if f.paired else f.fc1.weight
            lines.append(
                f"  ffn {f.name}: {f.fc1.in_features} -> {f.rows} ({f.activation}) -> "
                f"{f.fc2.out_features}, FC1/FC2 = {up}, {f.fc2.weight} ({res})"
            )
        shared = self.shared_weights()
        if shared:
            lines.append(f"shared weights (one mask each, applied at every use): {len(shared)}")
            lines.extend(f"  {w}: {n} uses" for w, n in shared.items())
        if self.skipped:
            lines.append("left alone:")
            lines.extend(f"  {s.weight}: {s.reason}" for s in self.skipped)
        return "\n".join(lines)
