"""Distillation loss: hand-computed values on tiny tensors, teacher calls, and a prepared student."""

import math
import warnings

import pytest
import torch

import mlprune_fx as mp
from mlprune_fx.training import train
from mlprune_fx.training.distill import (
    DistillConfig,
    KDLoss,
    attention_mse,
    distillation_loss,
    enable_distillation_outputs,
    hidden_mse,
    logits_kl,
    teacher_outputs,
)

from conftest import example_inputs, tiny_model

S3 = math.sqrt(3.0)
# teacher logits (ln 3, 0) at T = 2 give probabilities (sqrt3, 1) / (1 + sqrt3); the student's (0, 0) give 1/2 each
P = (S3 / (1 + S3), 1 / (1 + S3))
KL = P[0] * math.log(P[0] / 0.5) + P[1] * math.log(P[1] / 0.5)


def _outs():
    student = {
        "logits": torch.zeros(1, 2),
        "hidden_states": (torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2, 3)),
        "attentions": (torch.full((1, 2, 2, 2), 0.5),),
    }
    attn = torch.tensor([1.0, 0.0]).expand(1, 2, 2, 2)
    teacher = {
        "logits": torch.tensor([[math.log(3.0), 0.0]]),
        "hidden_states": tuple(torch.full((1, 2, 3), v) for v in (1.0, 2.0, 3.0)),
        "attentions": (attn,),
    }
    return student, teacher


def test_kl_is_teacher_to_student_times_t_squared():
    s, t = _outs()
    assert float(logits_kl(s["logits"], t["logits"], 2.0)) == pytest.approx(4 * KL, rel=1e-5)
    assert float(logits_kl(t["logits"], t["logits"], 2.0)) == pytest.approx(0.0, abs=1e-7)
    # batchmean: two identical rows give the same value as one
    assert float(logits_kl(s["logits"].repeat(2, 1), t["logits"].repeat(2, 1), 2.0)) == pytest.approx(4 * KL, rel=1e-5)


def test_hidden_mse_sums_layer_outputs_and_skips_the_embeddings_by_default():
    s, t = _outs()
    assert float(hidden_mse(s["hidden_states"], t["hidden_states"])) == pytest.approx(2.0**2 + 3.0**2)
    assert float(hidden_mse(s["hidden_states"], t["hidden_states"], include_embedding_output=True)) == pytest.approx(14.0)
    with pytest.raises(ValueError, match="same depth"):
        hidden_mse(s["hidden_states"][:2], t["hidden_states"])


def test_attention_mse_and_layers_with_other_head_counts_left_out():
    s, t = _outs()
    assert float(attention_mse(s["attentions"], t["attentions"])) == pytest.approx(0.25)
    fewer_heads = (torch.full((1, 1, 2, 2), 0.5),)
    assert attention_mse(fewer_heads, t["attentions"]) is None


def test_total_loss_weighs_every_term():
    s, t = _outs()
    labels = torch.tensor([0])
    ce = math.log(2.0)
    got = distillation_loss(s, t, labels)
    assert float(got.total) == pytest.approx(0.9 * (4 * KL + 13.0 + 0.25) + 0.1 * ce, rel=1e-5)
    assert got.parts() == pytest.approx({"task": ce, "logits": 4 * KL, "hidden": 13.0, "attention": 0.25}, rel=1e-5)
    cfg = DistillConfig(alpha=0.5, temperature=1.0, logits_weight=0.5, hidden_weight=2.0, attention_weight=0.0)
    kl1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # T = 1: teacher (3/4, 1/4)
    got = distillation_loss(s, t, labels, cfg)
    assert got.attention is None
    assert float(got.total) == pytest.approx(0.5 * (0.5 * kl1 + 2 * 13.0) + 0.5 * ce, rel=1e-5)
    # a student loss, when present, is the task term
    got = distillation_loss({**s, "loss": torch.tensor(7.0)}, t, None, DistillConfig(alpha=0.0))
    assert float(got.total) == pytest.approx(7.0)


def test_missing_parts_are_left_out_and_bad_configs_rejected():
    s, t = _outs()
    got = distillation_loss({"logits": s["logits"]}, t, torch.tensor([1]))
    assert got.hidden is None and got.attention is None
    with pytest.raises(ValueError, match="task loss"):
        distillation_loss(s, t, None)
    for bad in (dict(alpha=1.5), dict(temperature=0), dict(hidden_weight=-1)):
        with pytest.raises(ValueError):
            DistillConfig(**bad)


def _batch(seed=1):
    ex = example_inputs(batch=4, seq=10, seed=seed)
    ex["labels"] = torch.tensor([0, 1, 1, 0])
    return ex


def test_prepared_student_returns_what_the_teacher_returns():
    """A prepared copy with every unit kept distils to zero from its own source model."""
    model = enable_distillation_outputs(tiny_model("bert", "eager"))
    assert model.config.output_hidden_states and model.config.output_attentions
    prepared = mp.prepare(model, mp.PruningConfig(), _batch()).eval()
    batch = _batch(seed=2)
    out = prepared(**batch)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    teacher = tiny_model("bert", "eager")  # same seed, same weights, no output flags on its config
    got = distillation_loss(out, teacher_outputs(teacher, batch), batch["labels"], DistillConfig(alpha=1.0))
    assert got.hidden is not None and got.attention is not None
    assert float(got.total.detach()) == pytest.approx(0.0, abs=1e-6)


def test_sdpa_gives_hidden_states_but_no_attention_maps():
    model = enable_distillation_outputs(tiny_model("bert", "sdpa"))
    assert model.config.output_hidden_states and not model.config.output_attentions
    out = mp.prepare(model, mp.PruningConfig(), _batch())(**_batch())
    assert len(out.hidden_states) == 3 and out.attentions is None


def test_teacher_gets_labels_only_when_it_requires_them():
    converted = mp.convert(mp.prepare(tiny_model("bert"), mp.PruningConfig(), _batch()), inference=False)
    out = teacher_outputs(converted, _batch())  # its forward requires labels
    assert out.loss is not None
    seen = {}

    def plain(input_ids, attention_mask):
        seen.update(ids=input_ids)
        return {"logits": torch.zeros(len(input_ids), 2)}

    teacher_outputs(plain, _batch())
    assert "ids" in seen
    hf = teacher_outputs(tiny_model("bert"), _batch())
    assert hf.loss is None and len(hf.hidden_states) == 3


def test_train_with_a_teacher_logs_every_term_and_warns_when_hidden_states_are_missing():
    teacher = tiny_model("bert", "eager")
    student = enable_distillation_outputs(tiny_model("bert", "eager", seed=1))
    prepared = mp.prepare(student, mp.PruningConfig(target=0.7), _batch())
    log = train(prepared, [_batch(s) for s in range(3)], 4, teacher=teacher, progress=False, descent=None, mask_lr=0.1)
    assert {"task", "logits", "hidden", "attention"} <= set(log.kd[-1])
    assert len(log.accuracy) == 4
    assert all(math.isfinite(v) for v in log.loss)
    plain = mp.prepare(tiny_model("bert"), mp.PruningConfig(), _batch())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        KDLoss(teacher)(plain, _batch())
    assert any("enable_distillation_outputs" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="not both"):
        train(plain, [_batch()], 1, teacher=teacher, loss_fn=lambda m, b: m(**b).loss, progress=False)
