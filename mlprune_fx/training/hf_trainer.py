"""Hugging Face Trainer integration: LEAP penalty, distillation, mask learning rate, the hold.

`LeapTrainer` is a Trainer subclass rather than a TrainerCallback because the penalty has
to be part of the loss that is back-propagated, and callbacks never see the loss: they
can read and stop training, not change the gradient. `compute_loss` adds lambda * R (and
replaces the task loss by the distillation loss when a teacher is given);
`create_optimizer` puts mask scores and thresholds in their own group; `log` adds the
remaining ratio, rho and lambda to Trainer's logs. The penalty and the hold are the same
`PenaltyStep` that `train` runs; the hold engages from a callback at step
`descent * max_steps`. Under Accelerate the model seen by `compute_loss` may be wrapped
(DDP); the penalty is read from the unwrapped model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import Trainer, TrainerCallback

from .distill import DistillConfig, KDLoss
from .optimizer import DESCENT, default_mask_lr, optimizer_groups
from .penalty_step import PenaltyStep
from .prepared_model import hard_remaining, is_prepared


class _HoldCallback(TrainerCallback):
    def __init__(self, trainer: "LeapTrainer") -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._setup_leap()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        t = self.trainer
        if t._leap is not None:
            held = t._leap.after_step(state.global_step, [t.optimizer])
            if held is not None:
                t._hold_info = {k: v for k, v in held.items() if k != "hold_from"}
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.trainer._leap is not None:
            self.trainer._leap.release()
        return control


class LeapTrainer(Trainer):
    """Trainer for a model returned by `mlprune_fx.prepare`.

    teacher: distil this model (dense fine-tuned, or a previous step's converted
    model) with `distill` (DistillConfig). mask_lr: learning rate of the mask
    scores and thresholds; None derives it from the run length as `training.train`
    does (for the default linear schedule). descent: share of the steps before
    the thresholds are calibrated and held (None: never). hold_masks: hold the
    mask scores too, so the kept units stay fixed from then on. Everything else is
    Trainer's own; use `remove_unused_columns=False` with tensor-dict datasets.
    """

    def __init__(
        self,
        *args,
        teacher: Callable | None = None,
        distill: DistillConfig | None = None,
        mask_lr: float | None = None,
        descent: float | None = DESCENT,
        hold_masks: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.kd = KDLoss(teacher, distill) if teacher is not None else None
        if isinstance(teacher, torch.nn.Module):
            teacher.to(self.args.device)
        self.mask_lr = mask_lr
        self.descent = descent
        self.hold_masks = hold_masks
        self._leap: PenaltyStep | None = None
        self._hold_info: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self.add_callback(_HoldCallback(self))

    def _run_steps(self) -> int:
        return self.state.max_steps if self.state.max_steps > 0 else self.args.max_steps

    def _setup_leap(self) -> None:
        """Mask lr and the LEAP step from the run length, once it is known (before the optimizer exists)."""
        steps = self._run_steps()
        if self._leap is not None or not is_prepared(self.model) or steps <= 0:
            return
        if self.mask_lr is None:
            warmup = self.args.get_warmup_steps(steps) / steps
            self.mask_lr = default_mask_lr(self.model, steps, warmup, self.descent or 1.0)
        self._leap = PenaltyStep(self.model, steps, self.descent, self.hold_masks)

    def create_optimizer(self, model=None):
        model = self.model if model is None else model
        if self.optimizer is None and is_prepared(model):
            self._setup_leap()
            decay = set(self.get_decay_parameter_names(model))
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            betas = (0.0, kwargs["betas"][1]) if "betas" in kwargs else None  # Adam family: no threshold momentum
            groups = optimizer_groups(model, self.args.learning_rate, self.mask_lr or 1e-2, threshold_betas=betas)
            ids = {id(p) for p in groups[0]["params"]}
            named = [(n, p) for n, p in model.named_parameters() if id(p) in ids]
            weights = [
                {"params": [p for n, p in named if n in decay], "weight_decay": self.args.weight_decay},
                {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
            ]
            self.optimizer = cls(weights + groups[1:], **kwargs)
            return self.optimizer
        return super().create_optimizer(model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.kd is not None and model.training:
            loss, outputs = self.kd(model, inputs), None
        else:
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and is_prepared(self.accelerator.unwrap_model(model)) and self._leap is not None:
            pen = self._leap.loss()
            if pen is not None:
                loss = loss + pen.to(loss.device)
            self._last = dict(self._leap.last)
            if self.kd is not None and self.kd.last is not None:
                self._last.update({f"kd_{k}": v for k, v in self.kd.last.parts().items()})
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if is_prepared(self.model) and "loss" in logs:
            logs = {**logs, **self._last, "remaining": hard_remaining(self.model), **self._hold_info}
        super().log(logs, start_time)
