"""mlprune finetune / prune: the training steps."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path

import torch

from mlprune_fx import CostModel, PruningConfig, prepare, save, sparsity_report
from mlprune_fx.core.errors import MLPruneError
from mlprune_fx.training import hard_target_share, train
from mlprune_fx.training.distill import enable_distillation_outputs

from . import PRUNE_DEFAULTS
from .inputs import batch_source, check_device, data_spec, encoded, load_hf, load_splits, save_spec, split_accuracy
from .run_dir import CLIError, RunDir

_TRAINING_SETTINGS = {"steps": int, "steps2": int, "lr": float, "mask_lr": float, "hold_masks": bool}


def _check_training_settings(path: str, rest: dict, fields: set[str]) -> None:
    unknown = sorted(set(rest) - set(_TRAINING_SETTINGS))
    if unknown:
        raise CLIError(f"--config {path}: unknown field(s) {', '.join(unknown)}; a config holds PruningConfig fields "
                       f"({', '.join(sorted(fields))}) and {', '.join(_TRAINING_SETTINGS)}")
    for name, kind in _TRAINING_SETTINGS.items():
        value = rest.get(name)
        if kind is bool:
            if value is not None and not isinstance(value, bool):
                raise CLIError(f"--config {path}: {name}={value!r} must be true or false")
            continue
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
                               and (kind is float or float(value).is_integer()))
        if not ok:
            raise CLIError(f"--config {path}: {name}={value!r} must be a positive {'integer' if kind is int else 'number'}")


def _setting(args: argparse.Namespace, settings: dict, name: str):
    """A training setting: the flag when given, else --config's value, else the default."""
    flag = getattr(args, name)
    if flag is not None:
        return flag
    value = settings.get(name, PRUNE_DEFAULTS.get(name))
    return None if value is None else _TRAINING_SETTINGS[name](value)


def _log_dict(log) -> dict:
    return {k: v for k, v in dataclasses.asdict(log).items()}


def _checkpointing(args: argparse.Namespace, run: RunDir, step: str) -> dict:
    folder = run.checkpoint / step
    if args.resume and not (folder / "model.safetensors").exists():
        raise CLIError(f"nothing to resume: {folder} holds no checkpoint (run without --resume)")
    return {"checkpoint": folder, "save_every": args.save_every or None, "resume": args.resume}


def finetune(args: argparse.Namespace) -> None:
    run = RunDir(Path(args.run))
    device = check_device(args.device)
    spec = data_spec(args, run)
    splits = load_splits(spec)
    torch.manual_seed(spec.seed)  # the new classifier head and dropout: same seed, same run
    model, tokenizer = load_hf(args.model, num_labels=len(splits.label_names), device=device)
    enc = encoded(splits, tokenizer, spec)
    print(f"fine-tuning {args.model or 'the packaged MiniLM'} on {spec.source}: {len(splits.train)} train examples, {args.steps} steps")
    log = train(
        model, batch_source(enc["train"], args.batch_size, spec.seed, device, args.group_by_length), args.steps, lr=args.lr,
        progress=not args.quiet, desc="fine-tune", **_checkpointing(args, run, "finetune"),
    )
    result = {
        "model": args.model or "packaged all-MiniLM-L6-v2",
        "steps": args.steps, "lr": args.lr, "batch_size": args.batch_size, "group_by_length": args.group_by_length,
        "dev_accuracy": split_accuracy(model, enc["dev"]),
        "test_accuracy": split_accuracy(model, enc["test"]),
        "log": {"steps": log.steps, "loss": log.loss},
    }
    model.save_pretrained(run.dense)
    tokenizer.save_pretrained(run.dense)
    tokenizer.save_pretrained(run.tokenizer)
    save_spec(run, spec, splits)
    run.write_step("finetune", result)
    print(f"dense model in {run.dense}: dev accuracy {result['dev_accuracy']:.2%}, test accuracy {result['test_accuracy']:.2%}")


def _cost_model(args: argparse.Namespace, run: RunDir) -> CostModel | None:
    """--cost-model, else RUN/cost_model.json from `mlprune calibrate`, else None (the shipped one)."""
    path = Path(args.cost_model) if args.cost_model else run.cost_model
    if not args.cost_model and not path.exists():
        print("note: no cost model calibrated for this run (mlprune calibrate); using the one shipped with mlprune_fx")
        return None
    try:
        return CostModel.load(path)
    except MLPruneError as exc:
        raise CLIError(str(exc)) from exc


def _pruning_config(args: argparse.Namespace, run: RunDir) -> tuple[PruningConfig, dict]:
    """PruningConfig from --config (JSON) with flags on top; the rest of the file are training settings."""
    settings: dict = {}
    if args.config:
        try:
            settings = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CLIError(f"--config {args.config}: {exc}") from exc
        if not isinstance(settings, dict):
            raise CLIError(f"--config {args.config} must hold a JSON object")
    fields = {f.name for f in dataclasses.fields(PruningConfig)}
    cfg = {k: v for k, v in settings.items() if k in fields}
    rest = {k: v for k, v in settings.items() if k not in fields}
    _check_training_settings(args.config, rest, fields)
    if args.two_step:
        _check_two_step(args, cfg)
    flags = (("target", args.target), ("speedup", args.speedup), ("block_size", args.block_size),
             ("magnitude_prior", args.magnitude_prior), ("attention_length", args.attention_length))
    for key, flag in flags:
        if flag is not None:
            cfg[key] = flag
    if args.target is not None and args.speedup is None:
        cfg.pop("speedup", None)  # the flag replaces a speed-up the file asked for
    if args.speedup is not None and args.target is None:
        cfg.pop("target", None)
    if cfg.get("speedup") is not None:
        cfg["cost_model"] = _cost_model(args, run)
    if args.granularity:
        cfg["granularity"] = tuple(args.granularity)
    if args.keep_output_rows:
        cfg["prune_output_rows"] = False
    try:
        return PruningConfig(**cfg), rest
    except (MLPruneError, TypeError) as exc:
        raise CLIError(f"bad pruning config: {exc}") from exc


_TWO_STEP_SETS = ("target", "speedup", "granularity")  # what two-step pruning sets itself, from --r1, --r2 and --second


def _check_two_step(args: argparse.Namespace, from_file: dict) -> None:
    """Refuse what the two steps would otherwise ignore, before any work."""
    given = [f"--{k}" for k in _TWO_STEP_SETS if getattr(args, k)]
    given += [f"{k!r} in --config" for k in _TWO_STEP_SETS if k in from_file]
    if given:
        raise CLIError(f"--two-step takes its targets from --r1 and --r2 and its granularities from --second "
                       f"(heads and rows, then blocks or weights); drop {', '.join(given)}")
    if args.resume:
        raise CLIError("--resume works for one-step pruning only: rerun the two steps without --resume")


def _shared_fields(cfg: PruningConfig) -> dict:
    """The PruningConfig fields both steps share: all but what each step sets itself."""
    own = set(_TWO_STEP_SETS) | {"block_size"}
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in own}


def _model_name(model: str | None) -> str | None:
    """--model as later steps can load it again: a local folder made absolute, a hub name as given."""
    if not model:
        return None
    return str(Path(model).resolve()) if Path(model).exists() else model


def prune(args: argparse.Namespace) -> None:
    run = RunDir(Path(args.run))
    device = check_device(args.device)
    cfg, settings = _pruning_config(args, run)
    spec = data_spec(args, run)
    splits = load_splits(spec)
    source = args.model or (run.dense if run.dense.exists() else None)
    if source is None:
        print("note: no fine-tuned dense model in the run (mlprune finetune); pruning the packaged MiniLM with an untrained head")
    torch.manual_seed(spec.seed)
    model, tokenizer = load_hf(source, num_labels=len(splits.label_names), device=device)
    enc = encoded(splits, tokenizer, spec)
    data = batch_source(enc["train"], args.batch_size, spec.seed, device, args.group_by_length)
    example = next(iter(data(0)))
    steps, lr, mask_lr, hold_masks = (_setting(args, settings, k) for k in ("steps", "lr", "mask_lr", "hold_masks"))
    teacher = copy.deepcopy(model).eval() if args.distill else None
    tokenizer.save_pretrained(run.tokenizer)
    save_spec(run, spec, splits)
    if args.two_step:
        from mlprune_fx.training import two_step_prune

        steps2 = _setting(args, settings, "steps2") or steps
        result = two_step_prune(
            model, data, steps, steps2, r1=args.r1, r2=args.r2, second=args.second, block_size=cfg.block_size,
            example_inputs=example, distill=args.distill, pruning=_shared_fields(cfg), progress=not args.quiet,
            lr=lr, mask_lr=mask_lr, hold_masks=hold_masks, log_every=max(1, min(steps, steps2) // 50),
        )
        save(result.model, run.converted)
        logs = [_log_dict(log) for log in result.logs]
        report = sparsity_report(result.model)
        record = {"mode": "two-step", "r1": args.r1, "r2": args.r2, "second": args.second, "steps": steps,
                  "steps2": steps2, "lr": lr, "config": {**_shared_fields(cfg), "block_size": cfg.block_size}, "logs": logs}
        print(f"two-step pruning done: converted model in {run.converted}")
    else:
        added = []
        if args.distill and not getattr(model.config, "output_hidden_states", False):
            enable_distillation_outputs(model, attentions=False)  # before prepare, so the graph returns them
            added = ["hidden_states"]
        prepared = prepare(model, cfg, example)
        log = train(
            prepared, data, steps, lr=lr, mask_lr=mask_lr, hold_masks=hold_masks,
            teacher=teacher, progress=not args.quiet, desc="prune", log_every=max(1, steps // 50),
            **_checkpointing(args, run, "prune"),
        )
        save(prepared, run.prepared)
        report = sparsity_report(prepared)
        record = {"mode": "one-step", "config": dataclasses.asdict(cfg), "steps": steps, "lr": lr, "logs": [_log_dict(log)],
                  "distillation_outputs": added}
        work = (f", {hard_target_share(prepared):.1%} of the work at {cfg.attention_length} tokens"
                if cfg.attention_length is not None else "")
        asked = f"speed-up {cfg.speedup:g}x" if cfg.speedup is not None else f"target {cfg.target:.0%}"
        print(f"pruned to {report.remaining:.1%} of the encoder weights{work}, predicted {report.predicted_speedup:.2f}x "
              f"faster than dense ({asked}); prepared model in {run.prepared}")
    record["remaining"], record["hold_masks"] = report.remaining, hold_masks
    record["predicted_speedup"] = report.predicted_speedup
    record["model"] = _model_name(args.model)
    record["batch_size"], record["group_by_length"] = args.batch_size, args.group_by_length
    pruned = result.model if args.two_step else prepared
    record["dev_accuracy"] = split_accuracy(pruned, enc["dev"])
    print(f"dev accuracy of the pruned model: {record['dev_accuracy']:.2%} ({len(splits.dev)} examples)")
    run.write_step("prune", record, inputs=() if args.model else ("finetune",))
