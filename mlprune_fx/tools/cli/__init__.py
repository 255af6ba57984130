"""`mlprune`: prune a Hugging Face encoder on your data without writing a training loop.

A run is a folder; each step reads what the one before wrote there:

  mlprune finetune --run runs/rt               # dense teacher on the packaged Rotten Tomatoes data
  mlprune prune    --run runs/rt --target 0.3  # learn head and row masks down to 30 % of the encoder weights
  mlprune convert  --run runs/rt               # remove what was pruned
  mlprune export   --run runs/rt               # runs/rt/model.onnx (and dense.onnx to compare)
  mlprune evaluate --run runs/rt               # accuracy of dense, pruned and ONNX models on the test split
  mlprune bench    --run runs/rt               # ONNX Runtime latency, dense vs pruned
  mlprune report   --run runs/rt               # runs/rt/report.md with plots
"""

from __future__ import annotations

import argparse
import sys

from mlprune_fx.core.errors import MLPruneError

_EPILOG = "Run `mlprune COMMAND --help` for a command's options."
PRUNE_DEFAULTS = {"steps": 600, "lr": 1e-4, "hold_masks": False}  # prune's flags default to None, so that --config can set these


def _common(parser: argparse.ArgumentParser, device: bool = True) -> None:
    parser.add_argument("--run", required=True, help="the run folder (created if needed)")
    if device:
        parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where training and torch evaluation run")


def _batching(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=32, help="examples per training step (default 32)")
    parser.add_argument("--no-group-by-length", dest="group_by_length", action="store_false",
                        help="batch examples in plain shuffled order (default: examples of similar length batched "
                        "together, shuffled within chunks of 50 batches, so little compute goes to padding)")


def _resumable(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--save-every", type=int, default=100, help="write RUN/checkpoint every N steps (0: only at the end)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from RUN/checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _quantize(parser: argparse.ArgumentParser, when: str = "") -> None:
    parser.add_argument("--quantize", choices=["int8"],
                        help="run every kept encoder linear with int8 weights (per output channel) and int8 activations "
                        "quantized on the fly; pooler and classifier stay float32" + (f" ({when})" if when else ""))


def build_parser() -> argparse.ArgumentParser:
    from mlprune_fx.passes.lower_blocks import DEFAULT_MAX_DENSITY

    from .inputs import add_data_arguments

    parser = argparse.ArgumentParser(prog="mlprune", description=__doc__, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("finetune", help="fine-tune the dense model (the teacher)", description="Fine-tune a Hugging Face encoder for classification; writes RUN/dense.")
    _common(p)
    p.add_argument("--model", help="HF folder or name (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--steps", type=int, default=300, help="training steps, each one batch (default 300)")
    _batching(p)
    p.add_argument("--lr", type=float, default=5e-5, help="learning rate, warmed up then decayed linearly (default 5e-5)")
    _resumable(p)
    add_data_arguments(p)

    p = sub.add_parser(
        "prune", help="learn pruning masks down to a target",
        description="LEAP pruning: masks over heads, rows, blocks or weights, thresholds learned under a regulariser "
        "that drives the model to --target. One step (RUN/prepared) or MLPruning's two steps (--two-step, RUN/converted).",
    )
    _common(p)
    p.add_argument("--model", help="HF folder or name (default: RUN/dense, else the packaged MiniLM)")
    p.add_argument("--target", type=float, help="remaining fraction of the encoder weights (default 0.5)")
    p.add_argument("--speedup", type=float,
                   help="instead of --target: how many times faster than dense the model should run in ONNX Runtime, "
                   "as the cost model predicts (RUN/cost_model.json from `mlprune calibrate`, else the shipped one)")
    p.add_argument("--cost-model", help="a cost model JSON for --speedup (default RUN/cost_model.json)")
    p.add_argument("--granularity", nargs="+", choices=["head", "row", "block", "unstructured"], help="default: head row")
    p.add_argument("--block-size", type=int, help="side of the blocks (16 or 32; default 32)")
    p.add_argument("--keep-output-rows", action="store_true",
                   help="never prune the output rows of attention-output and FFN-output linears: the whole budget goes "
                   "to heads and FFN rows, and the hidden width stays whole")
    p.add_argument("--magnitude-prior", type=float,
                   help="start each unit's mask score from the L2 norm of the weights it controls, rescaled per mask to [0, this] "
                   "(default 0: all equal); the first units pruned are then the smallest, as magnitude pruning would choose")
    p.add_argument("--attention-length", type=int, metavar="TOKENS",
                   help="the sequence length the pruned model will serve: the target then counts work, not weights, "
                   "and each kept head also pays for its attention at that length, so the model keeps fewer heads and "
                   "runs faster at the same target (default: count weights alone)")
    p.add_argument("--hold-masks", action="store_true", default=None,
                   help="once the thresholds stop at the target, hold the kept units fixed too, so that only the weights train")
    p.add_argument("--config", help="JSON file with PruningConfig fields (target, granularity, lambda_f, ...) and steps / steps2 / lr / mask_lr / hold_masks; "
                   "flags given as well override it")
    p.add_argument("--steps", type=int,
                   help=f"training steps (default {PRUNE_DEFAULTS['steps']}): the thresholds come down over the first half, then stay "
                   "at the target while the weights recover; with --two-step, the steps of step 1")
    _batching(p)
    p.add_argument("--lr", type=float,
                   help=f"learning rate of the weights (default {PRUNE_DEFAULTS['lr']:g}, above fine-tuning's: pruned "
                   "weights have more to recover)")
    p.add_argument("--mask-lr", type=float, help="learning rate of scores and thresholds (default: derived from --steps)")
    p.add_argument("--distill", action="store_true", help="distil from the dense model (KL on logits, hidden-state MSE)")
    p.add_argument("--two-step", action="store_true", help="heads+rows to --r1, then blocks to --r2 of what is left")
    p.add_argument("--r1", type=float, default=0.5, help="with --two-step: remaining fraction after heads and rows (default 0.5)")
    p.add_argument("--r2", type=float, default=0.4,
                   help="with --two-step: fraction of what step 1 left that step 2 keeps (default 0.4; r1 * r2 overall)")
    p.add_argument("--second", choices=["block", "unstructured"], default="block",
                   help="with --two-step: what step 2 prunes (default block: blocks of --block-size, run on the block-sparse kernel)")
    p.add_argument("--steps2", type=int, help="steps of the second step (default: --steps)")
    _resumable(p)
    add_data_arguments(p)

    p = sub.add_parser("calibrate", help="fit the latency cost model on this machine",
                       description="Time a few pruned variants of the model in ONNX Runtime here and fit the cost model "
                       "that `prune --speedup` and the reports use; writes RUN/cost_model.json.")
    _common(p, device=False)
    p.add_argument("--model", help="HF folder or name (default: RUN/dense, else the packaged MiniLM)")
    p.add_argument("--batch", type=int, default=8, help="batch size the model will serve (default 8)")
    p.add_argument("--seq", type=int, default=128, help="sequence length it will serve (default 128)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads it will run with (default 2)")
    _quantize(p, "fit for int8 models")
    p.add_argument("--no-blocks", dest="blocks", action="store_false", help="leave out the block-sparse variants")
    p.add_argument("--output", help="where to write (default RUN/cost_model.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("convert", help="remove what was pruned", description="Freeze the masks, drop pruned heads and rows, run sparse blocks on the native kernel, optionally in int8; writes RUN/converted.")
    _common(p, device=False)
    p.add_argument("--input", help="a prepared checkpoint (default RUN/prepared)")
    p.add_argument("--output", help="where to write (default RUN/converted)")
    p.add_argument("--max-block-density", type=float, default=DEFAULT_MAX_DENSITY,
                   help=f"matrices with a smaller share of kept blocks run block-sparse (default {DEFAULT_MAX_DENSITY})")
    p.add_argument("--lower-blocks", dest="lower_blocks", action="store_true", default=None, help="require the native kernel")
    p.add_argument("--no-lower-blocks", dest="lower_blocks", action="store_false", help="keep every matrix dense")
    p.add_argument("--compact-output-rows", dest="compact_output_rows", action="store_true", default=None,
                   help="always drop pruned output rows of attention-output and FC2 matrices (default: where the "
                        "cost model says the saved rows pay for scattering into the residual stream)")
    p.add_argument("--keep-output-rows", dest="compact_output_rows", action="store_false",
                   help="keep pruned output rows as zero rows (no scatter)")
    _quantize(p)

    p = sub.add_parser("export", help="write the ONNX model", description="Export RUN/converted to RUN/model.onnx with dynamic batch and sequence; the dense model it was pruned from (prune's --model, else RUN/dense) to RUN/dense.onnx, and that through ONNX Runtime's quantize_dynamic to RUN/dense_ort_int8.onnx, for comparisons.")
    _common(p, device=False)
    p.add_argument("--input", help="a converted checkpoint (default RUN/converted)")
    p.add_argument("--output", help="ONNX file (default RUN/model.onnx)")
    p.add_argument("--standard-ops", action="store_true", help="no custom ops: block-sparse matrices as standard ONNX ops")
    _quantize(p, "quantize the converted model first, if convert did not")

    p = sub.add_parser("evaluate", help="accuracy of dense, pruned and ONNX models", description="Accuracy on a split of the run's data: the pruned model (PyTorch and ONNX) and the dense model it was pruned from (prune's --model, else RUN/dense).")
    _common(p)
    p.add_argument("--split", choices=["train", "dev", "test"], default="test", help="which split to score (default test)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    add_data_arguments(p)

    p = sub.add_parser("bench", help="ONNX Runtime latency, dense vs pruned", description="Times RUN/dense.onnx and RUN/model.onnx in one process, in alternating rounds with only one session open at a time (ONNX Runtime's default settings).")
    _common(p, device=False)
    p.add_argument("--batch", type=int, default=8, help="batch size of the timed inputs (default 8)")
    p.add_argument("--seq", type=int, default=128, help="sequence length of the timed inputs (default 128)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per round (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds, each opening a fresh session (default 3)")

    p = sub.add_parser("report", help="Markdown report with plots", description="Writes RUN/report.md: results table, kept weights per layer and matrix, training curves, accuracy vs latency.")
    _common(p, device=False)
    p.add_argument("--output", help="Markdown file (default RUN/report.md)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .deploy_commands import bench_command, calibrate_command, convert_command, evaluate_command, export_command
    from .report_command import report_command
    from .train_commands import finetune, prune

    commands = {
        "finetune": finetune, "prune": prune, "calibrate": calibrate_command, "convert": convert_command, "export": export_command,
        "evaluate": evaluate_command, "bench": bench_command, "report": report_command,
    }
    args = build_parser().parse_args(argv)
    try:
        commands[args.command](args)
    except MLPruneError as exc:
        print(f"mlprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
