"""What the training code asks of a model that may be wrapped (DDP, DataParallel) and prepared."""

from __future__ import annotations

from torch import fx, nn

from ..core.kept_weights import kept_share
from ..core.latency import predict_latency
from ..core.pruning_state import MASK_CONTAINER, pruning_state


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def is_prepared(model: nn.Module) -> bool:
    model = unwrap(model)
    return isinstance(model, fx.GraphModule) and hasattr(model, MASK_CONTAINER)


def hard_remaining(prepared: nn.Module) -> float:
    """Share of the prunable weights the current hard masks keep (what convert keeps):
    `sparsity_report(prepared).remaining`, counted without building every matrix's mask."""
    return kept_share(unwrap(prepared))


def hard_target_share(prepared: nn.Module) -> float:
    """What the target counts, under the hard masks: `hard_remaining`, or with
    `attention_length` the share of the work, each kept head's attention included, or with
    `speedup` the predicted latency over dense's, as convert will build the model."""
    gm = unwrap(prepared)
    if pruning_state(gm).config.speedup is not None:
        return 1 / predict_latency(gm).speedup
    return kept_share(gm, work=True)
