"""The embedded demo: the packaged MiniLM on the packaged Rotten Tomatoes snippets, end to end.

It runs the `mlprune` steps on one run folder: fine-tune the dense teacher, LEAP-prune heads
and rows to the target, convert with int8 linears, export to ONNX, evaluate, time ONNX Runtime
(the dense model, the dense model through ONNX Runtime's quantize_dynamic, and ours), and write
the report. The final table and the report (with plots) are also copied to --docs.
Run: python -m mlprune_fx.tools.demo   (or `make demo`)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from mlprune_fx.tools.benchmarking import markdown_table
from mlprune_fx.tools.cli import main as mlprune


def _step(*argv: object) -> None:
    argv = [str(a) for a in argv]
    print(f"\n$ mlprune {' '.join(argv)}", flush=True)
    code = mlprune(argv)
    if code:
        raise SystemExit(f"demo stopped: `mlprune {argv[0]}` failed")


def summary_table(run: Path) -> str:
    read = lambda name: json.loads((run / f"{name}.json").read_text())  # noqa: E731
    acc, bench, conv, prune = read("evaluate")["accuracy"], read("bench"), read("convert"), read("prune")
    ms, sizes = bench["ms"], bench["sizes_mib"]
    from mlprune_fx.tools.cli.inputs import load_hf

    dense_model, _ = load_hf(run / "dense")
    dense_params = sum(p.numel() for p in dense_model.parameters())
    ours = "mlprune_fx: pruned + int8" if conv.get("quantize") else "mlprune_fx: pruned"

    def faster(name: str) -> str:
        return f"{ms[name]:.1f} ms ({ms['dense'] / ms[name]:.2f}x faster)"

    rows = [
        ["test accuracy", f"{acc['dense']:.2%}", f"{acc['dense_ort_int8']:.2%}",
         f"{acc['pruned']:.2%} (ONNX Runtime {acc.get('pruned_onnx', float('nan')):.2%})"],
        ["encoder weights remaining", "100%", "100%", f"{prune['remaining']:.1%}"],
        ["parameters", f"{dense_params:,}", f"{dense_params:,}", f"{conv['parameters']:,}"],
        ["ONNX file", f"{sizes['dense']:.1f} MiB", f"{sizes['dense_ort_int8']:.1f} MiB", f"{sizes['pruned']:.1f} MiB"],
        [f"ONNX Runtime latency (batch {bench['batch']} x seq {bench['seq']}, {bench['threads']} threads)",
         f"{ms['dense']:.1f} ms", faster("dense_ort_int8"), faster("pruned")],
    ]
    return markdown_table(["", "dense fp32", "dense, ONNX Runtime quantize_dynamic", ours], rows) + "\n\n" + bench["machine"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="out/demo", help="run folder (models, ONNX files, records)")
    parser.add_argument("--docs", default="docs/demo", help="where the report and table are copied ('' to skip)")
    parser.add_argument("--target", type=float, default=0.4, help="remaining fraction of the encoder weights")
    parser.add_argument("--examples", type=int, default=4000, help="snippets used (80/10/10 split)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--prune-steps", type=int, default=600)
    parser.add_argument("--quantize", default="int8", choices=["int8", ""],
                        help="convert's quantization (default int8; '' keeps the pruned model in float32)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    run = Path(args.run)
    started = time.time()
    quiet = ["--quiet"] if args.quiet else []
    _step("finetune", "--run", run, "--data", "rotten_tomatoes", "--max-examples", args.examples, "--max-length", args.max_length,
          "--steps", args.finetune_steps, "--device", args.device, *quiet)
    _step("prune", "--run", run, "--target", args.target, "--steps", args.prune_steps, "--device", args.device, *quiet)
    _step("convert", "--run", run, *(["--quantize", args.quantize] if args.quantize else []))
    _step("export", "--run", run)
    _step("evaluate", "--run", run, "--device", args.device)
    _step("bench", "--run", run)
    _step("report", "--run", run)
    table = summary_table(run)
    command = "python -m mlprune_fx.tools.demo " + " ".join(sys.argv[1:] if argv is None else argv)
    text = f"{table}\n\ncommand: `{command.strip()}`; run time {time.time() - started:.0f} s"
    print("\n" + text)
    if args.docs:
        docs = Path(args.docs)
        docs.mkdir(parents=True, exist_ok=True)
        for png in run.glob("*.png"):
            shutil.copy(png, docs / png.name)
        report = (run / "report.md").read_text()
        (docs / "README.md").write_text(f"# Demo result\n\nMade by `make demo` ({command.strip()}).\n\n{text}\n\n{report.split(chr(10), 1)[1]}")
        print(f"report copied to {docs}/README.md")


if __name__ == "__main__":
    main()
