"""Accuracy at equal size: mlprune_fx (LEAP, heads + rows) against magnitude and Torch-Pruning baselines.

For each dataset the packaged MiniLM-L6 is fine-tuned densely once; that dense model is the
starting point and the distillation teacher of every method. Then, for each target share r
of the encoder linear weights (Q, K, V, O, FC1, FC2 of every layer) and each method, a copy
is pruned to r and trained for the same number of steps, at the same learning rate and
schedule, on the same batches:

- mlprune:       prepare(target=r, heads + rows) + LEAP training, then convert
- mlprune_speedup: prepare(speedup=1/r, heads + rows): the target is a predicted speed-up (--cost-model),
                 so r = 0.5 asks for 2x, 0.2 for 5x; opt-in
- mlprune_speedup_blocks: the same with 32x32 blocks in the same step; opt-in
- mlprune_speedup_int8: the speed-up 1/r over dense float32 asked of the model's int8 form: trained under an
                 int8 calibration (--int8-cost-model), which prices kept weights at int8 speed and heads as
                 before; asks that model for 1/r over dense int8 times what int8 alone gives; opt-in
- mlprune_2step: MLPruning's two steps (heads + rows to 0.5, then 32x32 blocks to r / 0.5),
                 the step budget split in two; opt-in, targets below 0.5, CPU only
- magnitude:     global unstructured L1 pruning, fine-tuned with the masks held
- torch_pruning: Torch-Pruning's MetaPruner removing whole heads and FFN channels, then fine-tuned
- dense_more:    a control at target 1: the dense model trained the same steps again on the task
                 loss, to show what the extra budget alone buys (opt-in)

Every cell records test / dev accuracy (PyTorch, and the test accuracy again in ONNX Runtime),
the remaining share actually reached, stored parameters, ONNX Runtime latency at batch 8 x
sequence 128 timed side by side with the dense model in the same run, the speed-up the cost model
predicted, and wall time. Results
go to OUT/results.json and OUT/results.md after every cell (--resume skips finished cells).

    python -m benchmarks.bench_accuracy --out out/accuracy
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.metadata
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

import mlprune_fx as mp
from benchmarks import baselines
from mlprune_fx.core.cost_model import default_cost_model
from mlprune_fx.core.latency import latency_counts
from mlprune_fx.passes.drop_inputs import drop_outputs
from mlprune_fx.runtime.library import is_block_sparse_linear
from mlprune_fx.tools.benchmarking import machine_header, machine_line, markdown_table, session_opener, time_sessions
from mlprune_fx.tools.data import batches, load_dataset, tokenize
from mlprune_fx.tools.models import load_packaged_model
from mlprune_fx.training import accuracy, default_mask_lr, train, two_step_prune
from mlprune_fx.training.distill import DistillConfig, enable_distillation_outputs
from mlprune_fx.training.hold import ADJUST_WARNING, describe_adjust
from mlprune_fx.training.optimizer import DESCENT

METHODS = ("mlprune", "mlprune_speedup", "mlprune_speedup_blocks", "mlprune_speedup_int8", "mlprune_2step", "magnitude",
           "torch_pruning", "dense_more")
SPEEDUP_METHODS = ("mlprune_speedup", "mlprune_speedup_blocks", "mlprune_speedup_int8")
DEFAULT_METHODS = ("mlprune", "magnitude", "torch_pruning")
TWO_STEP_R1 = 0.5
# Settings that change what a cell computes; --resume refuses results made with others.
# target_schedule and separate_clipping are no longer options (docs/experiments.md); they stay
# here at their defaults so the files made with them still read and label as they were made.
RESULT_SETTINGS = ("finetune_steps", "prune_steps", "batch_size", "max_length", "examples", "seed",
                   "lr", "finetune_lr", "distill", "device", "lambda_f", "descent", "output_rows", "prune_seed",
                   "group_by_length", "hold_masks", "target_schedule", "separate_clipping", "magnitude_prior",
                   "attention_length", "mask_lr_scale", "cost_model")
# Settings added after results were first saved: what a file without them was made with.
SETTING_DEFAULTS = {"lambda_f": mp.PruningConfig().lambda_f, "descent": DESCENT,
                    "output_rows": mp.PruningConfig().prune_output_rows, "group_by_length": False,
                    "hold_masks": False, "target_schedule": "constant", "separate_clipping": False,
                    "magnitude_prior": mp.PruningConfig().magnitude_prior,
                    "attention_length": mp.PruningConfig().attention_length, "mask_lr_scale": 1.0,
                    "cost_model": None}
EVAL_BATCH = 64
STRUCTURAL_TOLERANCE = 1e-4


def with_defaults(settings: dict) -> dict:
    """Saved settings as they were in effect, the ones a file predates filled in."""
    return {**SETTING_DEFAULTS, "prune_seed": settings.get("seed"), **settings}


def distill_config(kind: str) -> DistillConfig | None:
    """MLPruning's distillation (logits + hidden states; attention maps need eager attention), logits only, or none."""
    if kind == "none":
        return None
    return DistillConfig(hidden_weight=1.0 if kind == "hidden" else 0.0, attention_weight=0.0)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


class Data:
    """Tokenised splits on the target device; `train(epoch)` reshuffles the same way for every method."""

    def __init__(self, splits, args: argparse.Namespace, tokenizer, device: torch.device, name: str = "") -> None:
        self.name = name
        self.splits = splits
        self.num_labels = len(self.splits.label_names)
        self.encoded = tokenize(self.splits.train, tokenizer, max_length=args.max_length)
        self.dev = [to_device(b, device) for b in
                    batches(tokenize(self.splits.dev, tokenizer, args.max_length), EVAL_BATCH, shuffle=False)]
        self.test = [to_device(b, device) for b in
                     batches(tokenize(self.splits.test, tokenizer, args.max_length), EVAL_BATCH, shuffle=False)]
        self.batch_size, self.seed, self.device = args.batch_size, args.seed, device
        self.group_by_length = args.group_by_length
        first = next(iter(self.train(0)))
        self.example = {k: v.clone() for k, v in first.items()}  # fresh tensors: export guards on views

    def reseed(self, seed: int) -> None:
        """The same splits and tokens, shuffled by another seed (each method's run after the dense one)."""
        self.seed = seed

    def train(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        for b in batches(self.encoded, self.batch_size, shuffle=True, seed=self.seed + epoch,
                         group_by_length=self.group_by_length):
            yield to_device(b, self.device)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.splits.train), "dev": len(self.splits.dev), "test": len(self.splits.test)}


# --- deployment: ONNX export, ONNX Runtime accuracy and latency ---------------------------------


def deployable(model: torch.nn.Module, example: dict[str, torch.Tensor]) -> torch.fx.GraphModule:
    """A plain nn.Module through mlprune's capture and (no-op) convert, so every model exports the same way."""
    inputs = {k: v for k, v in example.items() if k != "labels"}
    return mp.convert(mp.prepare(model, mp.PruningConfig(target=1.0), example_inputs=inputs))


def export(gm: torch.fx.GraphModule, path: Path, example: dict[str, torch.Tensor], threads: int) -> mp.runtime.InferenceSession:
    inputs = {k: v for k, v in example.items() if k != "labels"}
    mp.export_onnx(gm, path, inputs)
    return mp.runtime.InferenceSession(path, num_threads=threads)


def ort_accuracy(session: mp.runtime.InferenceSession, data: list[dict[str, torch.Tensor]]) -> float:
    names = [i.name for i in session.get_inputs()]
    correct = total = 0
    for batch in data:
        logits = session(**{k: batch[k].cpu().numpy() for k in names})["logits"]
        correct += int((logits.argmax(-1) == batch["labels"].cpu().numpy()).sum())
        total += len(batch["labels"])
    return correct / max(total, 1)


def latency_feeds(session, vocab: int, batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in session.get_inputs():
        if i.name == "input_ids":
            feeds[i.name] = rng.integers(1000, vocab, (batch, seq), dtype=np.int64)
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones((batch, seq), dtype=np.int64)
        else:
            feeds[i.name] = np.zeros((batch, seq), dtype=np.int64)
    return feeds


TIMING_ROUNDS = 4


def ort_ms(paths: dict[str, Path], feeds: dict[str, np.ndarray], args) -> dict[str, float]:
    """Median ms of each ONNX model, one session alive at a time (another session's idle threads would spin on
    the same cores): rounds alternate the models, --repeats runs each in all."""
    return time_sessions({k: session_opener(p, feeds, args.threads) for k, p in paths.items()}, rounds=TIMING_ROUNDS,
                         runs=max(1, args.repeats // TIMING_ROUNDS), warmup=2)


# --- the methods ------------------------------------------------------------------------------


def pruning_options(args) -> dict:
    """The PruningConfig fields the command line sets for the mlprune methods."""
    return {"lambda_f": args.lambda_f, "prune_output_rows": args.output_rows, "magnitude_prior": args.magnitude_prior,
            "attention_length": args.attention_length, "cost_model": args.cost}


def cost_model(args) -> mp.CostModel:
    """The cost model every cell's predicted speed-up comes from: --cost-model, or the package's own."""
    return args.cost if args.cost is not None else default_cost_model()


def predicted_speedup(model: torch.nn.Module, dense: torch.nn.Module, example: dict, cost: mp.CostModel) -> float:
    """What the cost model predicts for a model pruned by other means (its shapes, nothing masked) over dense."""
    inputs = {k: v for k, v in example.items() if k != "labels"}
    return dense_counts(dense, inputs, cost).ms(cost) / dense_counts(model, inputs, cost).ms(cost)


def dense_counts(model: torch.nn.Module, inputs: dict, cost: mp.CostModel):
    """The cost model's counts of a model as it stands (its own shapes, nothing masked)."""
    prepared = mp.prepare(model, mp.PruningConfig(target=1.0, cost_model=cost), example_inputs=inputs)
    return latency_counts(prepared, cost.max_block_density, dense=True)


class Unreachable(ValueError):
    """A cell that cannot be asked for: recorded as its error, the other cells go on."""


def int8_gain(model, example: dict, fp32: mp.CostModel, int8: mp.CostModel) -> float:
    """Dense float32 over dense int8 latency, as the two calibrations predict them for this model."""
    counts = dense_counts(model, example, int8)
    return counts.ms(fp32) / counts.ms(int8)


def run_mlprune(dense, target: float, data: Data, args, kd: DistillConfig | None,
                granularity: tuple[str, ...] = ("head", "row"), speedup: bool = False,
                int8: bool = False) -> tuple[torch.nn.Module, dict]:
    """LEAP to a share of the weights, or with `speedup` to a predicted speed-up of 1 / target (with `int8`: of
    the int8 form over dense float32, under the int8 calibration)."""
    student = copy.deepcopy(dense)
    hidden = kd is not None and kd.wants_hidden
    if hidden:
        enable_distillation_outputs(student, attentions=False)  # before prepare, so the graph returns them
    gain = 1.0
    if speedup:
        fp32 = cost = cost_model(args)
        if int8:
            cost = args.int8_cost  # parse_args requires it for this method
            gain = int8_gain(dense, {k: v for k, v in data.example.items() if k != "labels"}, fp32, cost)
            if 1 / target <= gain:
                raise Unreachable(f"asked {1 / target:g}x, and dense int8 is predicted at {gain:.2f}x already")
        options = pruning_options(args) | {"attention_length": None, "cost_model": cost}
        config = mp.PruningConfig(speedup=1 / target / gain, granularity=granularity, **options)
    else:
        config = mp.PruningConfig(target=target, granularity=granularity, **pruning_options(args))
    prepared = mp.prepare(student, config, data.example)
    mask_lr = None
    if args.mask_lr_scale != 1.0:
        mask_lr = args.mask_lr_scale * default_mask_lr(prepared, args.prune_steps, descent=args.descent)
    log = train(prepared, data.train, args.prune_steps, lr=args.lr, teacher=dense if kd is not None else None,
                distill=kd, progress=args.progress, desc=f"mlprune {target}", descent=args.descent, mask_lr=mask_lr,
                hold_masks=args.hold_masks)
    report = mp.sparsity_report(prepared)
    converted = mp.convert(prepared)
    if hidden:
        drop_outputs(converted, ["hidden_states"])
    heads = [k for k, _ in report.heads_kept.values()]
    notes = [f"heads kept per layer {heads}"]
    if log.hold_churn is not None:
        notes.append(f"{log.hold_churn:.1%} of the units kept when the hold began were pruned by the end")
    if log.adjust is not None and abs(log.adjust) > ADJUST_WARNING:
        notes.append(f"the regulariser left {log.before_hold:.3f} at the hold, which {describe_adjust(log.adjust)} "
                     "to reach the target")
    blocks = sum(1 for n in converted.graph.nodes if is_block_sparse_linear(n))
    if blocks:
        notes.append(f"{blocks} matrices on the block-sparse kernel")
    extra = {}
    if int8:
        notes.append(f"asked {1 / target / gain:.2f}x of the int8 form over dense int8 (int8 alone: {gain:.2f}x)")
        extra = {"int8_cost_model": args.int8_cost_model, "int8_gain": gain}
    return converted, {"remaining": report.remaining, "notes": notes, "predicted_speedup": report.predicted_speedup * gain,
                       "extra": extra | {"mask_lr": log.mask_lr, "hold_from": log.hold_from, "before_hold": log.before_hold,
                                 "adjust": log.adjust, "hold_churn": log.hold_churn, "heads_kept": heads}}


def run_mlprune_2step(dense, target: float, data: Data, args, kd: DistillConfig | None) -> tuple[torch.nn.Module, dict]:
    """Half the step budget per step, so the total matches the one-step methods."""
    steps1 = args.prune_steps // 2
    result = two_step_prune(dense, data.train, steps1, args.prune_steps - steps1, r1=TWO_STEP_R1,
                            r2=target / TWO_STEP_R1, second="block", block_size=32, teacher=dense,
                            example_inputs=data.example, distill=kd if kd is not None else False,
                            progress=args.progress, lr=args.lr, pruning=pruning_options(args),
                            descent=args.descent, hold_masks=args.hold_masks)
    blocks = sum(1 for n in result.model.graph.nodes if is_block_sparse_linear(n))
    notes = [f"step 1 heads + rows to {result.reports[0].remaining:.3f} ({steps1} steps), "
             f"step 2 32x32 blocks to {result.reports[1].remaining:.3f} of that ({args.prune_steps - steps1} steps); "
             f"{blocks} matrices on the block-sparse kernel"]
    return result.model, {"remaining": result.remaining, "notes": notes, "extra": {"block_sparse_matrices": blocks}}


def _fine_tune(student, dense, data: Data, args, kd: DistillConfig | None, desc: str) -> None:
    """The baselines' training: the same loop, steps, schedule and teacher as mlprune's LEAP run.

    Hidden states are returned only while distilling, so the exported model outputs logits
    alone, like mlprune's converted one.
    """
    student.config.output_hidden_states = kd is not None and kd.wants_hidden
    train(student, data.train, args.prune_steps, lr=args.lr, teacher=dense if kd is not None else None, distill=kd,
          progress=args.progress, desc=desc)
    student.config.output_hidden_states = False


def run_magnitude(dense, target: float, data: Data, args, kd: DistillConfig | None) -> tuple[torch.nn.Module, dict]:
    student = copy.deepcopy(dense)
    params = baselines.magnitude_prune(student, target)
    _fine_tune(student, dense, data, args, kd, f"magnitude {target}")
    baselines.magnitude_finish(params)
    kept = baselines.encoder_weight_count(student, nonzero=True)
    notes = ["unstructured zeros in dense matrices: ONNX Runtime runs the dense shapes"]
    return student, {"remaining": kept / baselines.encoder_weight_count(dense), "notes": notes, "extra": {}}


def run_torch_pruning(dense, target: float, data: Data, args, kd: DistillConfig | None) -> tuple[torch.nn.Module, dict]:
    """One-shot structural pruning, checked to be exactly head / channel removal before fine-tuning."""
    student = copy.deepcopy(dense)
    plan = baselines.torch_pruning_prune(student, target, data.example)
    error = baselines.structural_error(dense, student, data.example)
    if error > STRUCTURAL_TOLERANCE:
        raise RuntimeError(f"Torch-Pruning's model differs from the dense model with the same heads and channels "
                           f"zeroed by {error:.2e} in the logits: it did not remove whole heads / channels cleanly")
    _fine_tune(student, dense, data, args, kd, f"torch_pruning {target}")
    heads = dense.config.num_attention_heads
    notes = [f"{plan.heads}/{heads} heads and {plan.ffn}/{dense.config.intermediate_size} FFN channels "
             f"per layer (one-shot, L2 group magnitude)"]
    return student, {"remaining": baselines.encoder_weight_count(student) / baselines.encoder_weight_count(dense),
                     "notes": notes, "extra": {"heads": plan.heads, "ffn": plan.ffn, "structural_error": error}}


def run_dense_more(dense, target: float, data: Data, args, kd: DistillConfig | None) -> tuple[torch.nn.Module, dict]:
    """The control: the dense model trained as long again, on the task loss alone (no teacher to hold it back).

    The pruned models get `prune_steps` more training than the dense reference; this shows how much of
    their accuracy that budget alone would buy an unpruned model.
    """
    student = copy.deepcopy(dense)
    _fine_tune(student, dense, data, args, None, "dense_more")
    notes = [f"the dense model trained {args.prune_steps} more steps at lr {args.lr} on the task loss"]
    return student, {"remaining": 1.0, "notes": notes, "extra": {}}


RUNNERS: dict[str, Callable] = {"mlprune": run_mlprune, "mlprune_speedup": functools.partial(run_mlprune, speedup=True),
                                "mlprune_speedup_blocks": functools.partial(run_mlprune, speedup=True,
                                                                            granularity=("head", "row", "block")),
                                "mlprune_speedup_int8": functools.partial(run_mlprune, speedup=True, int8=True),
                                "mlprune_2step": run_mlprune_2step,
                                "magnitude": run_magnitude, "torch_pruning": run_torch_pruning,
                                "dense_more": run_dense_more}


# --- results ----------------------------------------------------------------------------------


def cell_key(method: str, target: float) -> str:
    return f"{method}@{target:g}"


def save_json(results: dict, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)


def load_results(path: Path, args, settings: dict) -> dict:
    if not (args.resume and path.exists()):
        return {"settings": settings, "datasets": {}}
    results = json.loads(path.read_text())
    old = results.get("settings", {})
    saved = with_defaults(old)
    differ = {k: (saved.get(k), settings[k]) for k in RESULT_SETTINGS if saved.get(k) != settings[k]}
    if differ:
        raise SystemExit(f"--resume: {path} was made with other settings {differ} (saved, now); "
                         f"use another --out or the same settings")
    return results


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def _s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f} s"


def _params(cell: dict) -> str:
    text = f"{cell['params'] / 1e6:.2f}M"
    if cell.get("params_nonzero") is not None and cell["params_nonzero"] != cell["params"]:
        text += f" ({cell['params_nonzero'] / 1e6:.2f}M nonzero)"
    return text


def dataset_table(name: str, entry: dict, targets: list[float], methods: list[str]) -> str:
    dense = entry["dense"]
    rows = [["dense", "-", "100.0%", _params(dense), f"{dense['test_acc']:.2%}", "-", f"{dense['dev_acc']:.2%}",
             _ms(dense["ort_ms"]), "1.00x", _s(dense["seconds"])]]
    notes = []
    for target in targets:
        for method in methods:
            cell = entry["cells"].get(cell_key(method, target))
            if cell is None:
                continue
            if "error" in cell:
                rows.append([method, f"{target:.0%}", "failed", "-", "-", "-", "-", "-", "-", "-"])
                notes.append(f"- {method} @ {target:.0%}: failed: {cell['error']}")
                continue
            speed = cell["dense_ort_ms"] / cell["ort_ms"]
            if cell.get("predicted_speedup") is not None:
                speed = f"{speed:.2f}x ({cell['predicted_speedup']:.2f}x)"
            else:
                speed = f"{speed:.2f}x"
            asked = f"{1 / target:.3g}x" if method in SPEEDUP_METHODS else f"{target:.0%}"
            rows.append([method, asked, f"{cell['remaining']:.1%}", _params(cell), f"{cell['test_acc']:.2%}",
                         f"{(cell['test_acc'] - dense['test_acc']) * 100:+.2f} pt", f"{cell['dev_acc']:.2%}",
                         _ms(cell["ort_ms"]), speed, _s(cell["train_seconds"])])
            extra = list(cell.get("notes", []))
            if abs(cell["ort_test_acc"] - cell["test_acc"]) > 0.5 / max(entry["sizes"]["test"], 1):
                extra.append(f"ONNX Runtime test accuracy {cell['ort_test_acc']:.2%} differs from PyTorch's")
            if extra:
                notes.append(f"- {method} @ {target:.0%}: " + "; ".join(extra))
    header = ["method", "target", "remaining", "params", "test acc", "vs dense", "dev acc", "ORT ms",
              "speed-up (predicted)", "training"]
    sizes = entry["sizes"]
    lines = [f"### {name} (train {sizes['train']}, dev {sizes['dev']}, test {sizes['test']}, "
             f"{entry['num_labels']} classes)", "", markdown_table(header, rows)]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def report(results: dict, args, header: str) -> str:
    s = with_defaults(results["settings"])
    kept_rows = ", output rows of the attention-output and FFN-output linears kept"
    held = ", masks (thresholds and scores) held from then on"
    apart = ", thresholds' gradients clipped apart from the weights' and scores'"
    cubic = " toward a target lowered from 1 on a cubic schedule"
    dense_seed = "" if s["prune_seed"] == s["seed"] else f"; splits and dense fine-tuning seed {s['seed']}"
    parts = [
        "## Accuracy at equal remaining encoder weights", "",
        *(f"command: `{c}`" for c in results["commands"]), "",
        "```", header, "```", "",
        f"Packaged MiniLM-L6 fine-tuned densely for {s['finetune_steps']} steps (lr {s['finetune_lr']}); each method "
        f"then trains {s['prune_steps']} steps (lr {s['lr']}, linear warm-up 10 % and decay, clipping 1.0, batch "
        f"{s['batch_size']}{', grouped by length' if s['group_by_length'] else ''}, max length {s['max_length']}, "
        f"seed {s['prune_seed']}{dense_seed}) with distillation `{s['distill']}` "
        f"from the dense model, on {s['device']}; mlprune's regulariser lambda_f "
        f"{s['lambda_f']:g}, descent {s['descent']:g} of the steps{cubic if s['target_schedule'] == 'cubic' else ''}"
        f"{held if s['hold_masks'] else ''}{apart if s['separate_clipping'] else ''}"
        f"{f', scores started from a magnitude prior of {prior:g}' if (prior := s['magnitude_prior']) else ''}"
        f"{f', target counting work with each head charged its attention at {n} tokens' if (n := s['attention_length']) else ''}"
        f"{f', mask learning rate {x:g}x the derived one' if (x := s['mask_lr_scale']) != 1 else ''}"
        f"{'' if s['output_rows'] else kept_rows}. "
        f"remaining: share of the encoder linear weights (Q, K, V, O, FC1, FC2 of all layers) the model keeps; "
        f"params: floating-point parameters stored. ORT ms: ONNX Runtime, batch "
        f"{args.latency_batch} x sequence {args.latency_seq}, {args.threads} threads, median of {TIMING_ROUNDS} alternating rounds of "
        f"{max(1, args.repeats // TIMING_ROUNDS)} runs, one session alive at a time, each cell timed beside the dense "
        f"model in one run (speed-up = dense ms / cell ms of that run; the "
        f"dense row shows the dense model's own run). training: wall time of pruning + training (the dense row: "
        f"fine-tuning). Test accuracy from PyTorch; ONNX Runtime's is in the JSON and noted where it differs.",
    ]
    for name in args.datasets:
        if name in results["datasets"]:
            parts += ["", dataset_table(name, results["datasets"][name], args.targets, args.methods)]
    return "\n".join(parts) + "\n"


# --- the benchmark ----------------------------------------------------------------------------


DENSE_SETTINGS = ("finetune_steps", "finetune_lr", "batch_size", "max_length", "examples", "seed", "device",
                  "group_by_length")


def reusable_dense(folder: Path, name: str, args) -> Path:
    """The dense checkpoint another run left in `folder`, after checking it was fine-tuned the way this run would."""
    ckpt, saved = folder / f"dense_{name}.pt", folder / "results.json"
    if not ckpt.exists() or not saved.exists():
        raise SystemExit(f"--dense-from {folder}: needs dense_{name}.pt and results.json from an earlier run there")
    old = with_defaults(json.loads(saved.read_text()).get("settings", {}))
    differ = {k: (old.get(k), getattr(args, k)) for k in DENSE_SETTINGS if old.get(k) != getattr(args, k)}
    if differ:
        raise SystemExit(f"--dense-from {folder}: its dense models were fine-tuned with other settings {differ} "
                         "(saved, now); fine-tune here instead (drop --dense-from)")
    return ckpt


def dense_model(name: str, args, device, out: Path, entry: dict | None):
    """Fine-tune the packaged MiniLM on `name`, or load the checkpoint a previous run left."""
    splits = load_dataset(name, seed=args.seed, max_examples=args.examples)
    torch.manual_seed(args.seed)
    model, tokenizer = load_packaged_model(num_labels=len(splits.label_names))
    data = Data(splits, args, tokenizer, device, name)
    model.to(device)
    ckpt = source = out / f"dense_{name}.pt"
    reuse = entry is not None and ckpt.exists()
    if not reuse and args.dense_from is not None:
        source = reusable_dense(args.dense_from, name, args)
        if source.resolve() != ckpt.resolve():
            shutil.copyfile(source, ckpt)  # this folder then resumes on its own
        reuse = True
    if reuse:
        model.load_state_dict(torch.load(ckpt, map_location=device, weights_only=True))
        print(f"{name}: dense model loaded from {source}", flush=True)
        return model.eval(), data, None
    started = time.time()
    train(model, data.train, args.finetune_steps, lr=args.finetune_lr, progress=args.progress, desc=f"dense {name}")
    seconds = time.time() - started
    torch.save(model.state_dict(), ckpt)
    return model.eval(), data, seconds


def finished(entry: dict, key: str) -> bool:
    return key in entry["cells"] and "error" not in entry["cells"][key]


def skip_reason(method: str, target: float) -> str | None:
    """Why this method does not run at this target (None: it does)."""
    if (method == "dense_more") != (target == 1.0):
        return "dense_more runs at target 1 and only it does"
    if method == "mlprune_2step" and target >= TWO_STEP_R1:
        return f"the two steps start at {TWO_STEP_R1} (targets below only)"
    return None


def check_rebuilt_teacher(dense, data: Data, recorded: dict, name: str) -> None:
    """A folder whose teacher checkpoint is gone fine-tunes it again (results restored from git, say); its new cells
    share the old ones' teacher only if the rebuild scores exactly what the folder records (another CPU's rounding,
    or another torch, can change it)."""
    got = {"test_acc": accuracy(dense, data.test), "dev_acc": accuracy(dense, data.dev)}
    if any(got[k] != recorded[k] for k in got):
        raise RuntimeError(
            f"{name}: the teacher fine-tuned again scores {got['test_acc']:.4%} test / {got['dev_acc']:.4%} dev, the "
            f"one this folder's cells trained from {recorded['test_acc']:.4%} / {recorded['dev_acc']:.4%}: new cells "
            f"would not share their teacher. Put that teacher's dense_{name}.pt back, or start a new --out")
    print(f"{name}: the teacher fine-tuned again scores what this folder records (test {got['test_acc']:.2%})",
          flush=True)


def saved_model_path(out: Path, dataset: str, method: str, target: float) -> Path:
    """Where --save-models keeps a cell's converted model (mlprune_fx.save: safetensors + JSON)."""
    return out / "models" / f"{dataset}_{method}_{target:g}"


def run_cell(method, target, dense, data: Data, args, kd, dense_path: Path, feeds, tmp: Path, device) -> dict:
    if method in ("mlprune_2step", "mlprune_speedup_blocks") and device.type != "cpu":
        raise RuntimeError(f"{method} lowers blocks to mlprune's CPU kernel; run it with --device cpu")
    torch.manual_seed(args.prune_seed)
    started = time.time()
    model, info = RUNNERS[method](dense, target, data, args, kd)
    trained = time.time() - started
    model.eval()
    test_acc, dev_acc = accuracy(model, data.test), accuracy(model, data.dev)
    params_nonzero = None
    if method == "magnitude":
        params_nonzero = baselines.stored_parameters(model) - (
            baselines.encoder_weight_count(model) - baselines.encoder_weight_count(model, nonzero=True))
    graph = model if isinstance(model, torch.fx.GraphModule) else deployable(model, data.example)
    predicted = info.get("predicted_speedup")
    if predicted is None and not isinstance(model, torch.fx.GraphModule):
        predicted = predicted_speedup(model, dense, data.example, cost_model(args))
    if args.save_models:
        mp.save(graph, saved_model_path(args.out, data.name, method, target))
    path = tmp / f"{method}_{target:g}.onnx"
    ort_test = ort_accuracy(export(graph, path, data.example, args.threads), data.test)
    ms = ort_ms({"dense": dense_path, "pruned": path}, feeds, args)
    return {
        "method": method, "target": target, "remaining": info["remaining"], "test_acc": test_acc, "dev_acc": dev_acc,
        "ort_test_acc": ort_test, "params": baselines.stored_parameters(model), "params_nonzero": params_nonzero,
        "ort_ms": ms["pruned"], "dense_ort_ms": ms["dense"], "predicted_speedup": predicted, "train_seconds": trained,
        "seconds": time.time() - started, "notes": info["notes"], "extra": info["extra"],
        "threads": args.threads, "repeats": args.repeats, "machine": machine_line(),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["rotten_tomatoes", "tweets"])
    p.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.3, 0.2, 0.1],
                   help="shares of the encoder linear weights to keep")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    p.add_argument("--finetune-steps", type=int, default=600, help="dense fine-tuning steps")
    p.add_argument("--prune-steps", type=int, default=800, help="training steps of every method after/while pruning")
    p.add_argument("--lr", type=float, default=3e-5, help="weight learning rate while pruning (every method)")
    p.add_argument("--finetune-lr", type=float, default=5e-5, help="learning rate of the dense fine-tuning")
    p.add_argument("--lambda-f", type=float, default=SETTING_DEFAULTS["lambda_f"],
                   help="LEAP regulariser strength of the mlprune methods (PruningConfig.lambda_f); a larger one "
                        "pulls a well-trained model closer to the target before the hold")
    p.add_argument("--descent", type=float, default=SETTING_DEFAULTS["descent"],
                   help="share of the mlprune methods' steps the regulariser drives the thresholds; the rest train "
                        "at the fixed pruned size")
    p.add_argument("--hold-masks", action="store_true",
                   help="mlprune methods hold the mask scores too from the hold on (train(hold_masks=True)): the "
                        "kept units stay fixed and only the weights keep training")
    p.add_argument("--magnitude-prior", type=float, default=SETTING_DEFAULTS["magnitude_prior"],
                   help="mlprune methods start each mask's scores from the L2 norm of the weights each unit "
                        "controls, rescaled per mask to [0, this] (PruningConfig.magnitude_prior; 0: all equal)")
    p.add_argument("--attention-length", type=int, default=SETTING_DEFAULTS["attention_length"],
                   help="mlprune methods count work instead of weights: each kept head also pays for its attention "
                        "at this many tokens (PruningConfig.attention_length; default: weights alone)")
    p.add_argument("--cost-model", type=Path, default=SETTING_DEFAULTS["cost_model"],
                   help="cost model JSON (mlprune calibrate) for the speed-up targets and every cell's predicted "
                        "speed-up (default: the one shipped with mlprune_fx)")
    p.add_argument("--int8-cost-model", type=Path,
                   help="an int8 calibration (mlprune calibrate --quantize int8) for mlprune_speedup_int8 (recorded in "
                        "its cells, not a run setting: adding it resumes a folder)")
    p.add_argument("--mask-lr-scale", type=float, default=SETTING_DEFAULTS["mask_lr_scale"],
                   help="the mlprune method's mask learning rate is this times the one train() derives from the run "
                        "(default_mask_lr): above 1 the thresholds travel further before the hold")
    p.add_argument("--no-output-rows", dest="output_rows", action="store_false",
                   help="mlprune methods keep every output row of the attention-output and FFN-output linears "
                        "(PruningConfig.prune_output_rows=False): the budget goes to heads and FFN rows alone")
    p.add_argument("--distill", choices=["hidden", "logits", "none"], default="hidden",
                   help="distillation from the dense model, the same for every method")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--group-by-length", action="store_true",
                   help="batch training examples of similar length together (mlprune_fx.tools.data.batches): much less "
                        "padding, about half the training time on the packaged data; every method and the dense "
                        "fine-tuning alike. Off by default, so runs made before it reproduce")
    p.add_argument("--examples", type=int, default=None, help="cap on examples per dataset (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and the dense fine-tuning")
    p.add_argument("--prune-seed", type=int, default=None,
                   help="seed of every method's run (data order, initialisation; default --seed): runs that differ "
                        "only here share one dense model (--dense-from), so their spread is the methods' own")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where training runs; ORT runs on CPU")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    p.add_argument("--torch-threads", type=int, default=None, help="torch threads on CPU (default: --threads)")
    p.add_argument("--latency-batch", type=int, default=8)
    p.add_argument("--latency-seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=20, help="timed ONNX Runtime runs per model")
    p.add_argument("--save-models", action="store_true",
                   help="keep each cell's deployable model in OUT/models (mlprune_fx.save), for later studies "
                        "such as benchmarks/bench_int8_accuracy.py")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json, results.md, dense checkpoints")
    p.add_argument("--resume", action="store_true", help="skip the cells results.json already holds")
    p.add_argument("--dense-from", type=Path, default=None,
                   help="reuse the dense fine-tuned models of an earlier --out folder (same fine-tuning settings)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    for flag in ("cost_model", "int8_cost_model"):  # loaded into args.cost / args.int8_cost, the path kept as text
        path = getattr(args, flag)
        cost = None
        if path is not None:
            try:
                cost = mp.CostModel.load(path)
            except mp.CheckpointError as exc:
                p.error(f"--{flag.replace('_', '-')}: {exc}")
            setattr(args, flag, str(path))
        setattr(args, flag.replace("_model", ""), cost)
    if args.int8_cost is not None and args.int8_cost.quantize != "int8":
        p.error(f"--int8-cost-model {args.int8_cost_model}: a float32 calibration; make one with --quantize int8")
    if "mlprune_speedup_int8" in args.methods and args.int8_cost is None:
        p.error("mlprune_speedup_int8 needs --int8-cost-model (mlprune calibrate --quantize int8)")
    if any(m in SPEEDUP_METHODS for m in args.methods) and args.attention_length is not None:
        p.error("--attention-length applies to weight targets; the speed-up methods charge heads by the cost model")
    if args.prune_seed is None:
        args.prune_seed = args.seed
    if any(not 0 < t <= 1 for t in args.targets):
        p.error(f"--targets {args.targets}: each must lie in (0, 1]")
    if not 0 < args.descent <= 1:
        p.error(f"--descent {args.descent}: must lie in (0, 1]")
    if args.mask_lr_scale <= 0:
        p.error(f"--mask-lr-scale {args.mask_lr_scale}: must be above 0")
    if args.mask_lr_scale != 1.0 and "mlprune_2step" in args.methods:
        p.error("--mask-lr-scale applies to the mlprune method only; run mlprune_2step without it")
    if min(args.finetune_steps, args.prune_steps) < 1:
        p.error("--finetune-steps and --prune-steps must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        if "torch_pruning" in args.methods:
            p.error("the torch_pruning method needs Torch-Pruning: pip install 'torch-pruning>=1.5' (extra `bench`)")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.torch_threads or args.threads)

    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.bench_accuracy " + shlex.join(argv)
    header = machine_header(args.threads)
    if "torch_pruning" in args.methods:
        header += f", torch-pruning {importlib.metadata.version('torch-pruning')}"
    settings = {k: getattr(args, k, SETTING_DEFAULTS.get(k)) for k in RESULT_SETTINGS}
    json_path, md_path = args.out / "results.json", args.out / "results.md"
    results = load_results(json_path, args, settings)
    results["machine"] = header
    results.setdefault("commands", []).append(command)
    print(header, flush=True)
    kd = distill_config(args.distill)

    for name in args.datasets:
        entry = results["datasets"].get(name)
        dense, data, seconds = dense_model(name, args, device, args.out, entry)
        if entry is not None and seconds is not None:
            check_rebuilt_teacher(dense, data, entry["dense"], name)
        data.reseed(args.prune_seed)
        if entry is not None and not any(skip_reason(m, t) is None and not finished(entry, cell_key(m, t))
                                         for t in args.targets for m in args.methods):
            print(f"{name}: every cell asked for is done", flush=True)
            continue
        with tempfile.TemporaryDirectory(prefix="bench_accuracy_") as tmp_dir:
            tmp = Path(tmp_dir)
            dense_path = tmp / "dense.onnx"
            dense_session = export(deployable(dense, data.example), dense_path, data.example, args.threads)
            feeds = latency_feeds(dense_session, dense.config.vocab_size, args.latency_batch, args.latency_seq, args.seed)
            if entry is None:
                dense_ms = ort_ms({"dense": dense_path}, feeds, args)
                total = baselines.encoder_weight_count(dense)
                counted = mp.sparsity_report(mp.prepare(dense, mp.PruningConfig(), data.example)).total
                if counted != total:
                    raise RuntimeError(f"mlprune counts {counted} prunable encoder weights, the baselines {total}: "
                                       "the remaining shares would not be comparable")
                entry = results["datasets"][name] = {
                    "num_labels": data.num_labels, "sizes": data.sizes(), "cells": {},
                    "dense": {"test_acc": accuracy(dense, data.test), "dev_acc": accuracy(dense, data.dev),
                              "ort_test_acc": ort_accuracy(dense_session, data.test),
                              "params": baselines.stored_parameters(dense), "encoder_weights": total,
                              "ort_ms": dense_ms["dense"], "seconds": seconds},
                }
                save_json(results, json_path)
            del dense_session  # the cells time one session at a time
            d = entry["dense"]
            print(f"{name}: dense test {d['test_acc']:.2%}, dev {d['dev_acc']:.2%}, ORT {d['ort_ms']:.1f} ms", flush=True)
            for target in args.targets:
                for method in args.methods:
                    key = cell_key(method, target)
                    if finished(entry, key):
                        continue
                    if (reason := skip_reason(method, target)) is not None:
                        print(f"{name} {key}: skipped, {reason}")
                        continue
                    try:
                        cell = run_cell(method, target, dense, data, args, kd, dense_path, feeds, tmp, device)
                    except Exception as e:  # one method failing must not lose the others' hours
                        if method != "torch_pruning" and not isinstance(e, Unreachable):
                            raise
                        cell = {"method": method, "target": target, "error": f"{type(e).__name__}: {e}"}
                        print(f"{name} {key}: FAILED {cell['error']}", flush=True)
                    entry["cells"][key] = cell
                    save_json(results, json_path)
                    md_path.write_text(report(results, args, header))  # a partial table survives an interrupted run
                    if "error" not in cell:
                        print(f"{name} {key}: remaining {cell['remaining']:.3f}, test {cell['test_acc']:.2%} "
                              f"(ORT {cell['ort_test_acc']:.2%}), dev {cell['dev_acc']:.2%}, ORT {cell['ort_ms']:.1f} ms "
                              f"vs dense {cell['dense_ort_ms']:.1f} ms, {cell['seconds']:.0f} s", flush=True)
        del dense, data

    text = report(results, args, header)
    md_path.write_text(text)
    print("\n" + text)
    print(f"results: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
