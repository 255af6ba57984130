"""Capture a model as a train-mode GraphModule with dynamic batch and sequence."""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
from torch import fx, nn
from torch.export import Dim

from ..core.errors import CaptureError, ExampleInputsError
from ..core.pruning_state import META_KEY, SOURCE_KEY
from .dropout import make_dropout_switchable
from .graph_utils import copy_graph_module

_INTEGER_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def default_example_inputs(model: nn.Module, batch: int = 2, seq: int = 16) -> dict[str, torch.Tensor]:
    """input_ids + attention_mask for a Hugging Face model, from its config."""
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(vocab, int):
        raise ExampleInputsError(
            f"{type(model).__name__} has no `config.vocab_size`, so example inputs cannot be "
            "made up: pass example_inputs={'input_ids': ..., 'attention_mask': ...}"
        )
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (batch, seq), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def check_example_inputs(model: nn.Module, example_inputs) -> dict[str, torch.Tensor]:
    """Validate the example kwargs, and widen a batch of 1 to 2 so batch stays dynamic."""
    if example_inputs is None:
        return default_example_inputs(model)
    if not isinstance(example_inputs, Mapping):
        raise ExampleInputsError(
            f"example_inputs must be a dict of keyword tensors such as "
            f"{{'input_ids': ids, 'attention_mask': mask}}, got {type(example_inputs).__name__}"
        )
    inputs = dict(example_inputs)
    if not inputs:
        raise ExampleInputsError("example_inputs is empty: give at least {'input_ids': ids}")
    params = {
        name: p for name, p in inspect.signature(model.forward).parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    unknown = [k for k in inputs if k not in params]
    if unknown:
        raise ExampleInputsError(
            f"{type(model).__name__}.forward() does not accept {unknown}; it accepts "
            f"{[k for k in params if k != 'self']}"
        )
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor):
            raise ExampleInputsError(f"example input {key!r} must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() == 0:
            raise ExampleInputsError(f"example input {key!r} is a scalar: it needs a batch dimension")
        if key in _INTEGER_INPUTS and value.is_floating_point():
            raise ExampleInputsError(
                f"example input {key!r} has dtype {value.dtype}; token inputs must be integers "
                f"(torch.long): use {key}.long()"
            )
    batch_sizes = {k: v.shape[0] for k, v in inputs.items()}
    if len(set(batch_sizes.values())) != 1:
        raise ExampleInputsError(f"example inputs disagree on the batch size: {batch_sizes}")
    seq_lens = {k: v.shape[1] for k, v in inputs.items() if v.dim() >= 2}
    if len(set(seq_lens.values())) > 1:
        raise ExampleInputsError(f"example inputs disagree on the sequence length: {seq_lens}")
    if seq_lens and next(iter(seq_lens.values())) < 2:
        raise ExampleInputsError("example inputs need a sequence length of at least 2 tokens")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    ids = inputs.get("input_ids")
    if isinstance(vocab, int) and ids is not None and ids.numel() and int(ids.max()) >= vocab:
        raise ExampleInputsError(
            f"input_ids holds token id {int(ids.max())} but the model's vocabulary has {vocab} "
            "entries: was the text tokenized with another model's tokenizer?"
        )
    if next(iter(batch_sizes.values())) == 1:
        inputs = {k: torch.cat([v, v]) for k, v in inputs.items()}
    # Fresh tensors: torch.export guards on an example's view base (a trimmed batch would
    # make every later untrimmed batch fail the guard).
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in inputs.items()}


def dynamic_shapes(inputs: dict[str, torch.Tensor]) -> dict[str, dict[int, object]]:
    """Batch is dynamic everywhere; sequence only where dim 1 is one ([B, S] or [B, S, H])."""
    return {k: {d: Dim.DYNAMIC for d in range(2 if v.dim() in (2, 3) else 1)} for k, v in inputs.items()}


def capture(model: nn.Module, example_inputs=None) -> fx.GraphModule:
    """torch.export in train mode; returns a GraphModule that trains like `model`."""
    state = model.meta.get(META_KEY) if isinstance(model, fx.GraphModule) else None
    if state is not None and state.stage != "converted":
        raise CaptureError(
            "this model was already prepared by mlprune_fx; train it as it is, or convert it first "
            "(a converted model can be prepared again for a further pruning step)"
        )
    inputs = check_example_inputs(model, example_inputs)
    was_training = model.training
    model.train()
    try:
        program = torch.export.export(model, (), inputs, dynamic_shapes=dynamic_shapes(inputs))
    except Exception as exc:
        reason = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise CaptureError(
            f"torch.export could not capture {type(model).__name__}: {reason}\n"
            "Try: pass example_inputs exactly as the model's forward() takes them, "
            "use attn_implementation='sdpa' or 'eager', and check that "
            "torch.export.export(model, (), example_inputs) works on its own."
        ) from exc
    finally:
        model.train(was_training)
    gm = copy_graph_module(program.module())  # the export aliases the model's own tensors
    for name in ("train", "eval"):
        gm.__dict__.pop(name, None)
    gm = make_dropout_switchable(gm)
    gm.train(was_training)
    config = getattr(model, "config", None)
    gm.meta[SOURCE_KEY] = {
        "model_class": type(model).__name__,
        "inputs": {k: {"dtype": str(v.dtype).removeprefix("torch."), "dim": v.dim()} for k, v in inputs.items()},
        "config": config.to_dict() if hasattr(config, "to_dict") else None,
        "attn_implementation": getattr(config, "_attn_implementation", None),
    }
    return gm
