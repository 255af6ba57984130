"""LeapTrainer: Hugging Face Trainer with the LEAP penalty, distillation, mask lr and the hold."""

import pytest
import torch

import mlprune_fx as mp
from mlprune_fx.distill import DistillConfig, enable_distillation_outputs
from mlprune_fx.state import mask_modules

from conftest import example_inputs, tiny_model

pytest.importorskip("accelerate")
from transformers import TrainingArguments  # noqa: E402

from mlprune_fx.hf import LeapTrainer  # noqa: E402


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


@pytest.mark.parametrize("separate", [False, True])
def test_trainer_separate_clipping_gives_the_thresholds_their_own_norm(tmp_path, separate):
    _, prepared = _prepared(0.5)
    thresholds = {id(m.threshold) for m in mask_modules(prepared).values()}
    trainer = LeapTrainer(model=prepared, args=_args(tmp_path, 2), train_dataset=_Examples(), mask_lr=0.5,
                          separate_clipping=separate)
    clipped = []
    real_clip = trainer.accelerator.clip_grad_norm_

    def recording(params, max_norm, *args, **kwargs):
        params = list(params)
        clipped.append({id(p) for p in params})
        return real_clip(params, max_norm, *args, **kwargs)

    trainer.accelerator.clip_grad_norm_ = recording
    trainer.train()
    everything = {id(p) for p in prepared.parameters()}
    steps = [ids for ids in clipped if ids]  # Trainer may also measure norms without clipping
    expected = [thresholds, everything - thresholds] if separate else [everything]
    assert steps[: len(expected)] == expected and len(steps) == 2 * len(expected)


def test_trainer_cubic_target_schedule(tmp_path, monkeypatch):
    import mlprune_fx.hf as hf

    _, prepared = _prepared(0.5)
    targets = []

    def recording(gm, target=None):
        targets.append(target)
        return mp.penalty(gm, target)

    monkeypatch.setattr(hf, "penalty", recording)
    trainer = LeapTrainer(model=prepared, args=_args(tmp_path, 8), train_dataset=_Examples(), mask_lr=0.5,
                          descent=0.5, target_schedule="cubic")
    trainer.train()
    assert targets[0] == 1.0 and targets[4:] == [0.5] * 4  # the hold begins after step 4
    assert all(a > b for a, b in zip(targets[:4], targets[1:5]))
    with pytest.raises(ValueError, match="cubic"):
        LeapTrainer(model=prepared, args=_args(tmp_path, 2), train_dataset=_Examples(), target_schedule="steps")
