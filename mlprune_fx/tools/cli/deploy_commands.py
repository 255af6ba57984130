"""mlprune convert / export / evaluate / bench: from a pruned model to measured deployment."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mlprune_fx import PruningConfig, convert, export_onnx, load, prepare, save, sparsity_report
from mlprune_fx.core.errors import MLPruneError
from mlprune_fx.core.pruning_state import pruning_state
from mlprune_fx.passes.drop_inputs import drop_outputs
from mlprune_fx.passes.graph_utils import copy_graph_module
from mlprune_fx.passes.lower_blocks import DEFAULT_MAX_DENSITY
from mlprune_fx.passes.quantize_linears import quantize_linears
from mlprune_fx.runtime import InferenceSession
from mlprune_fx.tools.benchmarking import machine_header, session_opener, time_sessions
from mlprune_fx.training import accuracy

from .inputs import check_device, data_spec, encoded, eval_batches, load_dense_reference, load_splits, split_accuracy
from .run_dir import CLIError, RunDir


def _load(path: Path):
    try:
        return load(path)
    except MLPruneError as exc:
        raise CLIError(str(exc)) from exc


def _example(run: RunDir, batch: int = 2, seq: int = 16) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run.need(run.tokenizer, "prune"))
    enc = tokenizer(["an example sentence"] * batch, padding="max_length", max_length=seq, truncation=True, return_tensors="pt")
    return dict(enc)


def calibrate_command(args: argparse.Namespace) -> None:
    from mlprune_fx import calibrate

    from .inputs import load_hf

    run = RunDir(Path(args.run))
    source = args.model or (run.dense if run.dense.exists() else None)
    model, _ = load_hf(source)
    print(f"calibrating on {source or 'the packaged MiniLM'}: batch {args.batch} x {args.seq}, {args.threads} threads"
          f"{', int8' if args.quantize else ''}")
    cost = calibrate(model, batch=args.batch, seq=args.seq, threads=args.threads, quantize=args.quantize,
                     blocks=args.blocks, progress=not args.quiet)
    out = cost.save(Path(args.output) if args.output else run.cost_model)
    fit = cost.fit
    timed = sum(k.startswith("ms ") for k in fit)
    print(f"dense {fit['dense_ms']:.1f} ms (predicted); the fit matches the {timed} variants timed "
          f"({fit['layers_timed']:.0f} layers) within {fit['max_error']:.1%} (mean {fit['mean_error']:.1%}); cost "
          f"model in {out}")
    run.write_step("calibrate", {"cost_model": str(out), "fit": fit})


def _quantized(fp32, run: RunDir) -> tuple[object, float]:
    """fp32's int8 form, and the largest logit difference between the two on an example batch."""
    q = quantize_linears(copy_graph_module(fp32))
    example = _model_inputs(fp32, _example(run, batch=4, seq=32))
    with torch.no_grad():
        a, b = fp32(**example), q(**example)
    a, b = (getattr(o, "logits", o) for o in (a, b))
    return q, float((a - b).abs().max())


def convert_command(args: argparse.Namespace) -> None:
    run = RunDir(Path(args.run))
    two_step = not args.input and (run.read("prune") or {}).get("mode") == "two-step" and run.converted.exists()
    if two_step and (args.lower_blocks is not None or args.max_block_density != DEFAULT_MAX_DENSITY
                     or args.compact_output_rows is not None):
        raise CLIError("--lower-blocks, --max-block-density and the output-row flags apply to one-step runs: the "
                       f"two-step prune converted its model itself, with the defaults ({run.converted})")
    if two_step and not args.quantize:
        print(f"nothing to convert: the two-step prune converted its model already ({run.converted}); "
              f"go on with `mlprune export --run {run.root}`")
        return
    if not args.input:
        run.check_current(("prune",))
    if two_step:
        converted = _load(run.converted)
        if pruning_state(converted).quantization:
            print(f"nothing to convert: {run.converted} is already {pruning_state(converted).quantization}")
            return
    else:
        source = Path(args.input) if args.input else run.need(run.prepared, "prune")
        converted = convert(_load(source), lower_blocks=args.lower_blocks, max_block_density=args.max_block_density,
                            compact_output_rows=args.compact_output_rows)
    if not args.input and not two_step:
        drop_outputs(converted, (run.read("prune") or {}).get("distillation_outputs", []))  # served models return logits
    record = {}
    if args.quantize:
        converted, diff = _quantized(converted, run)
        record = {"quantize": args.quantize, "int8_vs_fp32_max_logit_difference": diff}
        print(f"int8: every kept encoder linear quantized; largest logit difference from the float32 model on an "
              f"example batch: {diff:.4g}")
    out = Path(args.output) if args.output else run.converted
    save(converted, out)
    report = sparsity_report(converted)
    lowered = pruning_state(converted).lowered
    record.update({"remaining": report.remaining, "lowered": lowered, "compact_output_rows": args.compact_output_rows,
                   "parameters": sum(p.numel() for p in converted.parameters())})
    run.write_step("convert", record, inputs=() if args.input else ("prune",))
    print(f"converted: {report.remaining:.1%} of the encoder weights remain, {len(lowered)} matrices block-sparse"
          f"{', int8' if args.quantize else ''}; saved to {out}")


def _model_inputs(gm, example: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from mlprune_fx.export import input_names

    names = input_names(gm)
    missing = [n for n in names if n not in example]
    if missing:
        raise CLIError(f"the tokenizer gives {sorted(example)}, but the model takes {names}")
    return {n: example[n] for n in names}


def export_command(args: argparse.Namespace) -> None:
    run = RunDir(Path(args.run))
    if not args.input:
        run.check_current(run.model_steps()[:-1])
    source = Path(args.input) if args.input else run.need(run.converted, "convert")
    converted = _load(source)
    example = _model_inputs(converted, _example(run))
    if args.quantize and not pruning_state(converted).quantization:
        converted, diff = _quantized(converted, run)
        print(f"int8: quantized the converted model; largest logit difference from float32 on an example batch: {diff:.4g}")
    out = Path(args.output) if args.output else run.onnx
    export_onnx(converted, out, example, standard_ops=args.standard_ops)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    dense = None if args.output else load_dense_reference(run)
    if dense is not None:
        model, source, _ = dense
        export_onnx(convert(prepare(model, PruningConfig(), example)), run.dense_onnx, example)
        print(f"wrote {run.dense_onnx} (the dense model it was pruned from, {source}, for comparisons)")
        ort_quantize_dynamic(run.dense_onnx, run.dense_ort_int8)
        print(f"wrote {run.dense_ort_int8} (that dense model through ONNX Runtime's quantize_dynamic)")
    if not args.output:
        inputs = () if args.input else (run.converted_by(), *([dense[2]] if dense else []))
        record = {"standard_ops": args.standard_ops, "quantization": pruning_state(converted).quantization}
        run.write_step("export", record, inputs=tuple(dict.fromkeys(inputs)))


def ort_quantize_dynamic(source: Path, target: Path) -> Path:
    """ONNX Runtime's own one-call int8 (QInt8 weights): the alternative a user has without pruning."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    return target


def _onnx_accuracy(path: Path, batches_: list[dict], threads: int) -> float:
    session = InferenceSession(path, num_threads=threads)
    names = {i.name for i in session.get_inputs()}
    return accuracy(lambda **x: torch.from_numpy(session(**{k: v for k, v in x.items() if k in names})[next(iter(o.name for o in session.get_outputs()))]), batches_)


def evaluate_command(args: argparse.Namespace) -> None:
    run = RunDir(Path(args.run))
    device = check_device(args.device)
    run.check_current(run.model_steps())
    spec = data_spec(args, run)
    splits = load_splits(spec)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run.tokenizer if run.tokenizer.exists() else run.need(run.dense, "finetune"))
    enc = encoded(splits, tokenizer, spec)
    split = enc[args.split]
    results: dict[str, float] = {}
    used = {"pruned": run.converted_by(), "pruned_onnx": "export"}
    dense = load_dense_reference(run, device)
    if dense is not None:
        model, dense_model, used["dense"] = dense
        results["dense"] = split_accuracy(model, split)
    if run.converted.exists():
        results["pruned"] = split_accuracy(_load(run.converted), split)
    if run.onnx.exists():
        results["pruned_onnx"] = _onnx_accuracy(run.onnx, eval_batches(split), args.threads)
    if run.dense_ort_int8.exists():
        results["dense_ort_int8"] = _onnx_accuracy(run.dense_ort_int8, eval_batches(split), args.threads)
        used["dense_ort_int8"] = "export"
    if not results:
        raise CLIError(f"nothing to evaluate in {run.root}: run finetune, prune, convert or export first")
    record = {"split": args.split, "accuracy": results, "examples": len(getattr(splits, args.split))}
    if dense is not None:
        record["dense_model"] = str(dense_model)
    run.write_step("evaluate", record, inputs=tuple(dict.fromkeys(used[k] for k in results)))
    for name, acc in results.items():
        print(f"{name:>12}: {acc:.2%} on {len(getattr(splits, args.split))} {args.split} examples")


def bench_command(args: argparse.Namespace) -> None:
    run = RunDir(Path(args.run))
    run.check_current(run.model_steps())
    paths = {"dense": run.dense_onnx, "dense_ort_int8": run.dense_ort_int8, "pruned": run.onnx}
    paths = {k: p for k, p in paths.items() if p.exists()}
    if "pruned" not in paths:
        raise CLIError(f"{run.onnx} does not exist: run `mlprune export --run {run.root}` first")
    ids = torch.randint(1000, 20000, (args.batch, args.seq))
    feeds_all = {"input_ids": ids.numpy(), "attention_mask": torch.ones_like(ids).numpy(), "token_type_ids": torch.zeros_like(ids).numpy()}

    ms = time_sessions({k: session_opener(p, feeds_all, args.threads) for k, p in paths.items()}, rounds=args.rounds,
                       runs=args.repeats)
    header = machine_header(args.threads)
    print(header)
    for name, value in ms.items():
        print(f"{name:>14}: {value:.2f} ms (batch {args.batch}, sequence {args.seq})")
    if "dense" in ms:
        print(f"speed-up: {ms['dense'] / ms['pruned']:.2f}x over the dense model"
              + (f", {ms['dense_ort_int8'] / ms['pruned']:.2f}x over it through quantize_dynamic" if "dense_ort_int8" in ms else ""))
    record = {"ms": ms, "batch": args.batch, "seq": args.seq, "threads": args.threads, "machine": header,
              "sizes_mib": {k: p.stat().st_size / 2**20 for k, p in paths.items()}}
    run.write_step("bench", record, inputs=("export",))
