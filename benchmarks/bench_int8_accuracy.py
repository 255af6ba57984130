"""Int8 on real data: what quantization costs each model of an accuracy run, and what it buys in ONNX Runtime.

Reads a folder that `python -m benchmarks.bench_accuracy ... --save-models --out RUN` wrote (its dense
checkpoint and the converted model of each cell) and, per dataset, scores on the test split in ONNX Runtime:

- dense fp32; dense through ONNX Runtime's `quantize_dynamic` (what a user does without pruning);
  dense with mlprune_fx's int8 (`convert(..., quantize="int8")` with nothing pruned);
- every saved pruned model in fp32 and in int8 (`quantize_linears`, what `convert(..., quantize="int8")`
  does after the same masks);

then times them all, one ONNX Runtime session open at a time, in alternating rounds
(`mlprune_fx.tools.benchmarking.time_sessions`). Int8 is judged against its own fp32 parent.

--activations-per-row also scores each int8 model in torch with its dense linears' activations
quantized per token row instead of per tensor (the block-sparse kernel's rule, emulated by its
reference): which granularity the dense path should use, measured.

    python -m benchmarks.bench_int8_accuracy out/int8_rt out/int8_tweets
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

import mlprune_fx as mp
from benchmarks import bench_accuracy
from mlprune_fx.passes.graph_utils import copy_graph_module
from mlprune_fx.passes.quantize_linears import quantize_linears
from mlprune_fx.runtime import int8
from mlprune_fx.tools.benchmarking import machine_header, markdown_table, session_opener, time_sessions
from mlprune_fx.tools.cli.deploy_commands import ort_quantize_dynamic
from mlprune_fx.tools.data import load_dataset
from mlprune_fx.training import accuracy


@torch.library.custom_op("mlprune_bench::int8_linear_rows", mutates_args=())
def int8_linear_rows(x: torch.Tensor, weight_t: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`int8_linear` with X quantized per row, as the block-sparse kernel quantizes it."""
    q, scale, zp = int8.quantize_rows_reference(x)
    exact = (q.to(torch.float64) - zp[..., None].to(torch.float64)) @ weight_t.to(torch.float64)
    y = exact.to(torch.float32) * (scale[..., None] * w_scale)
    return y + bias if bias is not None else y


def per_row_accuracy(gm: torch.fx.GraphModule, data) -> float:
    """Test accuracy in torch with every dense int8 linear quantizing its activations per row."""
    gm = copy_graph_module(gm)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.mlprune.int8_linear.default:
            node.target = torch.ops.mlprune_bench.int8_linear_rows.default
    gm.recompile()
    with torch.no_grad():
        return accuracy(gm, [{k: v for k, v in b.items()} for b in data.test])


def models_of(run: Path, dataset: str) -> dict[str, Path]:
    """{target: saved model folder} of one dataset's mlprune cells (not its other methods')."""
    found = {}
    for folder in sorted((run / "models").glob(f"{dataset}_mlprune_*")):
        method, target = folder.name[len(dataset) + 1:].rsplit("_", 1)
        if method == "mlprune":
            found[target] = folder
    return found


def study(run: Path, args, header: str) -> list[list[object]]:
    results = json.loads((run / "results.json").read_text())
    settings = argparse.Namespace(**bench_accuracy.with_defaults(results["settings"]))
    rows = []
    for dataset, entry in results["datasets"].items():
        splits = load_dataset(dataset, seed=settings.seed, max_examples=settings.examples)
        torch.manual_seed(settings.seed)
        dense, tokenizer = bench_accuracy.load_packaged_model(num_labels=len(splits.label_names))  # as the run loaded it
        dense.load_state_dict(torch.load(run / f"dense_{dataset}.pt", map_location="cpu", weights_only=True))
        data = bench_accuracy.Data(splits, settings, tokenizer, torch.device("cpu"), dataset)
        example = {k: v for k, v in data.example.items() if k != "labels"}
        dense_fp32 = bench_accuracy.deployable(dense.eval(), data.example)
        graphs = {"dense fp32": (1.0, dense_fp32), "dense mlprune_fx int8": (1.0, quantize_linears(copy_graph_module(dense_fp32)))}
        for target, folder in models_of(run, dataset).items():
            pruned = mp.load(folder)
            kept = mp.sparsity_report(pruned).remaining
            graphs[f"{target} fp32"] = (kept, pruned)
            graphs[f"{target} int8"] = (kept, quantize_linears(copy_graph_module(pruned)))
        with tempfile.TemporaryDirectory(prefix="int8_accuracy_") as tmp:
            tmp = Path(tmp)
            paths = {name: mp.export_onnx(gm, tmp / f"{i}.onnx", example) for i, (name, (_, gm)) in enumerate(graphs.items())}
            paths["dense ORT quantize_dynamic"] = ort_quantize_dynamic(paths["dense fp32"], tmp / "dense_qd.onnx")
            kept = {name: share for name, (share, _) in graphs.items()} | {"dense ORT quantize_dynamic": 1.0}
            scores = {}
            for name, path in paths.items():
                scores[name] = bench_accuracy.ort_accuracy(mp.runtime.InferenceSession(path, num_threads=args.threads), data.test)
                print(f"{dataset} {name}: test {scores[name]:.2%}", flush=True)
            if args.activations_per_row:
                for name, (_, gm) in graphs.items():
                    if name.endswith("int8"):
                        print(f"{dataset} {name}, activations per row (torch): test {per_row_accuracy(gm, data):.2%} "
                              f"(per tensor: {scores[name]:.2%})", flush=True)
            feeds = bench_accuracy.latency_feeds(mp.runtime.InferenceSession(paths["dense fp32"]), dense.config.vocab_size,
                                                 args.batch, args.seq, settings.seed)
            ms = time_sessions({name: session_opener(p, feeds, args.threads) for name, p in paths.items()},
                               rounds=args.rounds, runs=args.repeats)
            sizes = {name: p.stat().st_size / 2**20 for name, p in paths.items()}
        order = ["dense fp32", "dense ORT quantize_dynamic", "dense mlprune_fx int8"] + [
            n for n in paths if n.split()[0] != "dense"]
        for name in order:
            parent = name.replace("int8", "fp32").replace("ORT quantize_dynamic", "fp32").replace("mlprune_fx ", "")
            delta = (scores[name] - scores[parent]) * 100 if parent != name else None
            rows.append([dataset, name, f"{kept[name]:.1%}", f"{scores[name]:.2%}", "-" if delta is None else f"{delta:+.2f}",
                         f"{ms[name]:.1f}", f"{ms['dense fp32'] / ms[name]:.2f}x",
                         f"{ms['dense ORT quantize_dynamic'] / ms[name]:.2f}x", f"{sizes[name]:.1f}"])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="folders bench_accuracy wrote with --save-models")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (accuracy and latency)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--activations-per-row", action="store_true",
                   help="also score each int8 model in torch with per-row activation quantization on its dense linears")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    header = machine_header(args.threads)
    print(header, flush=True)
    rows = [row for run in args.runs for row in study(run, args, header)]
    table = markdown_table(["dataset", "model", "encoder weights", "test acc", "vs its fp32 parent (pt)", "ORT ms",
                            "vs dense fp32", "vs dense quantize_dynamic", "ONNX MiB"], rows)
    print("\n" + table)
    print(f"\nONNX Runtime, batch {args.batch} x {args.seq}, {args.threads} threads, one session open at a time, "
          f"{args.rounds} alternating rounds x {args.repeats} runs, median round. Commands: "
          f"python -m benchmarks.bench_int8_accuracy {' '.join(str(r) for r in args.runs)}")


if __name__ == "__main__":
    main()
