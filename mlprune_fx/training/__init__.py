"""Training a prepared model: the loop, the hold, distillation, the two-step recipe, and Trainer.

`train` is the plain loop; `LeapTrainer` the Hugging Face Trainer with the same LEAP step
(`penalty_step.PenaltyStep`); `two_step_prune` MLPruning's heads-and-rows-then-blocks recipe.
"""

from .distill import DistillConfig, enable_distillation_outputs
from .evaluation import accuracy
from .hold import ThresholdHold
from .log import RunningAccuracy, TrainLog
from .loop import train
from .optimizer import default_mask_lr, optimizer_groups
from .prepared_model import hard_remaining, hard_target_share

__all__ = [
    "DistillConfig",
    "LeapTrainer",
    "RunningAccuracy",
    "ThresholdHold",
    "TrainLog",
    "TwoStepResult",
    "accuracy",
    "default_mask_lr",
    "enable_distillation_outputs",
    "hard_remaining",
    "hard_target_share",
    "optimizer_groups",
    "train",
    "two_step_prune",
]


def __getattr__(name: str):
    # Imported on first use: Trainer pulls in accelerate, and the two-step recipe prepare/convert.
    if name == "LeapTrainer":
        from .hf_trainer import LeapTrainer

        return LeapTrainer
    if name in ("two_step_prune", "TwoStepResult"):
        from . import two_step

        return getattr(two_step, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
