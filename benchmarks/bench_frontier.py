"""The accuracy-latency frontier: for a speed-up a user asks for, which method gives the most accurate model.

For each dataset the packaged MiniLM is fine-tuned once (the teacher and starting point of every
method, as in bench_accuracy) and, for each requested speed-up S, pruned by

- mlprune_speedup:        PruningConfig(speedup=S), heads + rows, under the cost model calibrated here
- mlprune_speedup_blocks: the same with 32x32 blocks in the same step
- mlprune_speedup_int8:   S asked of the model's int8 form, trained under an int8 calibration made here (kept
                          weights cost int8 time, heads their float32 attention): S over dense float32 in int8
- mlprune:                today's weight target, 1/S of the encoder weights
- mlprune_2step:          MLPruning's two steps (heads + rows to 0.5, then 32x32 blocks), 1/S of the weights:
                          the same three granularities as mlprune_speedup_blocks in two steps instead of one
- torch_pruning:          Torch-Pruning's uniform heads and channels, 1/S of the weights
- magnitude:              global unstructured magnitude, 1/S of the weights

with the same budget and the prune seeds given (fixed before the run). Every pruned model is then
also run in int8: mlprune's through `convert(..., quantize="int8")`, the others through ONNX Runtime's
`quantize_dynamic` (what their users would stack), beside the dense model through `quantize_dynamic`.

x is the speed-up over the dense fp32 model measured in ONNX Runtime (batch x seq, one session open at
a time, side by side in one run); y is test accuracy. A method's frontier at S is its best mean test
accuracy (over the seeds) among its points measured at S or faster. Prints the table, the targets
(predicted within 10 % of measured; asking S gives >= 0.9 S; mlprune's frontier above every other
method from 2x to 8x; within 1 point of dense at 3x) and writes OUT/frontier.md and OUT/frontier.png.

Step 1 calibrates the cost model here (OUT/cost_model.json, reused). Step 2 runs bench_accuracy per
seed into OUT/seedN (resumable per cell; options after `--` go to it unchanged, e.g. the dataset's
recipe). Step 3 times every saved model in fp32 and int8 beside dense, one session alive at a time (the x of
both), and scores the int8 forms (OUT/int8.json, resumable per model).
`--report-only` reports what OUT holds without training or timing; `--train-only` stops after step 2, so a
machine without the deployment CPU can train while that CPU times later (every timing records its CPU, and the
report says when a table's speed-ups come from more than one). `--predict-with COST.json` also
predicts every saved model with another fit, against the same timings (a recalibration judged without
retraining).

    python -m benchmarks.bench_frontier --datasets rotten_tomatoes --out out/frontier_rt -- \\
        --finetune-steps 2000 --finetune-lr 1e-4 --prune-steps 1600 --batch-size 16 --lr 2e-4 --lambda-f 200000
    python -m benchmarks.bench_frontier --datasets tweets --out out/frontier_tweets -- \\
        --finetune-steps 2000 --finetune-lr 1e-4 --prune-steps 3200 --batch-size 16 --lr 2e-4 --lambda-f 200000 \\
        --group-by-length --no-output-rows --hold-masks --magnitude-prior 1

(the grid's recipes. Where a GPU is lent, `--device cuda` after `--` trains there, ONNX Runtime still times on the
CPU; mlprune_speedup_blocks and mlprune_2step need the CPU kernel, so run them in a CPU pass of their own: `--methods ...`.)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

import mlprune_fx as mp
from benchmarks import bench_accuracy
from mlprune_fx.core.latency import latency_counts
from mlprune_fx.core.leap import active_cost_model
from mlprune_fx.core.pruning_state import pruning_state
from mlprune_fx.passes.graph_utils import copy_graph_module
from mlprune_fx.passes.quantize_linears import quantize_linears
from mlprune_fx.tools.benchmarking import machine_header, machine_line, markdown_table, session_opener, time_sessions
from mlprune_fx.tools.cli.deploy_commands import ort_quantize_dynamic
from mlprune_fx.tools.data import load_dataset

METHODS = ("mlprune_speedup", "mlprune_speedup_blocks", "mlprune_speedup_int8", "mlprune", "mlprune_2step",
           "torch_pruning", "magnitude")
OURS = ("mlprune_speedup", "mlprune_speedup_blocks", "mlprune_speedup_int8", "mlprune", "mlprune_2step")
INT8_TARGETED = ("mlprune_speedup_int8",)  # their prediction and asked S are of the int8 form
ASKED = ("mlprune_speedup", "mlprune_speedup_blocks", "mlprune_speedup_int8 + int8")  # held to >= 0.9 S measured
DENSE_QD = "dense + ORT quantize_dynamic"
INT8_TIMINGS = "int8.json"  # step 3's record in OUT
UNRECORDED = "unrecorded"


def knob(speedup: float) -> float:
    """The bench_accuracy target of a requested speed-up: 1/S (a share of the weights, or 1/S asked)."""
    return round(1 / speedup, 6)


def calibrated(out: Path, args, quantize: str | None = None) -> Path:
    path = out / ("cost_model_int8.json" if quantize else "cost_model.json")
    if not path.exists():
        model, _ = bench_accuracy.load_packaged_model(num_labels=2)
        cost = mp.calibrate(model.eval(), batch=args.batch, seq=args.seq, threads=args.threads, quantize=quantize,
                            progress=args.progress)
        cost.save(path)
        print(f"cost model calibrated here: {path} (fit within {cost.fit['max_error']:.1%} of its variants)", flush=True)
    return path


def accuracy_runs(out: Path, cost_path: Path, args) -> list[Path]:
    """bench_accuracy once per seed, every method at 1/S, on the same dense teacher."""
    runs = []
    for seed in args.seeds:
        run = out / f"seed{seed}"
        argv = ["--datasets", *args.datasets, "--targets", *[f"{knob(s):g}" for s in args.speedups],
                "--methods", *args.methods, "--prune-seed", str(seed), "--save-models", "--resume",
                "--cost-model", str(cost_path), "--threads", str(args.threads), "--latency-batch", str(args.batch),
                "--latency-seq", str(args.seq), "--out", str(run), *args.rest]
        if runs:
            argv += ["--dense-from", str(runs[0])]
        if any(m in INT8_TARGETED for m in args.methods):
            argv += ["--int8-cost-model", str(calibrated(out, args, "int8"))]
        if not args.progress:
            argv.append("--no-progress")
        bench_accuracy.main(argv)
        runs.append(run)
    return runs


def header_machine(header: str) -> str:
    """machine_line's part of a machine_header (where a results file's run last ran: its cells before they
    recorded their own machine)."""
    return header.splitlines()[0].removeprefix("machine: ").split("; threads")[0]


def saved_timings(out: Path) -> dict[str, dict]:
    """What step 3 has timed and scored so far in `out` (run/dataset/cell -> its record)."""
    path = out / INT8_TIMINGS
    return json.loads(path.read_text()) if path.exists() else {}


def deployed_points(runs: list[Path], args) -> dict[str, dict]:
    """Every saved model timed in fp32 and int8 beside the dense model, one session alive at a time, and its int8
    form's test accuracy; the dense model through quantize_dynamic too (OUT/int8.json, resumable per model)."""
    path = args.out / INT8_TIMINGS
    done = saved_timings(args.out)
    for run in runs:
        results = json.loads((run / "results.json").read_text())
        settings = argparse.Namespace(**bench_accuracy.with_defaults(results["settings"]))
        for dataset, entry in results["datasets"].items():
            wanted = [(m, t) for m in args.methods for t in map(knob, args.speedups)
                      if "fp32_ms" not in done.get(f"{run.name}/{dataset}/{bench_accuracy.cell_key(m, t)}", {})
                      and bench_accuracy.saved_model_path(run, dataset, m, t).exists()]
            dense_key = f"{run.name}/{dataset}/dense"
            if not wanted and dense_key in done:
                continue
            splits = load_dataset(dataset, seed=settings.seed, max_examples=settings.examples)
            torch.manual_seed(settings.seed)
            dense, tokenizer = bench_accuracy.load_packaged_model(num_labels=len(splits.label_names))
            dense.load_state_dict(torch.load(run / f"dense_{dataset}.pt", map_location="cpu", weights_only=True))
            data = bench_accuracy.Data(splits, settings, tokenizer, torch.device("cpu"), dataset)
            example = {k: v for k, v in data.example.items() if k != "labels"}
            with tempfile.TemporaryDirectory(prefix="frontier_") as tmp:
                tmp = Path(tmp)
                dense_path = mp.export_onnx(bench_accuracy.deployable(dense.eval(), data.example), tmp / "dense.onnx", example)
                feeds = bench_accuracy.latency_feeds(mp.runtime.InferenceSession(dense_path), dense.config.vocab_size,
                                                     args.batch, args.seq, settings.seed)
                todo = {} if dense_key in done else {dense_key: (None, ort_quantize_dynamic(dense_path, tmp / "dense_qd.onnx"))}
                for i, (method, target) in enumerate(wanted):
                    model = mp.load(bench_accuracy.saved_model_path(run, dataset, method, target))
                    key = f"{run.name}/{dataset}/{bench_accuracy.cell_key(method, target)}"
                    fp32 = mp.export_onnx(model, tmp / f"{i}_fp32.onnx", example)
                    if method in OURS:
                        todo[key] = (fp32, mp.export_onnx(quantize_linears(copy_graph_module(model)), tmp / f"{i}.onnx", example))
                    else:
                        todo[key] = (fp32, ort_quantize_dynamic(fp32, tmp / f"{i}.onnx"))
                for key, (fp32_path, int8_path) in todo.items():
                    session = mp.runtime.InferenceSession(int8_path, num_threads=args.threads)
                    acc = bench_accuracy.ort_accuracy(session, data.test)
                    del session
                    models = {"dense": dense_path, "int8": int8_path} | ({"fp32": fp32_path} if fp32_path else {})
                    ms = time_sessions({k: session_opener(v, feeds, args.threads) for k, v in models.items()},
                                       rounds=args.rounds, runs=args.repeats)
                    done[key] = {"test_acc": acc, "ort_ms": ms["int8"], "dense_ort_ms": ms["dense"],
                                 "machine": machine_line()}
                    if fp32_path:
                        done[key]["fp32_ms"] = ms["fp32"]
                    bench_accuracy.save_json(done, path)
                    fp32_note = f"fp32 {ms['dense'] / ms['fp32']:.2f}x, " if fp32_path else ""
                    print(f"{key}: {fp32_note}int8 test {acc:.2%}, {ms['dense'] / ms['int8']:.2f}x", flush=True)
    return done


def predictions_with(runs: list[Path], cost: mp.CostModel, args) -> dict[str, float]:
    """Each saved pruned model's speed-up as `cost` predicts it, shaped as convert built it (the compacting
    choice of the fit it was converted with): another fit judged on the same timings."""
    found = {}
    packaged, tokenizer = bench_accuracy.load_packaged_model(num_labels=2)
    unpruned = bench_accuracy.dense_counts(packaged, dict(tokenizer(["a short input"], return_tensors="pt")), cost)
    for run in runs:
        for dataset in json.loads((run / "results.json").read_text())["datasets"]:
            for method, target in ((m, knob(s)) for m in args.methods for s in args.speedups):
                path = bench_accuracy.saved_model_path(run, dataset, method, target)
                if not path.exists():
                    continue
                model = mp.load(path)
                dense = latency_counts(model, cost.max_block_density, dense=True)  # a peer's: its own shapes
                if method in OURS:
                    compacting = active_cost_model(pruning_state(model).config).compacting_pays
                    pruned = latency_counts(model, cost.max_block_density, compacting=compacting)
                else:
                    pruned, dense = dense, unpruned
                found[f"{run.name}/{dataset}/{bench_accuracy.cell_key(method, target)}"] = dense.ms(cost) / pruned.ms(cost)
    return found


def points(runs: list[Path], int8: dict[str, dict], args,
           other_fit: dict[str, float] | None = None) -> dict[str, dict[tuple[str, float], list[dict]]]:
    """Per dataset: (method, requested S) -> one record per seed (test_acc, measured and predicted speed-up,
    and with `other_fit` the speed-up predictions_with gave)."""
    found: dict[str, dict[tuple[str, float], list[dict]]] = {}
    for run in runs:
        results = json.loads((run / "results.json").read_text())
        cells_machine = header_machine(results["machine"])
        for dataset, entry in results["datasets"].items():
            table = found.setdefault(dataset, {})
            dense = entry["dense"]
            table.setdefault(("dense", 1.0), []).append({"test_acc": dense["test_acc"], "speedup": 1.0})
            if (q := int8.get(f"{run.name}/{dataset}/dense")) is not None:
                table.setdefault((DENSE_QD, 1.0), []).append(
                    {"test_acc": q["test_acc"], "speedup": q["dense_ort_ms"] / q["ort_ms"], "machine": q.get("machine")})
            for s in args.speedups:
                for method in args.methods:
                    key = bench_accuracy.cell_key(method, knob(s))
                    cell = entry["cells"].get(key)
                    if cell is None or "error" in cell:
                        continue
                    q = int8.get(f"{run.name}/{dataset}/{key}")
                    timed = q if q is not None and "fp32_ms" in q else None  # else the cell's own timing
                    int8_targeted = method in INT8_TARGETED
                    table.setdefault((method, s), []).append(
                        {"test_acc": cell["test_acc"], "predicted": None if int8_targeted else cell.get("predicted_speedup"),
                         "predicted_with": (other_fit or {}).get(f"{run.name}/{dataset}/{key}"),
                         "speedup": timed["dense_ort_ms"] / timed["fp32_ms"] if timed else
                         cell["dense_ort_ms"] / cell["ort_ms"],
                         "machine": timed.get("machine") if timed else cell.get("machine", cells_machine)})
                    if q is not None:
                        name = f"{method} + int8" if method in OURS else f"{method} + ORT quantize_dynamic"
                        table.setdefault((name, s), []).append(
                            {"test_acc": q["test_acc"], "speedup": q["dense_ort_ms"] / q["ort_ms"],
                             "predicted": cell.get("predicted_speedup") if int8_targeted else None,
                             "machine": q.get("machine")})
    return found


def mean(records: list[dict], field: str) -> float:
    return statistics.mean(r[field] for r in records)


def spread(records: list[dict], field: str) -> float:
    """Half the range over the seeds (with two seeds: the distance of each from the mean)."""
    values = [r[field] for r in records]
    return (max(values) - min(values)) / 2


def family(name: str) -> str:
    """Which method a point belongs to: ours (every mlprune form, fp32 or int8) or a peer."""
    if name == DENSE_QD:
        return DENSE_QD
    base = name.split(" + ")[0]
    return "mlprune" if base in OURS else base


def frontier(table: dict[tuple[str, float], list[dict]], fam: str, speedup: float) -> tuple[float, str] | None:
    """The family's best mean test accuracy among its points measured at `speedup` or faster, and which point."""
    best = None
    for (name, asked), records in table.items():
        if family(name) != fam or mean(records, "speedup") < speedup * 0.999:
            continue
        acc = mean(records, "test_acc")
        if best is None or acc > best[0]:
            best = (acc, f"{name} @ {asked:g}x" if name not in ("dense", DENSE_QD) else name)
    return best


def report(found: dict, test_sizes: dict[str, int], args) -> tuple[str, list[str]]:
    parts, verdicts = [], []
    for dataset, table in found.items():
        timed = machine_counts(table)
        rows = []
        for (name, asked), records in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            rows.append([name, "-" if name in ("dense", DENSE_QD) else f"{asked:g}x", len(records),
                         f"{mean(records, 'test_acc'):.2%} ± {spread(records, 'test_acc') * 100:.2f}",
                         f"{mean(records, 'speedup'):.2f}x", mean_of(records, "predicted")]
                        + ([mean_of(records, "predicted_with")] if args.predict_with else []))
        other = [f"predicted by {args.predict_with.name}"] if args.predict_with else []
        parts += [f"### {dataset}", "", markdown_table(
            ["model", "asked", "seeds", "test acc (mean ± half range)", "measured speed-up", "predicted"] + other,
            rows), "", "Timed on: " + "; ".join(f"{m} ({n} points)" for m, n in sorted(timed.items())), ""]
        machines = set(timed) - {UNRECORDED}
        if len(machines) > 1:
            verdicts.append(f"{dataset}: speed-ups timed on {len(machines)} CPUs, which measure different ratios: "
                            "time every point on one (run without --report-only there)")
        n = test_sizes[dataset]
        dense_acc = mean(table[("dense", 1.0)], "test_acc")
        se = math.sqrt(dense_acc * (1 - dense_acc) / n)
        families = sorted({family(name) for name, _ in table} - {"dense", DENSE_QD, "mlprune"}) + [DENSE_QD]
        front_rows = []
        for s in args.speedups:
            ours = frontier(table, "mlprune", s)
            row = [f"{s:g}x", "-" if ours is None else f"{ours[0]:.2%} ({ours[1]})"]
            for fam in families:
                peer = frontier(table, fam, s)
                row.append("-" if peer is None else f"{peer[0]:.2%}")
                if peer is None:
                    continue
                if ours is None:
                    verdicts.append(f"{dataset} at {s:g}x: no mlprune model that fast, {fam} {peer[0]:.2%}: BELOW")
                    continue
                gap = ours[0] - peer[0]
                verdict = "above" if gap > se else ("tie" if gap >= -se else "BELOW")
                verdicts.append(f"{dataset} at {s:g}x: mlprune {ours[0]:.2%} vs {fam} {peer[0]:.2%}: {verdict}")
            front_rows.append(row)
        parts += [f"Frontier (best mean test accuracy at the speed-up or faster; one standard error of the test split "
                  f"{se * 100:.2f} pt):", "", markdown_table(["speed-up", "mlprune"] + families, front_rows), ""]
        at3 = frontier(table, "mlprune", 3.0)
        if at3 is None:
            verdicts.append(f"{dataset}: no mlprune model measured at 3x or faster (target: within 1 point of dense "
                            "at 3x): MISSED")
        else:
            gap = (at3[0] - dense_acc) * 100
            verdicts.append(f"{dataset}: mlprune at 3x {at3[0]:.2%} ({at3[1]}) vs dense {dense_acc:.2%}: {gap:+.2f} pt "
                            f"({'met' if gap >= -1 else 'MISSED'}: within 1 point)")
        for (name, asked), records in table.items():
            for r in records:
                if r.get("predicted") is not None:
                    error = r["predicted"] / r["speedup"] - 1
                    verdicts.append(f"{dataset} {name} @ {asked:g}x: predicted {r['predicted']:.2f}x, measured "
                                    f"{r['speedup']:.2f}x ({error:+.1%}; target within 10 %)")
                if name in ASKED:
                    verdicts.append(f"{dataset} {name} asked {asked:g}x: measured {r['speedup']:.2f}x "
                                    f"({'met' if r['speedup'] >= 0.9 * asked else 'MISSED'}: >= {0.9 * asked:.2f}x)")
        if args.predict_with:
            for field, fit in (("predicted", "the fit each model trained with"), ("predicted_with", args.predict_with.name)):
                errors = [r[field] / r["speedup"] - 1 for records in table.values() for r in records
                          if r.get(field) is not None]
                if errors:
                    verdicts.append(f"{dataset}: predicted by {fit}: error {min(errors):+.1%} to {max(errors):+.1%}, "
                                    f"{statistics.mean(map(abs, errors)):.1%} on average over {len(errors)} models")
    return "\n".join(parts), verdicts


def machine_counts(table: dict[tuple[str, float], list[dict]]) -> dict[str, int]:
    """How many of the table's speed-ups each CPU measured (step 3's records before they kept it: UNRECORDED)."""
    return dict(Counter(r.get("machine") or UNRECORDED for (name, _), records in table.items() if name != "dense"
                        for r in records))


def mean_of(records: list[dict], field: str) -> str:
    values = [r[field] for r in records if r.get(field) is not None]
    return f"{statistics.mean(values):.2f}x" if values else "-"


def plot(found: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(found), figsize=(6.5 * len(found), 4.5), squeeze=False)
    for ax, (dataset, table) in zip(axes[0], found.items()):
        names = sorted({name for name, _ in table})
        for name in names:
            pts = sorted((mean(r, "speedup"), mean(r, "test_acc") * 100) for (n, _), r in table.items() if n == name)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linestyle="-" if len(pts) > 1 else "",
                    label=name)
        ax.set_xscale("log")
        ax.set_xlabel("measured ONNX Runtime speed-up over dense fp32")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["rotten_tomatoes"])
    p.add_argument("--speedups", nargs="+", type=float, default=[2.0, 3.0, 5.0, 8.0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="prune seeds, fixed before the run")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (calibration and timing)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of each int8 timing")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--report-only", action="store_true",
                   help="train and time nothing: report the cells and timings OUT holds (a grid still filling)")
    p.add_argument("--train-only", action="store_true",
                   help="steps 1 and 2 only: train and score, time nothing (time on the deployment machine later)")
    p.add_argument("--predict-with", type=Path, metavar="COST.json",
                   help="also predict every pruned model with this cost model, against the same timings")
    args = p.parse_args(own)
    if any(s <= 1 for s in args.speedups):
        p.error(f"--speedups {args.speedups}: each must be above 1")
    args.rest = rest
    args.out.mkdir(parents=True, exist_ok=True)
    header = machine_header(args.threads)
    print(header, flush=True)
    if args.report_only:
        runs = [run for run in (args.out / f"seed{seed}" for seed in args.seeds) if (run / "results.json").exists()]
        if not runs:
            p.error(f"--report-only: {args.out} holds no results of seeds {args.seeds}")
        int8 = saved_timings(args.out)
    else:
        runs = accuracy_runs(args.out, calibrated(args.out, args), args)
        if args.train_only:
            print(f"trained and scored into {args.out}; time them with the same command without --train-only")
            return
        int8 = deployed_points(runs, args)
    other_fit = predictions_with(runs, mp.CostModel.load(args.predict_with), args) if args.predict_with else None
    found = points(runs, int8, args, other_fit)
    sizes = {d: e["sizes"]["test"] for d, e in json.loads((runs[0] / "results.json").read_text())["datasets"].items()}
    text, verdicts = report(found, sizes, args)
    command = "python -m benchmarks.bench_frontier " + " ".join(argv)
    md = "\n".join([f"command: `{command}`", "", "```", header, "```", "", text, "Targets:", "",
                    *(f"- {v}" for v in verdicts), ""])
    (args.out / "frontier.md").write_text(md)
    plot(found, args.out / "frontier.png")
    print("\n" + text + "\nTargets:\n" + "\n".join(verdicts))
    print(f"\nwritten: {args.out / 'frontier.md'}, {args.out / 'frontier.png'}")


if __name__ == "__main__":
    main()
