"""What a kept attention head costs beyond its weights, in ONNX Runtime.

Encoders with the same remaining share of encoder weights, spent on many heads and few FFN
rows or on few heads and many rows, timed side by side in one run. A head's weights are
counted by the regulariser; its attention scores, softmax and weighted sum (which grow
with the sequence length) are not, unless PruningConfig.attention_length charges them.
The default layouts are those LEAP and Torch-Pruning kept at 20 % on the tweets
(BENCHMARKS.md), LEAP's head count spread evenly, and what LEAP kept with its heads charged
at 128 tokens (17.1 % of the weights), with random masks: speed does not depend on which
units are kept. From the times it fits what a head's attention costs in weights' worth at
each length, the figure leap.head_cost models. Run: python -m benchmarks.head_cost
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

import mlprune_fx as mp
from mlprune_fx.core.leap import ATTENTION_COST
from mlprune_fx.core.pruning_state import mask_modules
from mlprune_fx.tools.benchmarking import machine_header, markdown_table, time_side_by_side
from mlprune_fx.tools.models import load_packaged_model

DEFAULT_LAYOUTS = [
    "heads-like-torch-pruning=2,2,2,2,2,2",
    "heads-like-leap=11,10,8,8,1,1",
    "leap-heads-spread-evenly=7,7,7,6,6,6",
    "leap-heads-charged-at-128=11,10,6,3,1,1@0.171",
]


def parse_layout(text: str, layers: int, heads: int) -> tuple[str, list[int], float | None]:
    """NAME=k1,...,kL[@SHARE]: heads kept per layer, and the layout's own weight share if given."""
    name, sep, counts = text.partition("=")
    counts, at, share_text = counts.partition("@")
    try:
        kept = [int(c) for c in counts.split(",")]
        share = float(share_text) if at else None
    except ValueError:
        kept, share = [], None
    if not sep or len(kept) != layers or not all(1 <= k <= heads for k in kept) or (at and not 0 < (share or 0) < 1):
        raise SystemExit(f"--layout {text!r}: expected NAME=k1,...,k{layers}, heads kept per layer, "
                         f"each 1..{heads}, optionally @SHARE of the weights (a fraction between 0 and 1)")
    return name, kept, share


def ffn_rows(kept_heads: list[int], share: float, config) -> list[int]:
    """FFN rows per layer that spend the rest of `share` of the encoder weights, spread evenly."""
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = hidden // config.num_attention_heads
    budget = share * layers * (4 * hidden * hidden + 2 * hidden * inter)
    rows = round((budget - sum(kept_heads) * 4 * hidden * head_dim) / (2 * hidden))
    if not layers <= rows <= layers * inter:
        raise SystemExit(f"{sum(kept_heads)} heads leave {rows} FFN rows at {share:.0%} of the weights: "
                         "choose fewer heads or a larger --share")
    return [rows // layers + (i < rows % layers) for i in range(layers)]


def with_kept(model, example, heads: list[int], rows: list[int], seed: int) -> torch.fx.GraphModule:
    """The converted model that keeps `heads[i]` heads and `rows[i]` FFN rows of layer i (random ones)."""
    prepared = mp.prepare(model, mp.PruningConfig(granularity=("head", "row"), prune_output_rows=False), example)
    masks = mask_modules(prepared)
    head_masks = [m for name, m in masks.items() if name.endswith("__heads")]
    row_masks = [m for name, m in masks.items() if name.endswith("__rows")]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mask, k in zip(head_masks + row_masks, heads + rows, strict=True):
            n = mask.scores.numel()
            mask.scores.copy_(torch.randn(n, generator=g))
            mask.threshold.fill_(math.log((k - 0.5) / (n - k + 0.5)))  # ceil(sigmoid(T) * n) = k
    return mp.convert(prepared.eval())


def attention_cost(points: list[tuple[float, float, float]]) -> float | None:
    """A head's attention time in weights' worth, fitted to (weights kept, heads kept, ms) points.

    Least squares on ms = fixed + weights * per_weight + heads * per_head; the answer is
    per_head / per_weight, the figure `leap.head_cost` models. None when the layouts do
    not separate heads from weights (fewer than two head counts at one weight share).
    """
    a = np.array([[1.0, w, h] for w, h, _ in points])
    if len(points) < 3 or np.linalg.matrix_rank(a) < 3:
        return None
    fixed, per_weight, per_head = np.linalg.lstsq(a, np.array([ms for *_, ms in points]), rcond=None)[0]
    return float(per_head / per_weight) if per_weight > 0 else None


def main(argv: list[str] | None = None, model: torch.nn.Module | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", action="append", default=None,
                        help="NAME=k1,...,kL[@SHARE]: heads kept per layer, FFN rows filling SHARE (default --share) of "
                             f"the encoder weights (repeatable; default: {' '.join(DEFAULT_LAYOUTS)})")
    parser.add_argument("--share", type=float, default=0.2, help="remaining share of the encoder weights")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if not 0 < args.share < 1:
        raise SystemExit(f"--share {args.share}: expected a fraction between 0 and 1")
    model = (model or load_packaged_model(num_labels=3)[0]).eval()
    config = model.config
    if max(args.seq) > config.max_position_embeddings or min(args.seq) < 1:
        raise SystemExit(f"--seq {args.seq}: each length must be 1..{config.max_position_embeddings}, the model's positions")
    layouts = [parse_layout(t, config.num_hidden_layers, config.num_attention_heads)
               for t in args.layout or DEFAULT_LAYOUTS]
    ids = torch.randint(1000, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    print(machine_header(args.threads))
    print(f"batch {args.batch}, ONNX Runtime, median of {args.repeats} interleaved runs\n")

    rows_out, fits = [], []
    head_dim = config.hidden_size // config.num_attention_heads
    total_heads = config.num_hidden_layers * config.num_attention_heads
    with tempfile.TemporaryDirectory() as tmp:
        sessions, shapes = {}, {}
        models = [("dense", mp.convert(mp.prepare(model, mp.PruningConfig(target=1.0), example)), None, None)]
        for name, heads, share in layouts:
            rows = ffn_rows(heads, args.share if share is None else share, config)
            models.append((name, with_kept(model, example, heads, rows, seed=len(models)), heads, rows))
        for name, gm, heads, rows in models:
            path = mp.export_onnx(gm, Path(tmp) / f"{name}.onnx", example)
            sessions[name] = mp.runtime.InferenceSession(path, num_threads=args.threads, spinning=False)
            shapes[name] = (heads, rows, mp.sparsity_report(gm))
        rng = np.random.default_rng(0)
        for seq in args.seq:
            ids = rng.integers(1000, config.vocab_size, (args.batch, seq), dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            ms = time_side_by_side({k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()},
                                   repeats=args.repeats)
            for name, (heads, rows, report) in shapes.items():
                rows_out.append([
                    seq, name, "all" if heads is None else f"{sum(heads)} {heads}",
                    "all" if rows is None else f"{sum(rows)}", f"{report.remaining:.1%}",
                    f"{ms[name]:.1f}", f"{ms['dense'] / ms[name]:.2f}x",
                ])
                print(" | ".join(str(c) for c in rows_out[-1]), flush=True)
            worth = attention_cost([(report.kept, total_heads if heads is None else sum(heads), ms[name])
                                    for name, (heads, _, report) in shapes.items()])
            if worth is not None:
                fits.append(f"{seq} tokens: a head's attention costs {worth:,.0f} weights' worth a token, "
                            f"{worth / (seq * head_dim):.1f} x length x head_dim (leap.ATTENTION_COST is {ATTENTION_COST})")
    header = ["seq", "layout", "heads kept", "FFN rows kept", "encoder weights left", "ORT ms", "speed-up"]
    table = markdown_table(header, rows_out)
    print("\n" + table)
    print("\n".join(["", *fits]))
    return table


if __name__ == "__main__":
    main()
