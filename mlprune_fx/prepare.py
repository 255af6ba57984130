"""prepare: capture -> analyze -> insert masks."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import fx, nn

from .core.config import PruningConfig
from .core.errors import ConfigError, UnsupportedModelError
from .core.leap import active_cost_model, check_reachable, model_shape
from .core.pruning_state import pruning_state
from .passes.analyze import find_structures
from .passes.capture import capture
from .passes.init_scores import init_scores
from .passes.insert_masks import insert_masks
from .runtime.timing import cpu_description

SUPPORTED = "BERT, RoBERTa, DistilBERT, ELECTRA, MPNet, DeBERTa-v2/v3, ModernBERT, ALBERT and other BERT-family encoders"


def prepare(
    model: nn.Module,
    config: PruningConfig | None = None,
    example_inputs: Mapping[str, torch.Tensor] | None = None,
) -> fx.GraphModule:
    """Capture `model` and insert learnable masks; the result trains like the model.

    example_inputs: the keyword tensors `model.forward` takes (include `labels` to
    get `out.loss`). Batch and sequence length stay dynamic. The model itself is
    not modified.
    """
    config = PruningConfig() if config is None else config
    if not isinstance(config, PruningConfig):
        raise ConfigError(f"config must be a mlprune_fx.PruningConfig, got {type(config).__name__}")
    gm = capture(model, example_inputs)
    structure = find_structures(gm, config.skip)
    if not structure:
        seen = ", ".join(s.weight for s in structure.skipped[:6]) or "no linear layer at all"
        reasons = [r for r in dict.fromkeys(s.reason for s in structure.skipped) if not r.startswith("not part of")]
        why = f" Left alone because: {'; '.join(reasons[:3])}." if reasons else ""
        raise UnsupportedModelError(
            f"found nothing to prune in {type(model).__name__}: no attention block (Q/K/V linears "
            f"meeting in attention, then an output linear) and no FFN block (linear -> activation "
            f"-> linear). Linears seen: {seen}.{why} mlprune_fx prunes {SUPPORTED}; "
            "run mlprune_fx.describe(model) to see what the graph holds."
        )
    prepared = init_scores(insert_masks(gm, structure, config), config.magnitude_prior)
    state = pruning_state(prepared)
    if config.speedup is not None:  # the shipped model too: it was fitted on one model and machine
        active_cost_model(config).check_fits(model_shape(state), cpu_description())
    check_reachable(state)
    return prepared
