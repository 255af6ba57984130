"""Accuracy of a model (HF, prepared, converted or an ONNX Runtime call) on labelled batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .distill import accepted_arguments


@torch.no_grad()
def accuracy(model: Callable, batches: Iterable[dict]) -> float:
    """Share of correct argmax predictions; batches carry `labels` (passed on only when required)."""
    _, required = accepted_arguments(model.forward if isinstance(model, nn.Module) else model)
    correct = total = 0
    for batch in batches:
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels" or k in required}
        logits = model(**inputs)
        logits = logits.logits if hasattr(logits, "logits") else logits
        correct += int((torch.as_tensor(logits).argmax(-1) == labels).sum())
        total += len(labels)
    return correct / max(total, 1)
