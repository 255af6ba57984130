"""Knowledge distillation while pruning: the student learns the teacher's logits, hidden states and attention.

loss = alpha * [KL(softmax(t/T) || softmax(s/T)) * T^2 + sum_l MSE(h_s[l], h_t[l])
                + sum_l MSE(A_s[l], A_t[l])] + (1 - alpha) * task loss

Hidden states and attention probabilities come from Hugging Face's own
`output_hidden_states` / `output_attentions`. A prepared model returns what its
captured graph returned, so those flags must be set on the model's config *before*
`prepare` (`enable_distillation_outputs` does it); torch.export captures the extra
outputs and `convert` keeps them. Attention probabilities exist only with eager
attention: HF refuses `output_attentions` under sdpa, so that term is then absent.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError


@dataclass(frozen=True)
class DistillConfig:
    """Weights of the distillation loss (MLPruning's defaults: alpha 0.9, T 2, every term weight 1).

    include_embedding_output: also match hidden_states[0], the embedding output;
        by default only the outputs of the layers are matched.
    """

    alpha: float = 0.9
    temperature: float = 2.0
    logits_weight: float = 1.0
    hidden_weight: float = 1.0
    attention_weight: float = 1.0
    include_embedding_output: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha={self.alpha} must lie in [0, 1]: it weighs distillation against the task loss")
        if self.temperature <= 0:
            raise ConfigError(f"temperature={self.temperature} must be > 0 (MLPruning uses 2)")
        for name in ("logits_weight", "hidden_weight", "attention_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")

    @property
    def wants_hidden(self) -> bool:
        return self.alpha > 0 and self.hidden_weight > 0

    @property
    def wants_attentions(self) -> bool:
        return self.alpha > 0 and self.attention_weight > 0


@dataclass(frozen=True)
class DistillLoss:
    """The total loss and its parts; a part is None when the outputs to compute it were missing."""

    total: torch.Tensor
    task: torch.Tensor | None
    logits: torch.Tensor | None
    hidden: torch.Tensor | None
    attention: torch.Tensor | None

    def parts(self) -> dict[str, float]:
        names = ("task", "logits", "hidden", "attention")
        return {n: float(getattr(self, n).detach()) for n in names if getattr(self, n) is not None}


def _field(out, name: str):
    if isinstance(out, Mapping):
        return out.get(name)
    return getattr(out, name, None)


def logits_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) * T^2, averaged over the examples.

    T^2 keeps the gradient's scale independent of T (Hinton et al.).
    """
    if student.shape != teacher.shape:
        raise ConfigError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
    if student.shape[-1] < 2:
        raise ConfigError("logit distillation needs at least two classes; for regression, set logits_weight=0")
    s = F.log_softmax(student.float() / temperature, dim=-1).reshape(-1, student.shape[-1])
    t = F.log_softmax(teacher.float() / temperature, dim=-1).reshape(-1, teacher.shape[-1])
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature**2


def _check_layers(student: Sequence, teacher: Sequence, what: str, weight: str) -> None:
    if len(student) != len(teacher):
        raise ConfigError(
            f"the student returns {len(student)} {what} and the teacher {len(teacher)}: layer-wise "
            f"distillation needs the same depth; use DistillConfig({weight}=0) with a teacher of another depth"
        )


def hidden_mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], include_embedding_output: bool = False) -> torch.Tensor:
    """Sum over layers of the mean squared error between hidden states (HF's tuple, embeddings first)."""
    _check_layers(student, teacher, "hidden states", "hidden_weight")
    start = 0 if include_embedding_output else 1
    pairs = list(zip(student[start:], teacher[start:]))
    return sum((F.mse_loss(s.float(), t.float()) for s, t in pairs), torch.zeros((), device=student[0].device))


def attention_mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """Sum over layers of the MSE between attention probabilities [B, heads, S, S].

    A layer whose head count differs (a compacted student against a teacher with
    all heads) has no head-to-head correspondence and is left out; None when no
    layer is comparable.
    """
    _check_layers(student, teacher, "attention maps", "attention_weight")
    terms = [F.mse_loss(s.float(), t.float()) for s, t in zip(student, teacher) if s is not None and t is not None and s.shape == t.shape]
    return torch.stack(terms).sum() if terms else None


def distillation_loss(
    student_out,
    teacher_out,
    labels: torch.Tensor | None = None,
    config: DistillConfig | None = None,
) -> DistillLoss:
    """alpha * (KL * T^2 + hidden MSE + attention MSE) + (1 - alpha) * task loss.

    The task loss is the student's own `loss` when it returns one, else the
    cross-entropy of its logits against `labels`. Hidden and attention terms are
    used where both outputs carry them (see the module docstring).
    """
    cfg = config or DistillConfig()
    s_logits, t_logits = _field(student_out, "logits"), _field(teacher_out, "logits")
    if s_logits is None or t_logits is None:
        raise ConfigError("distillation needs `logits` in the outputs of both the student and the teacher")
    task = _field(student_out, "loss")
    if task is None and labels is not None:
        task = F.cross_entropy(s_logits.reshape(-1, s_logits.shape[-1]).float(), labels.reshape(-1))
    logits = logits_kl(s_logits, t_logits.detach(), cfg.temperature) if cfg.logits_weight else None
    hidden = attention = None
    s_hidden, t_hidden = _field(student_out, "hidden_states"), _field(teacher_out, "hidden_states")
    if cfg.wants_hidden and s_hidden and t_hidden:
        hidden = hidden_mse(s_hidden, [t.detach() for t in t_hidden], cfg.include_embedding_output)
    s_att, t_att = _field(student_out, "attentions"), _field(teacher_out, "attentions")
    if cfg.wants_attentions and s_att and t_att:
        attention = attention_mse(s_att, [t.detach() if t is not None else None for t in t_att])
    kd = torch.zeros((), device=s_logits.device)
    for weight, term in ((cfg.logits_weight, logits), (cfg.hidden_weight, hidden), (cfg.attention_weight, attention)):
        if term is not None:
            kd = kd + weight * term
    if task is None and cfg.alpha < 1:
        raise ConfigError("no task loss: pass `labels` (or a student that returns `loss`), or set alpha=1")
    total = cfg.alpha * kd + ((1 - cfg.alpha) * task if task is not None and cfg.alpha < 1 else 0.0)
    return DistillLoss(total, task, logits, hidden, attention)


def enable_distillation_outputs(model: nn.Module, attentions: bool = True) -> nn.Module:
    """Make an HF model return hidden states (and attention maps under eager attention), in place.

    Call it before `prepare`, so the captured graph returns them too.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise ConfigError(f"{type(model).__name__} has no Hugging Face `config`; return hidden states yourself")
    config.output_hidden_states = True
    if attentions and getattr(config, "_attn_implementation", None) == "eager":
        config.output_attentions = True
    return model


def accepted_arguments(fn: Callable) -> tuple[set[str] | None, set[str]]:
    """(names the callable accepts, or None for **kwargs; names it requires)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None, set()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None, set()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    required = {p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, required


@torch.no_grad()
def teacher_outputs(teacher: Callable, batch: Mapping[str, torch.Tensor], hidden: bool = True, attentions: bool = True):
    """Run the teacher on a batch, in eval mode and without gradients.

    An HF model is asked for hidden states (and attentions under eager attention);
    a captured model (GraphModule) returns what it was captured with. `labels` go
    only to a teacher that requires them.
    """
    forward = teacher.forward if isinstance(teacher, nn.Module) else teacher
    names, required = accepted_arguments(forward)
    inputs = {k: v for k, v in batch.items() if (k != "labels" or "labels" in required) and (names is None or k in names)}
    config = getattr(teacher, "config", None)
    if config is not None:
        takes = lambda flag: names is None or flag in names  # noqa: E731  (HF models take flags via **kwargs)
        if hidden and takes("output_hidden_states"):
            inputs["output_hidden_states"] = True
        if attentions and takes("output_attentions") and getattr(config, "_attn_implementation", None) == "eager":
            inputs["output_attentions"] = True
    was_training = getattr(teacher, "training", False)
    if was_training:
        teacher.eval()
    try:
        return teacher(**inputs)
    finally:
        if was_training:
            teacher.train()


class KDLoss:
    """loss_fn(model, batch) for `training.train`: distil `teacher` into the model being trained."""

    def __init__(self, teacher: Callable, config: DistillConfig | None = None) -> None:
        self.teacher = teacher
        self.config = config or DistillConfig()
        self.last: DistillLoss | None = None
        self.student_logits: torch.Tensor | None = None  # of the last batch, for training accuracy
        self._warned = False

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.config
        t_out = teacher_outputs(self.teacher, batch, cfg.wants_hidden, cfg.wants_attentions)
        s_out = model(**batch)
        self.last = distillation_loss(s_out, t_out, batch.get("labels"), cfg)
        self.student_logits = _field(s_out, "logits")
        if cfg.wants_hidden and self.last.hidden is None and not self._warned:
            self._warned = True
            warnings.warn(
                "distillation runs on logits only: the student or the teacher returns no hidden_states. "
                "Call mlprune_fx.training.enable_distillation_outputs(model) before prepare(), "
                "or set DistillConfig(hidden_weight=0) to silence this",
                stacklevel=2,
            )
        return self.last.total
