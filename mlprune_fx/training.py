"""A plain training loop for prepared models, for people who do not use Trainer.

Pruning runs in two phases so that the *hard* remaining ratio lands on the target with
nothing but the target set:

1. descent (the first `descent` share of the steps): the LEAP regulariser pulls the
   thresholds down. The mask learning rate is derived from the run length so that
   Adam, which moves a threshold by about its learning rate per step, can carry every
   threshold from where it starts to the target's level in the first half of this
   phase. Thresholds get no momentum, so they brake as the regulariser's gradient
   fades near the target instead of sailing past it.
2. hold: every mask's kept fraction is scaled by one shared factor until the hard
   ratio (what `convert` keeps) is the one closest to the target; then the thresholds
   stop moving while weights and scores keep training: the model recovers at a fixed size.
   With `hold_masks`, the scores stop too: the kept units are fixed from the hold on and
   the weights spend the whole hold adapting to one structure.

The factor keeps the per-matrix allocation the regulariser learnt and corrects only its
level: the regulariser sees sigmoid(T), not the ceil(sigmoid(T) * n) units Top-k keeps,
its coefficient falls to `lambda_small` within sqrt(small_penalty) (1.7 %) of the
target, and thresholds that the task loss pushed far up escape its pull (its gradient
goes through sigmoid'(T)), so on its own it settles above the target. See docs/training.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import fx, nn
from tqdm.auto import tqdm

from .distill import DistillConfig, KDLoss, accepted_arguments
from .leap import attention_work, check_schedule, penalty, scheduled_target
from .masking import expand_blocks, expand_units
from .state import MASK_CONTAINER, mask_modules, pruning_state


THRESHOLD_BETAS = (0.0, 0.999)
DESCENT = 0.5  # share of the steps the regulariser drives the thresholds before the hold


def optimizer_groups(
    model: nn.Module,
    lr: float = 3e-5,
    mask_lr: float = 1e-2,
    weight_decay: float = 0.0,
    freeze_embeddings: bool = False,
    threshold_betas: tuple[float, float] | None = THRESHOLD_BETAS,
) -> list[dict]:
    """AdamW groups: model weights at `lr`; mask scores, and thresholds, at `mask_lr`.

    Thresholds get no momentum (beta1 = 0): the regulariser's gradient vanishes once
    rho is below the target, and momentum would carry them on, about 1 / (1 - beta1)
    steps of `mask_lr` past it; without it, each step shrinks with the gradient, so
    the descent brakes as it arrives. None keeps the optimizer's own betas.
    """
    weights, scores, thresholds = [], [], []
    for name, param in model.named_parameters():
        name = name.removeprefix("module.")
        if freeze_embeddings and "embeddings." in name:
            param.requires_grad_(False)
            continue
        if not param.requires_grad:
            continue
        if not name.startswith(MASK_CONTAINER + "."):
            weights.append(param)
        else:
            (thresholds if name.endswith(".threshold") else scores).append(param)
    groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay}]
    if scores:
        groups.append({"params": scores, "lr": mask_lr, "weight_decay": 0.0})
    if thresholds:
        extra = {"betas": threshold_betas} if threshold_betas is not None else {}
        groups.append({"params": thresholds, "lr": mask_lr, "weight_decay": 0.0, **extra})
    return groups


def schedule_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up to 1, then linear decay to 0 at `steps`."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    return max(0.0, (steps - step) / max(1, steps - warmup))


def linear_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule_factor(step, steps, warmup))


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def is_prepared(model: nn.Module) -> bool:
    model = unwrap(model)
    return isinstance(model, fx.GraphModule) and hasattr(model, MASK_CONTAINER)


def default_mask_lr(prepared: nn.Module, steps: int, warmup: float = 0.1, descent: float = DESCENT) -> float:
    """The mask learning rate that lets thresholds reach the target's level by mid-descent.

    Adam moves a parameter whose gradient keeps its sign by about its learning rate
    per step, and the regulariser's gradient keeps its sign while rho > target. The
    farthest a threshold has to travel is from its value now to logit(target) (a
    single mask per matrix at the target; with several masks per matrix each keeps
    more). Dividing that distance by the learning-rate schedule's area over the
    first half of the descent phase gives the rate; it depends on the run length,
    the target and the starting thresholds, never on tuning.
    """
    prepared = unwrap(prepared)
    target = pruning_state(prepared, "prepared").config.target
    thresholds = [float(m.threshold.detach()) for m in mask_modules(prepared).values()]
    if not thresholds or target >= 1:
        return 1e-2
    distance = max(max(thresholds) - math.log(target / (1 - target)), 1.0)
    warm = int(warmup * steps)
    reach = max(1, int(0.5 * descent * steps))
    area = sum(schedule_factor(s, steps, warm) for s in range(reach))
    return distance / max(area, 1e-9)


def _kept(lm, masks: dict[str, torch.Tensor], block: int) -> torch.Tensor:
    """Weights of one matrix its masks keep, as r^T (E * B) c without building the full mask."""
    out, inp = lm.site.out_features, lm.site.in_features
    r = expand_units(masks[lm.rows.key], lm.rows.unit) if lm.rows else None
    c = expand_units(masks[lm.cols.key], lm.cols.unit) if lm.cols else None
    blocks = masks[lm.blocks.key] if lm.blocks else None
    elements = masks[lm.elements.key] if lm.elements else None
    if elements is None and blocks is None:
        return (r.sum() if r is not None else out) * (c.sum() if c is not None else inp)
    if elements is None:
        rb = r.view(-1, block).sum(1) if r is not None else torch.full((out // block,), float(block))
        cb = c.view(-1, block).sum(1) if c is not None else torch.full((inp // block,), float(block))
        return rb @ blocks.float() @ cb
    full = elements.float() if blocks is None else elements * expand_blocks(blocks, block)
    r = r if r is not None else torch.ones(out)
    c = c if c is not None else torch.ones(inp)
    return r.float() @ full @ c.float()


@torch.no_grad()
def hard_remaining(prepared: nn.Module) -> float:
    """Share of the prunable weights the current hard masks keep (what convert keeps).

    The same figure as `sparsity_report(prepared).remaining`, counted without
    materialising each matrix's mask, so the hold's bisection can call it often.
    """
    return _hard_share(prepared, work=False)


def hard_target_share(prepared: nn.Module) -> float:
    """What the target counts, under the hard masks: `hard_remaining`, or with
    `attention_length` the share of the work, each kept head's attention included."""
    return _hard_share(prepared, work=True)


def _hard_share(prepared: nn.Module, work: bool) -> float:
    prepared = unwrap(prepared)
    state = pruning_state(prepared, "prepared")
    masks = {k: m().detach().float().cpu() for k, m in mask_modules(prepared).items()}
    kept = sum(float(_kept(lm, masks, state.config.block_size)) for lm in state.linears)
    total = sum(lm.site.numel for lm in state.linears)
    for cost, key in attention_work(state) if work else []:
        kept += cost * (float(masks[key].mean()) if key is not None else 1.0)
        total += cost
    return kept / max(total, 1)


ADJUST_WARNING = 0.25  # a hold that moves every mask by more than this is worth a warning


def scaled_ratios(ratios: torch.Tensor, adjust: float) -> torch.Tensor:
    """Every mask's kept fraction moved by one shared amount `adjust` in [-1, 1].

    adjust < 0 removes that share of what each mask keeps (a -> (1 + adjust) a);
    adjust > 0 restores that share of what each mask prunes (1 - a -> (1 - adjust)(1 - a)).
    """
    if adjust <= 0:
        return ratios * (1.0 + adjust)
    return 1.0 - (1.0 - adjust) * (1.0 - ratios)


class ThresholdHold:
    """Calibrate the thresholds to the hard target by one shared factor, then keep them fixed.

    The factor scales every mask's kept (or pruned) fraction alike, so each matrix
    gives up, or gets back, the same share of what the regulariser gave it: the
    allocation survives, only its level changes. (A shared shift in logit space
    would not do that: it moves mid-range thresholds a lot and saturated ones, far
    above or below zero, not at all.) Holding works through the optimizer: a step
    pre-hook drops the thresholds' gradients, and optimizers skip parameters without
    a gradient (no momentum drift), so it works alike under DDP, Accelerate and Trainer.
    freeze_scores: drop the scores' gradients as well, so no unit enters or leaves a
    mask during the hold.
    """

    def __init__(self, prepared: nn.Module, freeze_scores: bool = False) -> None:
        self.prepared = unwrap(prepared)
        masks = mask_modules(self.prepared).values()
        self.thresholds = [m.threshold for m in masks]
        self.held = self.thresholds + ([m.scores for m in masks] if freeze_scores else [])
        self.kept_at_hold: dict[str, list[int]] | None = None
        self.engaged = False
        self.adjust: float | None = None
        self.before: float | None = None
        self.after: float | None = None
        self._handles: list = []

    @torch.no_grad()
    def calibrate(self, target: float | None = None, iterations: int = 50) -> float:
        """Bisect the shared adjustment (see `scaled_ratios`); returns the hard ratio reached."""
        target = pruning_state(self.prepared, "prepared").config.target if target is None else target
        base = torch.sigmoid(torch.stack([t.detach().double().reshape(()) for t in self.thresholds]))

        def ratio_at(adjust: float) -> float:
            ratios = scaled_ratios(base, adjust).clamp(1e-12, 1 - 1e-12)
            for t, value in zip(self.thresholds, torch.logit(ratios)):
                t.fill_(float(value))
            return hard_target_share(self.prepared)

        self.before = ratio_at(0.0)
        lo, hi = -1.0, 1.0  # ratio(lo) < target <= ratio(hi) once bracketed
        r_lo, r_hi = ratio_at(lo), ratio_at(hi)
        if r_lo >= target:
            hi, r_hi = lo, r_lo
        else:
            for _ in range(iterations):
                mid = 0.5 * (lo + hi)
                r = ratio_at(mid)
                if r >= target:
                    hi, r_hi = mid, r
                else:
                    lo, r_lo = mid, r
                if hi - lo < 1e-7:
                    break
        self.adjust = hi if abs(r_hi - target) <= abs(target - r_lo) else lo
        self.after = ratio_at(self.adjust)
        return self.after

    def kept_units(self) -> dict[str, list[int]]:
        """Flat indices of the units each mask keeps now."""
        masks = mask_modules(self.prepared).items()
        return {k: torch.nonzero(m().detach().flatten()).flatten().tolist() for k, m in masks}

    def churn(self) -> float | None:
        """Share of the units kept when the hold began that are no longer kept (None before the hold)."""
        if self.kept_at_hold is None:
            return None
        now = self.kept_units()
        gone = sum(len(set(units) - set(now[k])) for k, units in self.kept_at_hold.items())
        return gone / max(sum(len(units) for units in self.kept_at_hold.values()), 1)

    def engage(self, optimizers: Iterable[torch.optim.Optimizer] = ()) -> float:
        """Calibrate, then stop the thresholds (and scores, with freeze_scores): gradients dropped before each step."""
        reached = self.calibrate()
        self.kept_at_hold = self.kept_units()
        for opt in optimizers:
            inner = getattr(opt, "optimizer", opt)  # accelerate's AcceleratedOptimizer wraps the real one
            self._handles.append(inner.register_step_pre_hook(lambda *_: self.drop_grads()))
        self.engaged = True
        return reached

    def drop_grads(self) -> None:
        if self.engaged:
            for t in self.held:
                t.grad = None

    def release(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.engaged = False


@dataclass
class TrainLog:
    """Per-step loss, soft rho and lambda; hard remaining every `log_every` steps; the hold.

    hold_churn: share of the units kept when the hold began that the trained model no
    longer keeps (scores go on learning under held thresholds; 0 with `hold_masks`).
    grad_norm, threshold_grad_norm: per step (when clipping), the gradient norm of the
    weights and scores, and of the thresholds (prepared models), before clipping.
    accuracy: per step, the accuracy on the training batch (classification; the
    progress bar shows its mean over the last 50 batches).
    """

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    rho: list[float] = field(default_factory=list)
    lam: list[float] = field(default_factory=list)
    remaining_steps: list[int] = field(default_factory=list)
    remaining: list[float] = field(default_factory=list)
    mask_lr: float | None = None
    hold_from: int | None = None
    adjust: float | None = None
    before_hold: float | None = None
    hold_churn: float | None = None
    kd: list[dict[str, float]] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    threshold_grad_norm: list[float] = field(default_factory=list)


class RunningAccuracy:
    """Training accuracy over the last `window` batches, for the progress bar.

    Counts classification logits [..., classes] against integer labels of the leading
    shape, skipping HF's ignore index -100; anything else (regression) is not counted.
    """

    def __init__(self, window: int = 50) -> None:
        self.counts: deque[tuple[int, int]] = deque(maxlen=window)
        self.last = 0.0

    def add(self, logits: torch.Tensor | None, labels: torch.Tensor | None) -> bool:
        if logits is None or labels is None or labels.is_floating_point() or tuple(logits.shape[:-1]) != tuple(labels.shape):
            return False
        valid = labels != -100
        total = int(valid.sum())
        if not total:
            return False
        correct = int(((logits.detach().argmax(-1) == labels) & valid).sum())
        self.counts.append((correct, total))
        self.last = correct / total
        return True

    @property
    def value(self) -> float:
        return sum(c for c, _ in self.counts) / max(sum(t for _, t in self.counts), 1)


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


def describe_adjust(adjust: float) -> str:
    """What a hold adjustment did, in words."""
    if adjust <= 0:
        return f"removed {-adjust:.0%} of every mask's kept units"
    return f"restored {adjust:.0%} of every mask's pruned units"


def hold_step(steps: int, descent: float | None) -> int | None:
    """The step after which thresholds are calibrated and held; None when they never are."""
    if descent is None or descent >= 1:
        return None
    if not 0 < descent < 1:
        raise ValueError(f"descent={descent} must lie in (0, 1], or be None for no hold phase")
    return max(1, round(descent * steps))


def clipping_groups(params: list[nn.Parameter], masks: Iterable[nn.Module]) -> tuple[list, list]:
    """`params` split into (weights and scores, thresholds)."""
    thresholds = {id(m.threshold) for m in masks}
    return [p for p in params if id(p) not in thresholds], [p for p in params if id(p) in thresholds]


def clip_gradients(
    params: list[nn.Parameter], masks: Iterable[nn.Module], clip: float, separate: bool
) -> tuple[float, float]:
    """Clip the gradients to norm `clip`, the thresholds' by their own norm when `separate`.

    Returns the norms before clipping of (weights and scores, thresholds).
    """
    def norm(group):
        grads = [p.grad for p in group if p.grad is not None]
        return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())

    rest, thresholds = clipping_groups(params, masks)
    a, b = norm(rest), norm(thresholds)
    if separate:
        torch.nn.utils.clip_grads_with_norm_(rest, clip, a)
        torch.nn.utils.clip_grads_with_norm_(thresholds, clip, b)
    else:  # clip_grad_norm_ itself, in the same order, so runs made before this option repeat to the bit
        torch.nn.utils.clip_grad_norm_(params, clip)
    return float(a), float(b)


def train(
    model: nn.Module,
    batches: Iterable[dict] | Callable[[int], Iterable[dict]],
    steps: int,
    *,
    lr: float = 3e-5,
    mask_lr: float | None = None,
    warmup: float = 0.1,
    clip: float = 1.0,
    separate_clipping: bool = False,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None,
    freeze_embeddings: bool = False,
    progress: bool = True,
    desc: str = "training",
    teacher: Callable | None = None,
    distill: DistillConfig | None = None,
    descent: float | None = DESCENT,
    hold_masks: bool = False,
    target_schedule: str = "constant",
    weight_decay: float = 0.0,
    threshold_betas: tuple[float, float] | None = THRESHOLD_BETAS,
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
    separate_clipping: clip the thresholds' gradients to `clip` apart from those of the
    weights and scores. Clipped together, the regulariser's gradient on the thresholds,
    large by design, shrinks the weights' steps while the masks descend.
    target_schedule: "constant" pulls toward the final target from the first step;
    "cubic" lowers the target from 1 to it over the descent (`leap.scheduled_target`).
    threshold_betas: Adam betas of the thresholds (default: no momentum).
    model may be wrapped in DistributedDataParallel; every rank calibrates alike.
    checkpoint / save_every: write model, optimizer, scheduler, RNG, log and hold
    state to the `checkpoint` folder every `save_every` steps and at the end;
    resume: continue from that folder (build `model` the same way first). A resumed
    run ends exactly where an uninterrupted one would.
    """
    if steps < 1:
        raise ValueError(f"steps={steps}: train for at least one step")
    inner = unwrap(model)
    prepared = is_prepared(inner)
    if teacher is not None:
        if loss_fn is not None:
            raise ValueError("give either `teacher` (distillation) or `loss_fn`, not both")
        loss_fn = KDLoss(teacher, distill)
    log = TrainLog()
    if prepared and mask_lr is None:
        mask_lr = default_mask_lr(inner, steps, warmup, descent or 1.0)
    log.mask_lr = mask_lr if prepared else None
    groups = optimizer_groups(model, lr, mask_lr or 1e-2, weight_decay, freeze_embeddings, threshold_betas)
    optimizer = torch.optim.AdamW(groups)
    scheduler = linear_schedule(optimizer, steps, int(warmup * steps))
    hold_at = hold_step(steps, descent) if prepared else None
    hold = ThresholdHold(inner, freeze_scores=hold_masks) if hold_at is not None else None
    final_target = pruning_state(inner, "prepared").config.target if prepared else 1.0
    check_schedule(target_schedule)
    every = log_every or max(1, steps // 100)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    masks = list(mask_modules(inner).values()) if prepared else []
    model.train()
    data = _cycle(batches)
    start = 0
    if resume:
        if checkpoint is None:
            raise ValueError("resume=True needs the `checkpoint` folder to resume from")
        start, log = _restore(Path(checkpoint), inner, optimizer, scheduler, hold)
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
            if prepared:
                holding = hold is not None and hold.engaged
                with torch.set_grad_enabled(not holding):
                    pen = penalty(inner, scheduled_target(final_target, step, hold_at or steps, target_schedule))
                if not holding:
                    loss = task + pen.loss
                info.update(rho=f"{pen.rho:.3f}", lam=f"{pen.lam:.0f}")
                log.rho.append(pen.rho)
                log.lam.append(pen.lam)
            loss.backward()
            if hold is not None:
                hold.drop_grads()
            if clip:
                norms = clip_gradients(params, masks, clip, separate_clipping)
                log.grad_norm.append(norms[0])
                if masks:
                    log.threshold_grad_norm.append(norms[1])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            log.steps.append(step)
            log.loss.append(float(task.detach()))
            if isinstance(loss_fn, KDLoss) and loss_fn.last is not None:
                log.kd.append(loss_fn.last.parts())
            if hold is not None and step + 1 == hold_at:
                log.hold_from = step + 1
                hold.engage()
                log.adjust, log.before_hold = hold.adjust, hold.before
                if abs(hold.adjust) > ADJUST_WARNING:
                    warnings.warn(
                        f"the regulariser left the hard ratio at {hold.before:.3f} for a target of "
                        f"{pruning_state(inner).config.target}, so the hold {describe_adjust(hold.adjust)}. "
                        "Train longer so the regulariser gets closer itself (a larger mask_lr gets closer too, "
                        "but did not make pruned models more accurate: docs/training.md)",
                        stacklevel=2,
                    )
            if prepared and (step % every == 0 or step + 1 == steps or step + 1 == hold_at):
                log.remaining_steps.append(step + 1)
                log.remaining.append(hard_remaining(inner))
            bar.set_postfix(info, refresh=False)
            if checkpoint is not None and ((save_every and (step + 1) % save_every == 0) or step + 1 == steps):
                _store(Path(checkpoint), step + 1, inner, optimizer, scheduler, log, hold)
    finally:
        if hold is not None:
            log.hold_churn = hold.churn()
            hold.release()
    model.eval()
    return log


def _store(folder: Path, step: int, model: nn.Module, optimizer, scheduler, log: TrainLog, hold) -> None:
    from .checkpointing import save_training_state
    from .serialization import _dedupe

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(_dedupe(tensors), str(folder / "model.safetensors.tmp"))
    hold_state = {"engaged": hold.engaged, "adjust": hold.adjust, "before": hold.before, "after": hold.after,
                  "kept_at_hold": hold.kept_at_hold} if hold else None
    save_training_state(folder, step=step, optimizer=optimizer, scheduler=scheduler,
                        extra={"log": json.dumps(dataclasses.asdict(log)), "hold": json.dumps(hold_state)})
    (folder / "model.safetensors.tmp").replace(folder / "model.safetensors")


def _restore(folder: Path, model: nn.Module, optimizer, scheduler, hold) -> tuple[int, TrainLog]:
    from .checkpointing import load_training_state
    from .errors import CheckpointError

    weights = folder / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(f"{weights} is missing: nothing to resume from in {folder}")
    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise CheckpointError(f"{weights} is corrupt or truncated ({exc}); start again") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{folder} was saved from another model: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
    step, extra = load_training_state(folder, optimizer=optimizer, scheduler=scheduler)
    log = TrainLog(**json.loads(extra["log"]))
    saved_hold = json.loads(extra["hold"])
    if hold is not None and saved_hold and saved_hold["engaged"]:
        hold.engaged = True
        hold.adjust, hold.before, hold.after = saved_hold["adjust"], saved_hold["before"], saved_hold["after"]
        hold.kept_at_hold = saved_hold.get("kept_at_hold")
    return step, log


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
