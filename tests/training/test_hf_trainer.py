"""LeapTrainer: Hugging Face Trainer with the LEAP penalty, distillation, mask lr and the hold."""

import pytest
import torch

import mlprune_fx as mp
from mlprune_fx.core.pruning_state import mask_modules
from mlprune_fx.training.distill import DistillConfig, enable_distillation_outputs

from conftest import example_inputs, tiny_model

pytest.importorskip("accelerate")
from transformers import TrainingArguments

from mlprune_fx.training import LeapTrainer


class _Examples(torch.utils.data.Dataset):
    def __init__(self, n=32, seq=12):
        batch = example_inputs(batch=n, seq=seq, seed=3)
        batch["labels"] = (batch["input_ids"][:, 1] % 2).long()
        self.rows = [{k: v[i] for k, v in batch.items()} for i in range(n)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _args(tmp_path, steps, **kw):
    return TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=8, learning_rate=1e-4,
        warmup_steps=1, logging_steps=2, save_strategy="no", report_to=[], use_cpu=True,
        remove_unused_columns=False, disable_tqdm=True, seed=0, **kw,
    )


def _prepared(target, attn="sdpa", kd=False):
    model = tiny_model("bert", attn)
    if kd:
        enable_distillation_outputs(model)
    ex = example_inputs(batch=4, seq=12)
    ex["labels"] = torch.zeros(4, dtype=torch.long)
    return model, mp.prepare(model, mp.PruningConfig(target=target), ex)


def test_trainer_adds_the_penalty_logs_it_and_holds_the_target(tmp_path):
    _, prepared = _prepared(0.5)
    trainer = LeapTrainer(model=prepared, args=_args(tmp_path, 12), train_dataset=_Examples(), mask_lr=0.5)
    groups = trainer.create_optimizer().param_groups
    scores = {id(m.scores) for m in mask_modules(prepared).values()}
    thresholds = {id(m.threshold) for m in mask_modules(prepared).values()}
    (s_group,) = [g for g in groups if any(id(p) in scores for p in g["params"])]
    (t_group,) = [g for g in groups if any(id(p) in thresholds for p in g["params"])]
    assert s_group["lr"] == t_group["lr"] == 0.5 and s_group["weight_decay"] == t_group["weight_decay"] == 0
    assert t_group["betas"][0] == 0.0 and s_group["betas"][0] > 0  # no momentum on thresholds only
    trainer.train()
    logs = [h for h in trainer.state.log_history if "remaining" in h]
    assert logs and all({"rho", "lambda", "loss"} <= set(h) for h in logs)
    assert logs[0]["lambda"] >= 50  # far from the target: the adaptive coefficient is large
    # hold from step 6: the hard ratio is calibrated to the one nearest 0.5 and stays there
    assert "hold_adjust" in logs[-1]
    held = [h["remaining"] for h in logs if h["step"] >= 6]
    assert len(set(held)) == 1 and abs(held[0] - 0.5) < 0.05
    assert mp.sparsity_report(prepared).remaining == pytest.approx(held[0])


def test_trainer_hold_masks_keeps_the_scores_from_the_hold_on(tmp_path):
    from transformers import TrainerCallback

    _, prepared = _prepared(0.5)
    seen = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 6:  # the hold engages at the end of step 6: scores after it must not move
                seen.update({k: m.scores.detach().clone() for k, m in mask_modules(prepared).items()})

    trainer = LeapTrainer(model=prepared, args=_args(tmp_path, 12), train_dataset=_Examples(), mask_lr=0.5,
                          hold_masks=True, callbacks=[Snapshot()])
    trainer.train()
    assert seen and all(torch.equal(m.scores.detach(), seen[k]) for k, m in mask_modules(prepared).items())


def test_trainer_distils_from_a_teacher_and_derives_the_mask_lr(tmp_path):
    teacher, prepared = _prepared(0.6, attn="eager", kd=True)
    before = {k: float(m.threshold.detach()) for k, m in mask_modules(prepared).items()}
    trainer = LeapTrainer(model=prepared, args=_args(tmp_path, 6), train_dataset=_Examples(),
                          teacher=teacher, distill=DistillConfig(alpha=0.9), descent=None)
    trainer.train()
    assert trainer.mask_lr > 0.01  # derived: 10 -> logit(0.6) within 3 steps needs a large rate
    logs = [h for h in trainer.state.log_history if "kd_logits" in h]
    assert logs and {"kd_hidden", "kd_attention", "kd_task"} <= set(logs[-1])
    after = {k: float(m.threshold.detach()) for k, m in mask_modules(prepared).items()}
    assert all(after[k] < before[k] for k in before)
    assert "hold_adjust" not in trainer.state.log_history[-2]


def test_trainer_and_train_run_the_same_penalty_step(tmp_path, monkeypatch):
    """Both loops add the penalty with gradients during the descent and only log it once the hold engaged."""
    import mlprune_fx.training.penalty_step as penalty_step
    from mlprune_fx.training import train

    grads = []

    def recording(gm, target=None):
        grads.append(torch.is_grad_enabled())
        return mp.penalty(gm, target)

    monkeypatch.setattr(penalty_step, "penalty", recording)
    _, prepared = _prepared(0.5)
    LeapTrainer(model=prepared, args=_args(tmp_path, 8), train_dataset=_Examples(), mask_lr=0.5, descent=0.5).train()
    assert grads == [True] * 4 + [False] * 4  # the hold begins after step 4
    grads.clear()
    _, prepared = _prepared(0.5)
    rows = _Examples().rows[:8]
    data = [{k: torch.stack([r[k] for r in rows]) for k in rows[0]}]
    train(prepared, data, 8, mask_lr=0.5, descent=0.5, progress=False)
    assert grads == [True] * 4 + [False] * 4


def test_options_that_lost_their_benchmark_are_gone(tmp_path):
    _, prepared = _prepared(0.5)
    for option in ({"separate_clipping": True}, {"target_schedule": "cubic"}):
        with pytest.raises(TypeError, match=next(iter(option))):
            LeapTrainer(model=prepared, args=_args(tmp_path, 2), train_dataset=_Examples(), **option)
