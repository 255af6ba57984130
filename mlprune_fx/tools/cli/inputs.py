"""Data and model arguments shared by the subcommands."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mlprune_fx.tools.data import DataError, DataSplits, batches, load_dataset, tokenize

from .run_dir import CLIError, RunDir


@dataclass
class DataSpec:
    source: str = "rotten_tomatoes"
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    max_examples: int | None = None
    seed: int = 0
    max_length: int = 128


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data (defaults: what the run used before, else the packaged Rotten Tomatoes)")
    group.add_argument("--data", help="packaged name (rotten_tomatoes, tweets, bbc_news), a .csv/.tsv/.jsonl file or folder, or hf:NAME[:CONFIG]")
    group.add_argument("--text-column", help="column of the text (default: text, sentence or sentence1)")
    group.add_argument("--text-pair-column", help="column of a second text, for pair tasks (default: text_pair or "
                       "sentence2 when present)")
    group.add_argument("--label-column", help="column of the label, names or integers (default: label)")
    group.add_argument("--max-examples", type=int, help="cap the examples (before the 80/10/10 split), for quick runs")
    group.add_argument("--seed", type=int, help="split and shuffle seed (default 0)")
    group.add_argument("--max-length", type=int, help="tokens per example (default 128)")


def data_spec(args: argparse.Namespace, run: RunDir) -> DataSpec:
    saved = run.read("data") or {}
    spec = DataSpec(**saved)
    for key in ("text_column", "text_pair_column", "label_column", "max_examples", "seed", "max_length"):
        if getattr(args, key, None) is not None:
            setattr(spec, key, getattr(args, key))
    if getattr(args, "data", None):
        spec.source = args.data
    return spec


def load_splits(spec: DataSpec) -> DataSplits:
    try:
        return load_dataset(
            spec.source, text_column=spec.text_column, text_pair_column=spec.text_pair_column,
            label_column=spec.label_column, seed=spec.seed, max_examples=spec.max_examples,
        )
    except DataError as exc:
        raise CLIError(str(exc)) from exc


def save_spec(run: RunDir, spec: DataSpec, splits: DataSplits) -> None:
    run.write("data", {**asdict(spec)})
    run.write("labels", {"names": list(splits.label_names)})


def encoded(splits: DataSplits, tokenizer, spec: DataSpec) -> dict[str, dict[str, torch.Tensor]]:
    return {name: tokenize(getattr(splits, name), tokenizer, max_length=spec.max_length) for name in ("train", "dev", "test")}


def batch_source(enc: dict[str, torch.Tensor], batch_size: int, seed: int, device: str, group_by_length: bool = True):
    """epoch -> shuffled batches on `device` (what training.train takes)."""

    def epoch(i: int):
        for batch in batches(enc, batch_size, shuffle=True, seed=seed + i, group_by_length=group_by_length):
            yield {k: v.to(device) for k, v in batch.items()}

    return epoch


def eval_batches(enc: dict[str, torch.Tensor], batch_size: int = 64, device: str = "cpu") -> list[dict[str, torch.Tensor]]:
    """Batches for scoring, grouped by length (accuracy does not depend on the order)."""
    return [{k: v.to(device) for k, v in b.items()} for b in batches(enc, batch_size, shuffle=False, group_by_length=True)]


def split_accuracy(model: torch.nn.Module, enc: dict[str, torch.Tensor]) -> float:
    """Accuracy of an HF model or a captured one (fed only the inputs its graph takes) on an encoded split,
    on the device the model's weights are on."""
    from torch import fx

    from mlprune_fx.export import input_names
    from mlprune_fx.training import accuracy

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batches_ = eval_batches(enc, device=str(device))
    if isinstance(model, fx.GraphModule):
        names = set(input_names(model)) | {"labels"}
        batches_ = [{k: v for k, v in b.items() if k in names} for b in batches_]
    return accuracy(model.eval(), batches_)


def check_device(device: str) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was asked for, but torch sees no CUDA device: use --device cpu")
    return device


def load_hf(path_or_name: str | Path, num_labels: int | None = None, device: str = "cpu"):
    """(model, tokenizer) from a local folder or a hub name; the packaged MiniLM when None."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from mlprune_fx.tools.models import packaged_model_dir

    source = str(path_or_name) if path_or_name else str(packaged_model_dir())
    kwargs = {"num_labels": num_labels} if num_labels else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
    except OSError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CLIError(
            f"could not load a model from {source!r}: {first}. Give a local folder with config.json and weights, "
            "or a hub name when a hub is reachable (none is, on machines without network)"
        ) from exc
    return model.to(device), tokenizer


def load_dense_reference(run: RunDir, device: str = "cpu"):
    """(model, source, step) of the dense model the pruned one started from (RunDir.dense_source),
    loaded as prune loaded it: same label count, same seed for a new classifier head; None when the
    run has none."""
    found = run.dense_source()
    if found is None:
        return None
    source, step = found
    labels = (run.read("labels") or {}).get("names")
    torch.manual_seed((run.read("data") or {}).get("seed", 0))
    model, _ = load_hf(source, num_labels=len(labels) if labels else None, device=device)
    return model, source, step
