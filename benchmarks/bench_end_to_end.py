"""Pruned BERT-base, fp32 and int8, against what a user would deploy instead, in ONNX Runtime.

Two forms of mlprune_fx at the same share of encoder weights. Multilevel: step 1 keeps about half
the heads and half the FFN rows of every layer (kept rows rounded to the block size); step 2 keeps
about 40 % of the 32x32 blocks of all six matrices of every layer, which then run on mlprune's
block-sparse kernel: about 20 % of the encoder weights in all. Heads+rows: one step that keeps
that same share of heads and FFN rows, all dense (the form the accuracy benchmark trains).
Masks are random (speed does not depend on which units stay); weights are random
BERT-base. Beside it, in the same run, one session open at a time: the dense model in ONNX Runtime,
the same through ONNX Runtime's `quantize_dynamic`, and Torch-Pruning's uniform heads and FFN
channels at the same share of weights, with and without `quantize_dynamic`.
Run: python -m benchmarks.bench_end_to_end
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
from pathlib import Path

import torch

import mlprune_fx as mp
from mlprune_fx.core.pruning_state import mask_modules
from mlprune_fx.tools.benchmarking import machine_header, markdown_table, session_opener, time_sessions

KEEP_STEP1, KEEP_STEP2, BLOCK, MAX_BLOCK_DENSITY = 0.5, 0.4, 32, 0.7


def _set_keep(prepared, keep: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mask in mask_modules(prepared).values():
            mask.scores.copy_(torch.randn(mask.scores.shape, generator=g))
            mask.threshold.fill_(math.log(keep / (1 - keep)) - 1e-4)
    prepared.eval()


def encoder_weights(gm, state) -> int:
    """Stored encoder-linear weights: dense ones count whole, lowered ones count their kept blocks."""
    total = 0
    for lm in state.linears:
        owner = gm.get_submodule(lm.site.weight.rsplit(".", 1)[0])
        values = getattr(owner, "block_values", None)
        total += values.numel() if values is not None else getattr(owner, "weight").numel()
    return total


def build(model, example, keep1: float, keep2: float, block: int, max_density: float):
    step1 = mp.prepare(model, mp.PruningConfig(granularity=("head", "row"), prune_output_rows=False), example)
    _set_keep(step1, keep1, seed=0)
    compact = mp.convert(step1, row_multiple=block)
    step2 = mp.prepare(compact, mp.PruningConfig(granularity=("block",), block_size=block), example)
    _set_keep(step2, keep2, seed=1)
    final = mp.convert(step2, max_block_density=max_density)
    dense = mp.convert(mp.prepare(model, mp.PruningConfig(), example))
    total = sum(lm.site.numel for lm in dense.meta["mlprune_fx"].linears)
    ratio = encoder_weights(final, final.meta["mlprune_fx"]) / total
    one_step = mp.prepare(model, mp.PruningConfig(granularity=("head", "row"), prune_output_rows=False), example)
    keep = ratio
    for _ in range(2):  # heads come in twelfths: one correction brings the share close to the multilevel one
        _set_keep(one_step, keep, seed=0)
        heads_rows = mp.convert(one_step)
        heads_rows_ratio = encoder_weights(heads_rows, heads_rows.meta["mlprune_fx"]) / total
        keep *= ratio / heads_rows_ratio
    return dense, final, ratio, heads_rows, heads_rows_ratio


def bert_base(layers: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """Random-weight BERT-base shapes and a small example input for capture (seeded, so every run prunes alike)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_hidden_layers=layers)).eval()
    ids = torch.randint(1000, model.config.vocab_size, (2, 16))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def profile(path: Path, feeds: dict, threads: int, fuse_skip_layernorm: bool, runs: int = 10, top: int = 8) -> str:
    """ONNX Runtime's own per-node timings, summed by op type: where a run's time goes."""
    import json
    from collections import Counter

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = mp.runtime.InferenceSession(path, options, num_threads=threads, fuse_skip_layernorm=fuse_skip_layernorm)
    for _ in range(runs):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    total, count = Counter(), Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
            count[e["args"]["op_name"]] += 1 / runs
    parts = [f"{op} {ms:.1f} ms ({count[op]:.0f} nodes)" for op, ms in total.most_common(top)]
    return f"{sum(total.values()):.1f} ms in nodes: " + ", ".join(parts)


def quantize_dynamic(source: Path, target: Path) -> Path:
    """What a user does with no pruning library: ONNX Runtime's one-call int8 (per-tensor weights, QInt8)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    ort_quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    return target


def torch_pruning_model(model, example, remaining: float):
    """Torch-Pruning's uniform heads and FFN channels at `remaining` of the encoder weights, converted
    like every other model here (prepare with nothing to prune, then convert), so one exporter serves all."""
    from benchmarks import baselines

    pruned = copy.deepcopy(model)
    plan = baselines.torch_pruning_prune(pruned, remaining, example)
    return mp.convert(mp.prepare(pruned, mp.PruningConfig(), example)), plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds, a fresh session each")
    parser.add_argument("--keep-step1", type=float, default=KEEP_STEP1, help="heads and FFN rows kept in step 1")
    parser.add_argument("--keep-step2", type=float, default=KEEP_STEP2, help="blocks kept in step 2")
    parser.add_argument("--block", type=int, default=BLOCK)
    parser.add_argument("--max-block-density", type=float, default=MAX_BLOCK_DENSITY)
    parser.add_argument("--layers", type=int, default=12, help="BERT-base has 12")
    parser.add_argument("--no-torch-pruning", dest="torch_pruning", action="store_false",
                        help="leave out the Torch-Pruning rows (they need the torch-pruning package)")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--profile", action="store_true", help="also print ONNX Runtime's per-op-type time split")
    parser.add_argument("--fuse-skip-layernorm", action="store_true",
                        help="let ONNX Runtime fuse Add + LayerNormalization (off by default in InferenceSession)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, example = bert_base(args.layers)
    dense, pruned, ratio, heads_rows, heads_rows_ratio = build(
        model, example, args.keep_step1, args.keep_step2, args.block, args.max_block_density)
    lowered = pruned.meta["mlprune_fx"].lowered
    print(machine_header(args.threads))
    print(
        f"BERT-base shapes ({args.layers} layers), sequence {args.seq}; step 1 keeps {args.keep_step1:.0%} of heads and "
        f"FFN rows, step 2 keeps {args.keep_step2:.0%} of {args.block}x{args.block} blocks; "
        f"{len(lowered)} matrices on the block-sparse kernel; encoder weights left: {ratio:.1%}"
    )
    print(f"heads+rows: one step, heads and FFN rows only; encoder weights left: {heads_rows_ratio:.1%}")
    ours = {"mlprune_fx multilevel": (pruned, ratio), "mlprune_fx heads+rows": (heads_rows, heads_rows_ratio)}
    kept = {"ORT fp32 dense": 1.0, "ORT quantize_dynamic dense": 1.0}
    rows, speedups = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = {"ORT fp32 dense": mp.export_onnx(dense, tmp / "dense.onnx", example)}
        paths["ORT quantize_dynamic dense"] = quantize_dynamic(paths["ORT fp32 dense"], tmp / "dense_int8.onnx")
        if args.torch_pruning:
            tp_model, plan = torch_pruning_model(model, example, ratio)
            print(f"Torch-Pruning: {plan.heads} heads and {plan.ffn} FFN channels a layer, {plan.remaining:.1%} of the weights")
            paths["Torch-Pruning fp32"] = mp.export_onnx(tp_model, tmp / "tp.onnx", example)
            paths["Torch-Pruning + quantize_dynamic"] = quantize_dynamic(paths["Torch-Pruning fp32"], tmp / "tp_int8.onnx")
            kept.update({"Torch-Pruning fp32": plan.remaining, "Torch-Pruning + quantize_dynamic": plan.remaining})
        for i, (name, (gm, share)) in enumerate(ours.items()):
            paths[f"{name} fp32"] = mp.export_onnx(gm, tmp / f"ours{i}.onnx", example)
            paths[f"{name} int8"] = mp.export_onnx(quantized(gm), tmp / f"ours{i}_int8.onnx", example)
            kept.update({f"{name} fp32": share, f"{name} int8": share})
        for batch in args.batch:
            x = torch.randint(1000, model.config.vocab_size, (batch, args.seq))
            feeds = {"input_ids": x.numpy(), "attention_mask": torch.ones_like(x).numpy()}
            ms = time_sessions({k: session_opener(p, feeds, args.threads, fuse_skip_layernorm=args.fuse_skip_layernorm)
                                for k, p in paths.items()}, rounds=args.rounds, runs=args.repeats)
            fp32, q8 = ms["ORT fp32 dense"], ms["ORT quantize_dynamic dense"]
            for name, value in ms.items():
                speedups[batch, name] = (fp32 / value, q8 / value)
                rows.append([batch, name, f"{kept[name]:.1%}", f"{value:.1f}", f"{fp32 / value:.2f}x", f"{q8 / value:.2f}x"])
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
            if args.profile:
                for name, path in paths.items():
                    print(f"  profile, {name}, batch {batch}: {profile(path, feeds, args.threads, args.fuse_skip_layernorm)}", flush=True)
    header = ["batch", "model", "encoder weights left", "ORT ms", "vs ORT fp32 dense", "vs ORT quantize_dynamic dense"]
    table = markdown_table(header, rows)
    print("\n" + table)
    print(f"\nONNX Runtime, default session settings (idle threads spin), {args.threads} threads, one session open at a "
          f"time, {args.rounds} alternating rounds x {args.repeats} runs, median round; sequence {args.seq}.")
    print("targets: mlprune_fx int8 >= 10x ORT fp32 dense and >= 3x ORT quantize_dynamic dense at batch 8")
    for (batch, name), (vs_fp32, vs_q8) in speedups.items():
        if batch == 8 and name.startswith("mlprune_fx") and name.endswith("int8"):
            met = vs_fp32 >= 10 and vs_q8 >= 3
            print(f"  {name}: {vs_fp32:.2f}x and {vs_q8:.2f}x: {'met' if met else 'not met'}")
    if args.markdown:
        args.markdown.write_text(table + "\n")


def quantized(pruned):
    """The pruned model again with its linears in int8 (the same masks: convert(quantize="int8") of the same run)."""
    from mlprune_fx.passes.graph_utils import copy_graph_module
    from mlprune_fx.passes.quantize_linears import quantize_linears

    return quantize_linears(copy_graph_module(pruned))


if __name__ == "__main__":
    main()
