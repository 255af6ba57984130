"""A plain training loop for prepared models, for people who do not use Trainer.

Pruning runs in two phases so that the *hard* remaining ratio lands on the target with
nothing but the target set:

1. descent (the first `descent` share of the steps): the LEAP regulariser pulls the
   thresholds down. The mask learning rate is derived from the run length
   (`optimizer.default_mask_lr`), and thresholds get no momentum, so they brake as the
   regulariser's gradient fades near the target instead of sailing past it.
2. hold: every mask's kept fraction is scaled by one shared factor until the hard
   ratio is the one closest to the target; then the thresholds stop while weights and
   scores keep training (with `hold_masks`, the scores stop too). See `hold.py` and
   docs/training.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.errors import ConfigError, DataError
from .checkpoint import restore_run, store_run
from .distill import DistillConfig, KDLoss
from .log import RunningAccuracy, TrainLog
from .optimizer import DESCENT, default_mask_lr, linear_schedule, optimizer_groups
from .penalty_step import PenaltyStep
from .prepared_model import hard_remaining, is_prepared, unwrap


def _cycle(batches: Iterable[dict] | Callable[[int], Iterable[dict]]) -> Iterator[dict]:
    epoch = 0
    while True:
        source = batches(epoch) if callable(batches) else batches
        empty = True
        for batch in source:
            empty = False
            yield batch
        if empty:
            raise DataError("the training data yielded no batch")
        epoch += 1


def train(
    model: nn.Module,
    batches: Iterable[dict] | Callable[[int], Iterable[dict]],
    steps: int,
    *,
    lr: float = 3e-5,
    mask_lr: float | None = None,
    warmup: float = 0.1,
    clip: float = 1.0,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None,
    freeze_embeddings: bool = False,
    progress: bool = True,
    desc: str = "training",
    teacher: Callable | None = None,
    distill: DistillConfig | None = None,
    descent: float | None = DESCENT,
    hold_masks: bool = False,
    weight_decay: float = 0.0,
    log_every: int | None = None,
    checkpoint: str | Path | None = None,
    save_every: int | None = None,
    resume: bool = False,
) -> TrainLog:
    """Train `model` for `steps` batches; adds the LEAP penalty when `model` is prepared.

    batches: an iterable of keyword dicts (cycled), or a function epoch -> iterable.
    loss_fn(model, batch) defaults to the model's own `out.loss` (batches carry
    labels), or to distillation from `teacher` with `distill` (DistillConfig).
    mask_lr: None derives it from the run (`default_mask_lr`).
    descent: share of the steps the regulariser drives the thresholds; then they are
    calibrated to the hard target and held (None: the regulariser runs to the end).
    hold_masks: hold the scores too, so the masks stay as the hold found them.
    clip: clip the norm of all gradients to this (0: no clipping).
    model may be wrapped in DistributedDataParallel; every rank calibrates alike.
    checkpoint / save_every: write model, optimizer, scheduler, RNG, log and hold
    state to the `checkpoint` folder every `save_every` steps and at the end;
    resume: continue from that folder (build `model` the same way first). A resumed
    run ends exactly where an uninterrupted one would.
    """
    if steps < 1:
        raise ConfigError(f"steps={steps}: train for at least one step")
    inner = unwrap(model)
    prepared = is_prepared(inner)
    if teacher is not None:
        if loss_fn is not None:
            raise ConfigError("give either `teacher` (distillation) or `loss_fn`, not both")
        loss_fn = KDLoss(teacher, distill)
    log = TrainLog()
    if prepared and mask_lr is None:
        mask_lr = default_mask_lr(inner, steps, warmup, descent or 1.0)
    log.mask_lr = mask_lr if prepared else None
    optimizer = torch.optim.AdamW(optimizer_groups(model, lr, mask_lr or 1e-2, weight_decay, freeze_embeddings))
    scheduler = linear_schedule(optimizer, steps, int(warmup * steps))
    leap = PenaltyStep(inner, steps, descent, hold_masks) if prepared else None
    every = log_every or max(1, steps // 100)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    model.train()
    data = _cycle(batches)
    start = 0
    if resume:
        if checkpoint is None:
            raise ConfigError("resume=True needs the `checkpoint` folder to resume from")
        start, log = restore_run(Path(checkpoint), inner, optimizer, scheduler, leap.hold if leap else None)
        for _ in range(start):
            next(data)
    running = RunningAccuracy()
    bar = tqdm(range(start, steps), desc=desc, disable=not progress, leave=False, initial=start, total=steps)
    try:
        for step in bar:
            batch = next(data)
            if loss_fn:
                task, logits = loss_fn(model, batch), getattr(loss_fn, "student_logits", None)
            else:
                out = model(**batch)
                task, logits = out.loss, getattr(out, "logits", None)
            loss = task
            info = {"loss": f"{float(task.detach()):.4f}"}
            if running.add(logits, batch.get("labels")):
                log.accuracy.append(running.last)
                info["acc"] = f"{running.value:.3f}"
            if leap is not None:
                pen = leap.loss()
                loss = task if pen is None else task + pen
                info.update(rho=f"{leap.last['rho']:.3f}", lam=f"{leap.last['lambda']:.0f}")
                log.rho.append(leap.last["rho"])
                log.lam.append(leap.last["lambda"])
            loss.backward()
            if leap is not None:
                leap.drop_held_grads()
            if clip:
                log.grad_norm.append(float(torch.nn.utils.clip_grad_norm_(params, clip)))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            log.steps.append(step)
            log.loss.append(float(task.detach()))
            if isinstance(loss_fn, KDLoss) and loss_fn.last is not None:
                log.kd.append(loss_fn.last.parts())
            held = leap.after_step(step + 1) if leap is not None else None
            if held is not None:
                log.hold_from, log.adjust, log.before_hold = held["hold_from"], held["hold_adjust"], held["hold_before"]
            if leap is not None and (step % every == 0 or step + 1 == steps or held is not None):
                log.remaining_steps.append(step + 1)
                log.remaining.append(hard_remaining(inner))
            bar.set_postfix(info, refresh=False)
            if checkpoint is not None and ((save_every and (step + 1) % save_every == 0) or step + 1 == steps):
                store_run(Path(checkpoint), step + 1, inner, optimizer, scheduler, log, leap.hold if leap else None)
    finally:
        if leap is not None:
            log.hold_churn = leap.release()
    model.eval()
    return log
