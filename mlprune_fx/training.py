"""A plain training loop for prepared models, for people who do not use Trainer."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from .leap import penalty
from .state import MASK_CONTAINER


def optimizer_groups(
    model: nn.Module,
    lr: float = 3e-5,
    mask_lr: float = 1e-2,
    weight_decay: float = 0.0,
    freeze_embeddings: bool = False,
) -> list[dict]:
    """AdamW groups: model weights at `lr`, mask scores and thresholds at `mask_lr`."""
    weights, masks = [], []
    for name, param in model.named_parameters():
        if freeze_embeddings and "embeddings." in name:
            param.requires_grad_(False)
            continue
        if not param.requires_grad:
            continue
        (masks if name.startswith(MASK_CONTAINER + ".") else weights).append(param)
    groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay}]
    if masks:
        groups.append({"params": masks, "lr": mask_lr, "weight_decay": 0.0})
    return groups


def linear_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class TrainLog:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    rho: list[float] = field(default_factory=list)
    lam: list[float] = field(default_factory=list)


def _cycle(batches: Iterable[dict] | Callable[[int], Iterable[dict]]) -> Iterator[dict]:
    epoch = 0
    while True:
        source = batches(epoch) if callable(batches) else batches
        empty = True
        for batch in source:
            empty = False
            yield batch
        if empty:
            raise ValueError("the training data yielded no batch")
        epoch += 1


def train(
    model: nn.Module,
    batches: Iterable[dict] | Callable[[int], Iterable[dict]],
    steps: int,
    *,
    lr: float = 3e-5,
    mask_lr: float = 1e-2,
    warmup: float = 0.1,
    clip: float = 1.0,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None,
    freeze_embeddings: bool = False,
    progress: bool = True,
    desc: str = "training",
) -> TrainLog:
    """Train `model` for `steps` batches; adds the LEAP penalty when `model` is prepared.

    batches: an iterable of keyword dicts (cycled), or a function epoch -> iterable.
    loss_fn(model, batch) defaults to the model's own `out.loss` (batches carry labels).
    """
    prepared = isinstance(model, fx.GraphModule) and hasattr(model, MASK_CONTAINER)
    optimizer = torch.optim.AdamW(optimizer_groups(model, lr, mask_lr, freeze_embeddings=freeze_embeddings))
    scheduler = linear_schedule(optimizer, steps, int(warmup * steps))
    log = TrainLog()
    model.train()
    data = _cycle(batches)
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        batch = next(data)
        task = loss_fn(model, batch) if loss_fn else model(**batch).loss
        loss = task
        info = {"loss": f"{float(task):.4f}"}
        if prepared:
            pen = penalty(model)
            loss = task + pen.loss
            info.update(rho=f"{pen.rho:.3f}", lam=f"{pen.lam:.0f}")
            log.rho.append(pen.rho)
            log.lam.append(pen.lam)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        log.steps.append(step)
        log.loss.append(float(task))
        bar.set_postfix(info, refresh=False)
    model.eval()
    return log


@torch.no_grad()
def accuracy(model: Callable, batches: Iterable[dict]) -> float:
    """Share of correct argmax predictions; batches carry `labels`."""
    correct = total = 0
    for batch in batches:
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs)
        logits = logits.logits if hasattr(logits, "logits") else logits
        correct += int((torch.as_tensor(logits).argmax(-1) == labels).sum())
        total += len(labels)
    return correct / max(total, 1)
