"""How well the cost model predicts: calibrate, then time random pruned shapes it never saw.

Calibrates `mlprune_fx.calibrate` on the model (its own pruned variants), then draws `--shapes` random
layouts (heads and FFN rows kept per layer, each uniform in [0.1, 1]; every other one also with
32x32 blocks at a random density; two in four also with attention-output and FC2 rows pruned) and times
each converted model against the dense one in ONNX Runtime, one session open at a time, at batch x seq.
A layout with output rows pruned is converted twice: as convert chooses (compacted where the cost model
says the saved rows pay for the scatter into the residual, "auto") and always compacted. Prints predicted
against measured speed-up and the error.

Options under test: `--kept LOW HIGH` draws the kept shares from another range (the heavily pruned end);
`--compare FILE|default ...` also predicts every shape with other fits (the shipped default, a file from another
machine), shaped as the first fit converted it; `--output-rows-kept S ...` calibrates once per share of output rows
kept in calibrate's output-rows variant (near 1: one row pruned, the scatter priced alone), the first fit converting.
Run: python -m benchmarks.bench_cost_model [--model bert-base] [--quantize int8]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

import mlprune_fx as mp
from mlprune_fx.calibrate import keep_random_units
from mlprune_fx.core.cost_model import default_cost_model
from mlprune_fx.core.latency import latency_counts
from mlprune_fx.core.pruning_state import mask_modules
from mlprune_fx.tools.benchmarking import machine_header, markdown_table, session_opener, time_sessions
from mlprune_fx.tools.models import load_packaged_model

calibration = importlib.import_module("mlprune_fx.calibrate")  # the module; mp.calibrate is its function


def model_named(name: str, layers: int):
    if name == "minilm":
        model, _ = load_packaged_model(num_labels=2)
        return model.eval()
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(num_hidden_layers=layers)).eval()


def random_shape(model, cost: mp.CostModel, seed: int, blocks: bool, output_rows: bool = False,
                 kept: tuple[float, float] = (0.1, 1.0)):
    """(name, prepared model keeping a random share, uniform in `kept`, of each layer's heads and rows, and blocks)."""
    granularity = ("head", "row", "block") if blocks else ("head", "row")
    config = mp.PruningConfig(granularity=granularity, prune_output_rows=output_rows, cost_model=cost)
    prepared = mp.prepare(model, config)
    g = torch.Generator().manual_seed(seed)
    low, high = kept
    density = 0.2 + 0.5 * float(torch.rand((), generator=g))
    shares = []
    with torch.no_grad():
        for key, mask in mask_modules(prepared).items():
            share = density if key.endswith("__blocks") else low + (high - low) * float(torch.rand((), generator=g))
            n = mask.scores.numel()
            k = min(n, max(1, round(share * n)))
            keep_random_units(mask, k, g)
            if not key.endswith("__blocks"):
                shares.append(k / n)
    name = (f"#{seed} units kept {min(shares):.0%}-{max(shares):.0%}" + (f", blocks {density:.0%}" if blocks else "")
            + (", output rows" if output_rows else ""))
    return name, prepared.eval()


def calibrated(model, args, output_rows_kept: float) -> mp.CostModel:
    """mp.calibrate with `output_rows_kept` of the output rows kept in its output-rows variant."""
    started = time.time()
    with mock.patch.object(calibration, "OUTPUT_ROWS_VARIANT", output_rows_kept):
        cost = mp.calibrate(model, batch=args.batch, seq=args.seq, threads=args.threads, quantize=args.quantize)
    print(f"calibrated in {time.time() - started:.0f} s (output rows {output_rows_kept:.1%} kept): weight "
          f"{cost.weight_ns:.3g} ns, block weight {cost.block_weight_ns:.3g} ns, head {cost.head_ns:.3g} ns, fixed "
          f"{cost.fixed_ns:.3g} ns, scatter {cost.scatter_ns:.3g} ns per token; the fit matches its "
          f"{sum(k.startswith('ms ') for k in cost.fit)} variants ({cost.fit['layers_timed']:.0f} layers timed) "
          f"within {cost.fit['max_error']:.1%}", flush=True)
    return cost


def fits_compared(names: list[str]) -> dict[str, mp.CostModel]:
    return {name: default_cost_model() if name == "default" else mp.CostModel.load(name) for name in names}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["minilm", "bert-base"], default="minilm")
    p.add_argument("--layers", type=int, default=4, help="layers of the bert-base shapes (12 is the real one)")
    p.add_argument("--shapes", type=int, default=12)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quantize", choices=["int8"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--kept", type=float, nargs=2, default=(0.1, 1.0), metavar=("LOW", "HIGH"),
                   help="range of the share of each layer's heads and rows the random shapes keep")
    p.add_argument("--output-rows-kept", type=float, nargs="+", default=[calibration.OUTPUT_ROWS_VARIANT],
                   help="share of output rows kept in calibrate's output-rows variant; several: one fit each")
    p.add_argument("--compare", nargs="+", default=[], metavar="FILE",
                   help="cost-model files ('default': the shipped fit) that also predict every shape")
    p.add_argument("--save", type=Path, help="also write the (first) calibration to this JSON file")
    args = p.parse_args(argv)
    if not 0 < args.kept[0] <= args.kept[1] <= 1:
        p.error(f"--kept {args.kept[0]} {args.kept[1]}: needs 0 < LOW <= HIGH <= 1")
    if not all(0 < s <= 1 for s in args.output_rows_kept):
        p.error("--output-rows-kept: shares in (0, 1]")
    compared = fits_compared(args.compare)  # a bad file fails before the timing
    torch.set_num_threads(args.threads)
    model = model_named(args.model, args.layers)
    print(machine_header(args.threads), flush=True)
    fits = {f"output rows {s:.1%}": calibrated(model, args, s) for s in args.output_rows_kept}
    cost = next(iter(fits.values()))
    if args.save:
        print(f"calibration written to {cost.save(args.save)}", flush=True)
    fits |= compared
    dense = mp.convert(mp.prepare(model, mp.PruningConfig()))
    predicted: dict[str, dict[str, float]] = {name: {} for name in fits}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        low = min(1000, model.config.vocab_size // 2)
        ids = torch.randint(low, model.config.vocab_size, (2, 16))
        small = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        paths = {"dense": mp.export_onnx(dense, tmp / "dense.onnx", small)}
        for i in range(args.shapes):
            name, prepared = random_shape(model, cost, i, blocks=i % 2 == 1, output_rows=i % 4 >= 2, kept=args.kept)
            forms = {name: None}
            if i % 4 >= 2:
                forms = {f"{name} (auto)": None, f"{name} (compacted)": True}
            for form, compact in forms.items():
                counts = latency_counts(prepared, cost.max_block_density,
                                        compacting=None if compact else cost.compacting_pays)
                unpruned = latency_counts(prepared, cost.max_block_density, dense=True)
                for fit_name, fit in fits.items():
                    predicted[fit_name][form] = unpruned.ms(fit) / counts.ms(fit)
                converted = mp.convert(prepared, quantize=args.quantize, max_block_density=cost.max_block_density,
                                       compact_output_rows=compact)
                paths[form] = mp.export_onnx(converted, tmp / f"{len(paths)}.onnx", small)
        if args.quantize:
            paths["dense"] = mp.export_onnx(mp.convert(mp.prepare(model, mp.PruningConfig()), quantize=args.quantize),
                                            tmp / "dense_q.onnx", small)
        x = torch.randint(low, model.config.vocab_size, (args.batch, args.seq))
        feeds = {"input_ids": x.numpy(), "attention_mask": torch.ones_like(x).numpy()}

        ms = time_sessions({k: session_opener(v, feeds, args.threads) for k, v in paths.items()}, rounds=args.rounds,
                           runs=args.repeats)
    shapes = list(next(iter(predicted.values())))
    measured = {name: ms["dense"] / ms[name] for name in shapes}
    errors = {fit: {name: speedup / measured[name] - 1 for name, speedup in by_shape.items()}
              for fit, by_shape in predicted.items()}
    first, *others = fits
    rows = [[name, f"{ms[name]:.1f}", f"{measured[name]:.2f}x", f"{predicted[first][name]:.2f}x",
             f"{errors[first][name]:+.1%}", *[f"{predicted[f][name]:.2f}x ({errors[f][name]:+.1%})" for f in others]]
            for name in shapes]
    print("\n" + markdown_table(["random shape", "ORT ms", "measured speed-up", "predicted", "error",
                                 *[f"predicted by {f}" for f in others]], rows))
    print(f"\ndense {ms['dense']:.1f} ms; {args.model}{f' ({args.layers} layers)' if args.model == 'bert-base' else ''}, "
          f"batch {args.batch} x {args.seq}, {args.threads} threads{', int8' if args.quantize else ''}; units kept "
          f"{args.kept[0]:.0%}-{args.kept[1]:.0%} a matrix")
    for fit, by_shape in errors.items():
        size = [abs(e) for e in by_shape.values()]
        print(f"prediction error of {fit}: mean {statistics.mean(size):.1%}, max {max(size):.1%}, signed mean "
              f"{statistics.mean(by_shape.values()):+.1%} (target: within 10 %)")
    for name in shapes:
        if name.endswith("(auto)"):
            compacted = name.replace("(auto)", "(compacted)")
            print(f"{name.removesuffix(' (auto)')}: as convert chooses {ms[name]:.1f} ms, always compacted "
                  f"{ms[compacted]:.1f} ms ({ms[compacted] / ms[name]:.2f}x)")


if __name__ == "__main__":
    main()
