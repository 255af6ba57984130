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
    for name, label in (("dense", "dense"), ("pruned", "pruned")):
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
        plot_tradeoff([("dense", ms["dense"], acc["dense"]), ("pruned", ms["pruned"], acc["pruned"])], run.root / "tradeoff.png")
        lines += ["![accuracy vs latency](tradeoff.png)", ""]
    if len(lines) <= 2:
        raise CLIError(f"{run.root} holds no results yet: run finetune / prune / convert / evaluate / bench first")
    out.write_text("\n".join(lines))
    return out


def report_command(args: argparse.Namespace) -> None:
    run = RunDir(Path(args.run))
    out = write_report(run, Path(args.output) if args.output else None)
    print(f"wrote {out}")
