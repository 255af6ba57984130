"""mlprune convert / export / evaluate / bench: from a pruned model to measured deployment."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mlprune_fx import PruningConfig, convert, export_onnx, load, prepare, save, sparsity_report
from mlprune_fx.core.errors import MLPruneError
from mlprune_fx.core.pruning_state import pruning_state
from mlprune_fx.passes.drop_inputs import drop_outputs
from mlprune_fx.passes.lower_blocks import DEFAULT_MAX_DENSITY
from mlprune_fx.runtime import InferenceSession
from mlprune_fx.tools.benchmarking import machine_header, time_sessions
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


def convert_command(args: argparse.Namespace) -> None:
    run = RunDir(Path(args.run))
    if not args.input and (run.read("prune") or {}).get("mode") == "two-step" and run.converted.exists():
        if args.lower_blocks is not None or args.max_block_density != DEFAULT_MAX_DENSITY:
            raise CLIError("--lower-blocks and --max-block-density apply to one-step runs: the two-step prune "
                           f"converted its model itself, with the defaults ({run.converted})")
        print(f"nothing to convert: the two-step prune converted its model already ({run.converted}); "
              f"go on with `mlprune export --run {run.root}`")
        return
    if not args.input:
        run.check_current(("prune",))
    source = Path(args.input) if args.input else run.need(run.prepared, "prune")
    prepared = _load(source)
    converted = convert(prepared, lower_blocks=None if args.lower_blocks is None else args.lower_blocks, max_block_density=args.max_block_density)
    if not args.input:
        drop_outputs(converted, (run.read("prune") or {}).get("distillation_outputs", []))  # served models return logits
    out = Path(args.output) if args.output else run.converted
    save(converted, out)
    report = sparsity_report(converted)
    lowered = pruning_state(converted).lowered
    run.write_step("convert", {"remaining": report.remaining, "lowered": lowered, "parameters": sum(p.numel() for p in converted.parameters())},
                   inputs=() if args.input else ("prune",))
    print(f"converted: {report.remaining:.1%} of the encoder weights remain, {len(lowered)} matrices block-sparse; saved to {out}")


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
    out = Path(args.output) if args.output else run.onnx
    export_onnx(converted, out, example, standard_ops=args.standard_ops)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    dense = None if args.output else load_dense_reference(run)
    if dense is not None:
        model, source, _ = dense
        export_onnx(convert(prepare(model, PruningConfig(), example)), run.dense_onnx, example)
        print(f"wrote {run.dense_onnx} (the dense model it was pruned from, {source}, for comparisons)")
    if not args.output:
        inputs = () if args.input else (run.converted_by(), *([dense[2]] if dense else []))
        run.write_step("export", {"standard_ops": args.standard_ops}, inputs=tuple(dict.fromkeys(inputs)))


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
    paths = {"dense": run.dense_onnx, "pruned": run.onnx}
    paths = {k: p for k, p in paths.items() if p.exists()}
    if "pruned" not in paths:
        raise CLIError(f"{run.onnx} does not exist: run `mlprune export --run {run.root}` first")
    ids = torch.randint(1000, 20000, (args.batch, args.seq))
    feeds_all = {"input_ids": ids.numpy(), "attention_mask": torch.ones_like(ids).numpy(), "token_type_ids": torch.zeros_like(ids).numpy()}

    def opener(path: Path):
        def open_session():
            session = InferenceSession(path, num_threads=args.threads)
            feeds = {i.name: feeds_all[i.name] for i in session.get_inputs()}
            return lambda: session.run(None, feeds)
        return open_session

    ms = time_sessions({k: opener(p) for k, p in paths.items()}, rounds=args.rounds, runs=args.repeats)
    header = machine_header(args.threads)
    print(header)
    for name, value in ms.items():
        print(f"{name:>7}: {value:.2f} ms (batch {args.batch}, sequence {args.seq})")
    if "dense" in ms:
        print(f"speed-up: {ms['dense'] / ms['pruned']:.2f}x")
    record = {"ms": ms, "batch": args.batch, "seq": args.seq, "threads": args.threads, "machine": header,
              "sizes_mib": {k: p.stat().st_size / 2**20 for k, p in paths.items()}}
    run.write_step("bench", record, inputs=("export",))
