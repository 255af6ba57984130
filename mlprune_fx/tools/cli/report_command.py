"""mlprune report: a Markdown page with plots of what a run did."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlprune_fx.tools.benchmarking import markdown_table
from mlprune_fx.tools.plots import plot_kept, plot_tradeoff, plot_training

from .run_dir import CLIError, RunDir


def write_report(run: RunDir, out: Path | None = None) -> Path:
    from mlprune_fx import load, sparsity_report

    out = out or run.root / "report.md"
    run.check_current((*run.model_steps(), "evaluate", "bench"))
    lines = [f"# mlprune report: {run.root.name}", ""]
    data = run.read("data")
    if data:
        lines += [f"data: `{data['source']}` (seed {data['seed']}, max length {data['max_length']})", ""]
    prune = run.read("prune")
    evaluate = run.read("evaluate") or {}
    bench = run.read("bench") or {}
    acc = evaluate.get("accuracy", {})
    ms = bench.get("ms", {})
    sizes = bench.get("sizes_mib", {})
    rows = []
    pruned = "pruned, int8" if (run.read("export") or {}).get("quantization") else "pruned"
    for name, label in (("dense", "dense"), ("dense_ort_int8", "dense, ONNX Runtime quantize_dynamic"), ("pruned", pruned)):
        if name not in acc and name not in ms:
            continue
        rows.append([
            label,
            f"{acc[name]:.2%}" if name in acc else "",
            f"{ms[name]:.1f}" if name in ms else "",
            f"{sizes[name]:.1f}" if name in sizes else "",
        ])
    if acc or ms:
        lines += [markdown_table(["model", f"accuracy ({evaluate.get('split', '')})", "ONNX Runtime ms", "ONNX MiB"], rows), ""]
        if evaluate.get("dense_model") not in (None, str(run.dense)):
            lines += [f"dense: the model `prune --model` started from, `{evaluate['dense_model']}`", ""]
        if "dense" in ms and "pruned" in ms:
            lines += [f"speed-up {ms['dense'] / ms['pruned']:.2f}x at batch {bench['batch']} x sequence {bench['seq']}, {bench['threads']} threads; {bench['machine']}", ""]
        if "dense_ort_int8" in ms and "pruned" in ms:
            lines += [f"against the dense model through quantize_dynamic: {ms['dense_ort_int8'] / ms['pruned']:.2f}x", ""]
    model_path = run.converted if run.converted.exists() else run.prepared
    if model_path.exists():
        model = load(model_path)
        report = sparsity_report(model)
        lines += [f"encoder weights remaining: {report.remaining:.1%}", "", f"![kept weights]({plot_kept(model, run.root / 'kept.png').name})", ""]
    if prune:
        for i, log in enumerate(prune.get("logs", [])):
            if log.get("rho"):
                target = prune.get("config", {}).get("target") or (prune.get("r1") if i == 0 else prune.get("r2")) or 0
                name = f"training_{i}.png"
                plot_training(log["steps"], log["rho"], log["lam"], target, run.root / name,
                              remaining=None)
                lines += [f"![training, step {i + 1}]({name})", ""]
    if "dense" in acc and "pruned" in acc and "dense" in ms and "pruned" in ms:
        points = [("dense", ms["dense"], acc["dense"]), (pruned, ms["pruned"], acc["pruned"])]
        if "dense_ort_int8" in ms and "dense_ort_int8" in acc:
            points.insert(1, ("dense, quantize_dynamic", ms["dense_ort_int8"], acc["dense_ort_int8"]))
        plot_tradeoff(points, run.root / "tradeoff.png")
        lines += ["![accuracy vs latency](tradeoff.png)", ""]
    if len(lines) <= 2:
        raise CLIError(f"{run.root} holds no results yet: run finetune / prune / convert / evaluate / bench first")
    out.write_text("\n".join(lines))
    return out


def report_command(args: argparse.Namespace) -> None:
    run = RunDir(Path(args.run))
    out = write_report(run, Path(args.output) if args.output else None)
    print(f"wrote {out}")
