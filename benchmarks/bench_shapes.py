"""Shapes that pay: each shape choice convert can make, timed against the shape it replaces.

Random pruned layouts of the model (heads, FFN rows and attention-output / FC2 rows kept per layer, each
uniform in [0.1, 1]), each converted as

- auto:           as convert chooses: pruned output rows compacted only where the cost model says the saved
                  weights pay for the scatter into the residual stream, zero rows kept elsewhere
- auto (again):   the same model exported again: the noise control (the same shape timed twice)
- compacted:      every pruned output row compacted (convert before the cost model chose)
- rows rounded:   auto with kept FFN and output rows rounded up to --multiple (SIMD-friendly widths, more
                  weights: pays only if the clock rewards round widths beyond what the weights cost;
                  predicted: auto's prediction plus the added weights)

and timed in ONNX Runtime at batch x seq, one session open at a time, rounds alternating. Prints ms,
each form's time over auto's (measured and as the cost model predicts) and the noise control's ratio.

--int8: the same layouts converted with quantize="int8" (int8 weights make kept rows cheaper, the scatter
costs what it did), as auto, auto (again), compacted and

- rows kept:      every pruned output row kept as a zero row (no scatter)

--blocks: layouts with 32x32 blocks at 20-70 % in the same step instead, as

- auto:                FFN and output rows pruned a block of rows at a time (what prepare does with blocks)
- rows one at a time:  the same shares kept row by row (prepare before), so compacted FFN matrices have
                       sides the block size does not divide and stay dense

Run: python -m benchmarks.bench_shapes --cost-model COST.json [--model minilm] [--shapes 4] [--blocks]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from unittest import mock

import torch

import mlprune_fx as mp
import mlprune_fx.passes.insert_masks as insert_masks
from benchmarks.bench_cost_model import model_named, random_shape
from mlprune_fx.calibrate import keep_random_units
from mlprune_fx.core.latency import latency_counts
from mlprune_fx.core.pruning_state import mask_modules, pruning_state
from mlprune_fx.tools.benchmarking import machine_header, markdown_table, session_opener, time_sessions

FORMS = ("auto", "auto (again)", "compacted", "rows rounded")
INT8_FORMS = ("auto", "auto (again)", "compacted", "rows kept")
BLOCK_FORMS = ("auto", "auto (again)", "rows one at a time")


def block_forms(model, cost: mp.CostModel, seed: int) -> tuple[str, dict[str, tuple[torch.fx.GraphModule, float]]]:
    """One random layout with blocks, its rows pruned by block (auto) and one at a time: the same blocks and
    heads, each row mask keeping the same share."""
    name, by_block = random_shape(model, cost, seed, blocks=True, output_rows=True)
    with mock.patch.object(insert_masks, "_row_unit", lambda config, rows: 1):
        one_by_one = mp.prepare(model, pruning_state(by_block).config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        source = mask_modules(by_block)
        for key, mask in mask_modules(one_by_one).items():
            if mask.scores.shape == source[key].scores.shape:
                mask.load_state_dict(source[key].state_dict())
                continue
            n = mask.scores.numel()
            keep_random_units(mask, round(float(source[key]().sum()) / source[key].scores.numel() * n), g)
    forms = {}
    for form, prepared in (("auto", by_block), ("rows one at a time", one_by_one)):
        predicted = latency_counts(prepared, cost.max_block_density, compacting=cost.compacting_pays).ms(cost)
        forms[form] = (mp.convert(prepared), predicted)
    forms["auto (again)"] = forms["auto"]
    return name, {f: forms[f] for f in BLOCK_FORMS}


def converted_forms(prepared, cost: mp.CostModel, multiple: int) -> dict[str, tuple[torch.fx.GraphModule, float]]:
    """form -> (converted model, predicted ms); "auto (again)" is the same model, exported a second time."""
    predicted = latency_counts(prepared, cost.max_block_density, compacting=cost.compacting_pays).ms(cost)
    auto = mp.convert(prepared)
    rounded = mp.convert(prepared, row_multiple=multiple)
    extra = _encoder_weights(rounded) - _encoder_weights(auto)
    return {
        "auto": (auto, predicted),
        "auto (again)": (auto, predicted),
        "compacted": (mp.convert(prepared, compact_output_rows=True),
                      latency_counts(prepared, cost.max_block_density).ms(cost)),
        "rows rounded": (rounded, predicted + cost.weight_ns * extra * cost.tokens * 1e-6),
    }


def int8_forms(prepared, cost: mp.CostModel) -> dict[str, tuple[torch.fx.GraphModule, float]]:
    """The output-row choices in int8; predicted by `cost` as it prices them (an int8 calibration prices int8)."""
    def form(compact: bool | None, compacting):
        predicted = latency_counts(prepared, cost.max_block_density, compacting=compacting).ms(cost)
        return mp.convert(prepared, quantize="int8", compact_output_rows=compact), predicted

    auto = form(None, cost.compacting_pays)
    return {"auto": auto, "auto (again)": auto, "compacted": form(True, None),
            "rows kept": form(False, lambda out, inp, kept: kept == 0)}


def _encoder_weights(gm) -> int:
    return sum(p.numel() for n, p in gm.named_parameters() if n.endswith("weight") and p.dim() == 2
               and not any(s in n for s in ("embeddings", "classifier", "pooler")))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cost-model", type=Path, required=True, help="a calibration of this model on this machine")
    p.add_argument("--model", choices=["minilm", "bert-base"], default="minilm")
    p.add_argument("--layers", type=int, default=12, help="layers of the bert-base shapes")
    p.add_argument("--shapes", type=int, default=4)
    p.add_argument("--multiple", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--blocks", action="store_true", help="layouts with blocks: rows by block against one at a time")
    p.add_argument("--int8", action="store_true", help="output rows compacted or kept, converted to int8")
    args = p.parse_args(argv)
    if args.int8 and args.blocks:
        p.error("--int8 times the output-row choices of heads-and-rows layouts; leave out --blocks")
    torch.set_num_threads(args.threads)
    cost = mp.CostModel.load(args.cost_model)
    model = model_named(args.model, args.layers)
    print(machine_header(args.threads), flush=True)
    print(f"cost model {args.cost_model}: weight {cost.weight_ns:.3g} ns, scatter {cost.scatter_ns:.3g} ns per token",
          flush=True)
    predicted, paths = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        low = min(1000, model.config.vocab_size // 2)
        ids = torch.randint(low, model.config.vocab_size, (2, 16))
        small = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        for i in range(args.shapes):
            if args.blocks:
                name, forms = block_forms(model, cost, 100 + i)
            else:
                name, prepared = random_shape(model, cost, 100 + i, blocks=False, output_rows=True)
                forms = int8_forms(prepared, cost) if args.int8 else converted_forms(prepared, cost, args.multiple)
            for form, (converted, ms) in forms.items():
                predicted[name, form] = ms
                paths[name, form] = mp.export_onnx(converted, Path(tmp) / f"{len(paths)}.onnx", small)
        x = torch.randint(low, model.config.vocab_size, (args.batch, args.seq))
        feeds = {"input_ids": x.numpy(), "attention_mask": torch.ones_like(x).numpy()}
        ms = time_sessions({k: session_opener(v, feeds, args.threads) for k, v in paths.items()}, rounds=args.rounds,
                           runs=args.repeats)
    rows, ratios = [], {f: [] for f in (BLOCK_FORMS if args.blocks else INT8_FORMS if args.int8 else FORMS)[1:]}
    for (name, form), value in ms.items():
        auto = ms[name, "auto"]
        ratio, pred = value / auto, predicted[name, form] / predicted[name, "auto"]
        if form != "auto":
            ratios[form].append(ratio)
        rows.append([name if form == "auto" else "", form, f"{value:.1f}", f"{ratio:.3f}", f"{pred:.3f}"])
    print("\n" + markdown_table(["random shape", "form", "ORT ms", "ms / auto, measured", "predicted"], rows))
    print(f"\n{args.model}, batch {args.batch} x {args.seq}, {args.threads} threads, {args.rounds} rounds; "
          "geometric mean of ms / auto: " + ", ".join(f"{f} {statistics.geometric_mean(r):.3f}" for f, r in ratios.items()))


if __name__ == "__main__":
    main()
