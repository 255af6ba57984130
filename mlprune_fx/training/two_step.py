"""MLPruning's two-step recipe in one call.

step 1: heads + rows to r1, distilled from the dense model; convert, rounding kept rows
        up to a multiple of the block size so step 2's blocks tile every matrix (the
        added rows start at zero: the step-1 model is unchanged);
step 2: blocks (or single weights) of every prunable matrix to r2 of what step 1 kept,
        distilled from the compacted step-1 model; convert.
Overall about r1 * r2 of the dense model's prunable weights remain (0.5 * 0.4 = 20 %).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import fx, nn

from ..convert import convert
from ..core.config import PruningConfig
from ..core.errors import ConfigError, DataError
from ..core.report import SparsityReport, sparsity_report
from ..passes.drop_inputs import drop_outputs
from ..prepare import prepare
from .distill import DistillConfig, enable_distillation_outputs
from .log import TrainLog
from .loop import train

SECOND_STEPS = ("block", "unstructured")
_DISTILL_OUTPUTS = ("hidden_states", "attentions")


@dataclass
class TwoStepResult:
    """The final converted model, the step-1 model (step 2's teacher), and each step's log and report."""

    model: fx.GraphModule
    step1: fx.GraphModule
    logs: tuple[TrainLog, TrainLog]
    reports: tuple[SparsityReport, SparsityReport]

    @property
    def remaining(self) -> float:
        """Kept weights after both steps over the dense model's prunable weights."""
        return self.reports[1].kept / max(self.reports[0].total, 1)


def _first_batch(batches) -> dict[str, torch.Tensor]:
    source = batches(0) if callable(batches) else batches
    batch = next(iter(source), None)
    if batch is None:
        raise DataError("the training data yielded no batch")
    return batch


def two_step_prune(
    model: nn.Module,
    batches: Iterable[dict] | Callable[[int], Iterable[dict]],
    steps1: int,
    steps2: int,
    *,
    r1: float = 0.5,
    r2: float = 0.4,
    second: str = "block",
    block_size: int = 32,
    teacher: Callable | None = None,
    example_inputs: Mapping[str, torch.Tensor] | None = None,
    distill: DistillConfig | bool | None = True,
    pruning: Mapping[str, object] | None = None,
    inference: bool = True,
    progress: bool = True,
    **train_kwargs,
) -> TwoStepResult:
    """Prune `model` (a fine-tuned dense encoder, left untouched) in two steps to about r1 * r2.

    teacher: step 1's teacher, by default `model` itself. distill: True for
    MLPruning's distillation, a DistillConfig for other weights, False for the task
    loss alone. example_inputs: keyword tensors with `labels`, by default the first
    batch. pruning: further PruningConfig fields for both steps (e.g.
    initial_threshold). inference: drop labels/loss (and the outputs added for
    distillation) from the result. Further keyword arguments go to both
    `training.train` calls (lr, mask_lr, descent, ...).
    """
    if second not in SECOND_STEPS:
        raise ConfigError(f"second={second!r}: the second step prunes one of {SECOND_STEPS}")
    kd = DistillConfig() if distill is True or distill is None else (distill or None)
    example = dict(example_inputs if example_inputs is not None else _first_batch(batches))
    if "labels" not in example:
        raise ConfigError("example_inputs need `labels`: both steps train on the model's own loss")
    example = {k: v.detach().clone() for k, v in example.items()}  # fresh tensors, never views
    teacher = model if teacher is None else teacher

    student = copy.deepcopy(model)
    config = getattr(student, "config", None)
    had = {n: bool(getattr(config, f"output_{n}", False)) for n in _DISTILL_OUTPUTS} if config is not None else {}
    if kd is not None and config is not None:
        enable_distillation_outputs(student, attentions=kd.wants_attentions)
    extra = dict(pruning or {})
    cfg1 = PruningConfig(target=r1, granularity=("head", "row"), block_size=block_size, **extra)
    prepared1 = prepare(student, cfg1, example)
    log1 = train(prepared1, batches, steps1, teacher=teacher if kd else None, distill=kd,
                 progress=progress, desc="step 1: heads + rows", **train_kwargs)
    report1 = sparsity_report(prepared1)
    step1 = convert(prepared1, inference=False, row_multiple=block_size if second == "block" else 1)

    cfg2 = PruningConfig(target=r2, granularity=(second,), block_size=block_size, **extra)
    prepared2 = prepare(step1, cfg2, example)
    log2 = train(prepared2, batches, steps2, teacher=step1 if kd else None, distill=kd,
                 progress=progress, desc=f"step 2: {second}", **train_kwargs)
    report2 = sparsity_report(prepared2)
    final = convert(prepared2, inference=inference)
    if inference:
        drop_outputs(final, [n for n in _DISTILL_OUTPUTS if not had.get(n, False)])
    return TwoStepResult(final, step1, (log1, log2), (report1, report2))
