"""describe: what mlprune_fx sees in a model, without changing it."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .core.structures import EncoderStructure
from .passes.analyze import find_structures
from .passes.capture import capture


def describe(
    model: nn.Module, example_inputs: Mapping[str, torch.Tensor] | None = None, *, show: bool = True
) -> EncoderStructure:
    """Capture and analyze `model`; print (and return) its blocks and the linears left alone."""
    structure = find_structures(capture(model, example_inputs))
    if show:
        print(f"{type(model).__name__}: {structure.describe()}")
    return structure
