"""Training toward the target: regulariser for unstructured / block / hybrid masks, the hold, two steps."""

import inspect
import math

import pytest
import torch

import mlprune_fx as mp
from mlprune_fx.core.leap import soft_remaining
from mlprune_fx.core.pruning_state import mask_modules
from mlprune_fx.passes.drop_inputs import drop_outputs
from mlprune_fx.training import ThresholdHold, default_mask_lr, hard_remaining, train, two_step_prune
from mlprune_fx.training.hold import scaled_ratios
from mlprune_fx.training.optimizer import schedule_factor

from conftest import example_inputs, prepare_tiny, randomize_masks, tiny_model

# one layer of the tiny BERT: Q, K, V, O are 64x64, FC1 128x64, FC2 64x128
ATT, FFN = 64 * 64, 128 * 64
TOTAL = 4 * ATT + 2 * FFN
FC1 = "intermediate_dense"


def _batch(seed=1, batch=4):
    ex = example_inputs(batch=batch, seq=10, seed=seed)
    ex["labels"] = torch.arange(batch) % 2
    return ex


def _prepared(granularity, target=0.2, layers=1, **kw):
    cfg = mp.PruningConfig(target=target, granularity=granularity, block_size=16, **kw)
    return prepare_tiny("bert", config=cfg, inputs=_batch(), layers=layers)


def _set(prepared, ratio_of):
    """sigmoid(T) of each mask := ratio_of(key)."""
    with torch.no_grad():
        for key, mask in mask_modules(prepared).items():
            r = ratio_of(key)
            mask.threshold.fill_(math.log(r / (1 - r)))


def _lam(rho, r):
    R = (rho - r) ** 2
    return R, (10.0 if R < 3e-4 else max(20000 * R / (1 - r) ** 2, 50.0))


@pytest.mark.parametrize("granularity, suffix", [(("unstructured",), "__elements"), (("block",), "__blocks")])
def test_regulariser_value_and_gradient_for_one_mask_per_matrix(granularity, suffix):
    prepared = _prepared(granularity)
    assert all(k.endswith(suffix) for k in mask_modules(prepared))
    _set(prepared, lambda k: 0.25 if FC1 in k or "output_dense" in k and "attention" not in k else 0.5)
    rho = (4 * ATT * 0.5 + 2 * FFN * 0.25) / TOTAL  # 0.375
    assert float(soft_remaining(prepared).detach()) == pytest.approx(rho, rel=1e-6)
    R, lam = _lam(rho, 0.2)
    pen = mp.penalty(prepared)
    assert pen.rho == pytest.approx(rho, rel=1e-6) and pen.lam == pytest.approx(lam, rel=1e-5)
    pen.loss.backward()
    fc1 = next(m for k, m in mask_modules(prepared).items() if FC1 in k)
    # d(lam R)/dT = lam * 2 (rho - r) * numel(FC1) / total * sigmoid'(T), lam held fixed
    assert float(fc1.threshold.grad) == pytest.approx(lam * 2 * (rho - 0.2) * FFN / TOTAL * 0.25 * 0.75, rel=1e-4)


def test_regulariser_value_and_gradient_for_hybrid_rows_and_blocks():
    prepared = _prepared(("row", "block"))
    keys = list(mask_modules(prepared))
    assert sum(k.endswith("__rows") for k in keys) == 3 and sum(k.endswith("__blocks") for k in keys) == 6
    _set(prepared, lambda k: 0.5)
    # Q, K, V: blocks; O: rows * blocks; FC1: rows * blocks; FC2: FC1 rows * own rows * blocks
    rho = (3 * ATT * 0.5 + ATT * 0.25 + FFN * 0.25 + FFN * 0.125) / TOTAL
    assert float(soft_remaining(prepared).detach()) == pytest.approx(rho, rel=1e-6)
    R, lam = _lam(rho, 0.2)
    mp.penalty(prepared).loss.backward()
    rows = mask_modules(prepared)[next(k for k in keys if FC1 in k and k.endswith("__rows"))]
    drho = (FFN * 0.5 + FFN * 0.25) / TOTAL * 0.25  # FC1 (x its blocks) and FC2 (x its rows and blocks)
    assert float(rows.threshold.grad) == pytest.approx(lam * 2 * (rho - 0.2) * drho, rel=1e-4)


def test_keep_ratio_floor_counts_the_mask_units():
    prepared = _prepared(("block",))
    _set(prepared, lambda k: 1e-6)
    # every block mask floors at one block: 1/16 for 4x4-block matrices, 1/32 for the FFN ones
    assert float(soft_remaining(prepared).detach()) == pytest.approx((4 * ATT / 16 + 2 * FFN / 32) / TOTAL, rel=1e-5)


@pytest.mark.parametrize("granularity", [("unstructured",), ("row", "block"), ("head", "row", "unstructured")])
def test_training_with_fine_and_hybrid_masks_drives_rho_down(granularity):
    prepared = _prepared(granularity, target=0.4, layers=2, initial_threshold=2.0)
    log = train(prepared, [_batch(s) for s in range(3)], 8, mask_lr=0.5, warmup=0.0, descent=None, progress=False)
    assert log.rho[-1] < log.rho[0] and log.lam[0] >= 50
    assert all(math.isfinite(x) for x in log.loss)
    assert hard_remaining(prepared) < 1.0
    pen = mp.penalty(prepared)  # the penalty is zero below the target and never negative
    assert pen.distance == pytest.approx(max(pen.rho - 0.4, 0.0) ** 2, rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("granularity", [("head", "row"), ("block",), ("unstructured",), ("row", "block"), ("head", "row", "block", "unstructured")])
def test_hard_remaining_matches_the_report(granularity):
    for prune_rows in (True, False):
        prepared = _prepared(granularity, layers=2, prune_output_rows=prune_rows)
        for seed in range(2):
            randomize_masks(prepared, seed=seed)
            assert hard_remaining(prepared) == pytest.approx(mp.sparsity_report(prepared).remaining, abs=1e-12)


@pytest.mark.parametrize("granularity", [("head", "row"), ("unstructured",), ("row", "block")])
def test_hold_calibrates_to_the_nearest_hard_ratio_and_keeps_the_allocation(granularity):
    prepared = _prepared(granularity, target=0.3, layers=2)
    randomize_masks(prepared, seed=3, keep=(0.4, 0.9))
    before = {k: float(torch.sigmoid(m.threshold.detach())) for k, m in mask_modules(prepared).items()}
    hold = ThresholdHold(prepared)
    reached = hold.calibrate()
    assert reached == pytest.approx(hard_remaining(prepared))
    step = 0.05 if "head" in granularity else 0.02  # the coarsest unit moves the ratio by about this much
    assert abs(reached - 0.3) < step and hold.adjust < 0
    after = {k: float(torch.sigmoid(m.threshold.detach())) for k, m in mask_modules(prepared).items()}
    # every mask keeps the same share of what it kept: the allocation survives
    assert {k: after[k] / before[k] for k in before} == pytest.approx({k: 1 + hold.adjust for k in before}, rel=1e-5)


def test_hold_restores_pruned_units_when_the_regulariser_went_below():
    prepared = _prepared(("unstructured",), target=0.6)
    randomize_masks(prepared, seed=4, keep=(0.2, 0.4))
    before = {k: float(torch.sigmoid(m.threshold.detach())) for k, m in mask_modules(prepared).items()}
    hold = ThresholdHold(prepared)
    assert hold.calibrate() == pytest.approx(0.6, abs=1e-3) and hold.adjust > 0
    after = {k: float(torch.sigmoid(m.threshold.detach())) for k, m in mask_modules(prepared).items()}
    assert {k: (1 - after[k]) / (1 - before[k]) for k in before} == pytest.approx({k: 1 - hold.adjust for k in before}, rel=1e-5)
    assert scaled_ratios(torch.tensor([0.2, 1.0]), -0.5).tolist() == pytest.approx([0.1, 0.5])


def test_held_thresholds_stay_put_while_scores_keep_learning():
    prepared = _prepared(("head", "row"), target=0.5, layers=2)
    log = train(prepared, [_batch(s) for s in range(3)], 10, mask_lr=0.5, descent=0.4, progress=False)
    assert log.hold_from == 4 and log.adjust is not None
    held = [r for s, r in zip(log.remaining_steps, log.remaining) if s >= log.hold_from]
    assert len(set(held)) == 1 and abs(held[0] - 0.5) < 0.05
    assert len(set(log.rho[log.hold_from :])) == 1


@pytest.mark.parametrize("hold_masks", [False, True])
def test_hold_masks_fixes_the_kept_units_from_the_hold_on(hold_masks):
    prepared = _prepared(("head", "row"), target=0.5, layers=2)
    seen = {}

    def batches():  # batch 4 is drawn after step 3, where the hold engages
        for step in range(10):
            if step == 4:
                masks = mask_modules(prepared).items()
                seen.update({k: (m.scores.detach().clone(), m().detach().clone()) for k, m in masks})
            yield _batch(step % 3)

    log = train(prepared, batches(), 10, mask_lr=0.5, descent=0.4, hold_masks=hold_masks, progress=False)
    assert log.hold_from == 4 and seen
    masks = mask_modules(prepared)
    moved = [k for k, (scores, _) in seen.items() if not torch.equal(masks[k].scores.detach(), scores)]
    if hold_masks:
        assert not moved and log.hold_churn == 0
        assert all(torch.equal(masks[k]().detach(), mask) for k, (_, mask) in seen.items())
    else:
        assert moved and log.hold_churn is not None  # scores keep learning under held thresholds


def test_hold_churn_counts_the_units_that_left_the_masks():
    prepared = _prepared(("head", "row"), target=0.5)
    hold = ThresholdHold(prepared)
    assert hold.churn() is None
    hold.engage()
    kept = sum(len(units) for units in hold.kept_at_hold.values())
    mask = next(m for m in mask_modules(prepared).values() if 0 < int(m().sum()) < m.numel)
    with torch.no_grad():  # swap one kept unit for one pruned one
        on, off = mask().flatten().nonzero()[0], (mask().flatten() == 0).nonzero()[0]
        flat = mask.scores.view(-1)
        flat[on], flat[off] = flat[off] - 1.0, flat[on] + 1.0
    assert hold.churn() == pytest.approx(1 / kept)
    hold.release()


def test_default_mask_lr_covers_the_distance_by_mid_descent():
    prepared = _prepared(("head", "row"), target=0.2)
    steps, warmup, descent = 200, 0.1, 0.5
    lr = default_mask_lr(prepared, steps, warmup, descent)
    area = sum(schedule_factor(s, steps, int(warmup * steps)) for s in range(int(0.5 * descent * steps)))
    assert lr * area == pytest.approx(10.0 - math.log(0.2 / 0.8), rel=1e-6)
    assert default_mask_lr(prepared, 2 * steps, warmup, descent) == pytest.approx(lr / 2, rel=0.02)


def _data():
    return [_batch(s, batch=6) for s in range(4)]


@pytest.mark.parametrize("second", ["block", "unstructured"])
def test_two_step_pipeline_reaches_about_r1_times_r2(second):
    model = tiny_model("bert", "eager")
    res = two_step_prune(model, _data(), 8, 8, r1=0.5, r2=0.4, second=second, block_size=16, progress=False,
                         pruning={"initial_threshold": 2.0}, mask_lr=0.5)
    assert res.reports[0].remaining == pytest.approx(0.5, abs=0.05)  # step 1: heads of 16 x 64 are coarse
    assert res.reports[1].remaining == pytest.approx(0.4, abs=0.02)
    first, second_report = res.reports
    # step 2 prunes what step 1 kept (rounded up to whole blocks); overall is over the dense count
    assert res.remaining == pytest.approx(second_report.kept / first.total)
    if second == "block":
        assert second_report.total >= first.kept
    else:
        assert second_report.total == first.kept
    assert {"hidden", "attention"} <= set(res.logs[0].kd[-1]) and {"hidden", "attention"} <= set(res.logs[1].kd[-1])
    if second == "block":  # step 1 rounded every kept row count to the block size
        for name, p in res.step1.named_parameters():
            if p.dim() == 2 and "encoder" in name:
                assert p.shape[0] % 16 == 0 and p.shape[1] % 16 == 0, name
    batch = {k: v for k, v in _data()[0].items() if k != "labels"}
    out = res.model(**batch)
    assert list(out.keys()) == ["logits"] and out.logits.shape == (6, 2)
    assert not model.config.output_hidden_states  # the user's model is left as it was


def test_pipeline_rejects_a_second_step_it_cannot_do():
    with pytest.raises(ValueError, match="second"):
        two_step_prune(tiny_model("bert"), _data(), 1, 1, second="head")


def test_drop_outputs_removes_fields_and_keeps_the_rest():
    model = tiny_model("bert")
    model.config.output_hidden_states = True
    converted = mp.convert(mp.prepare(model, mp.PruningConfig(), _batch()))
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    expected = converted(**batch).logits
    drop_outputs(converted, ["hidden_states"])
    out = converted(**batch)
    assert list(out.keys()) == ["logits"] and torch.equal(out.logits, expected)


def test_train_logs_the_gradient_norm_before_clipping():
    prepared = _prepared(("head", "row"), target=0.3, layers=1)
    log = train(prepared, [_batch(0)], 3, mask_lr=0.5, descent=None, progress=False)
    assert len(log.grad_norm) == 3 and all(x > 1.0 and math.isfinite(x) for x in log.grad_norm)


def test_train_has_no_options_that_lost_their_benchmark():
    params = inspect.signature(train).parameters
    assert not {"separate_clipping", "target_schedule", "threshold_betas"} & set(params)


def test_running_accuracy_counts_the_last_batches_and_skips_what_is_not_classification():
    from mlprune_fx.training import RunningAccuracy

    acc = RunningAccuracy(window=2)
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    assert acc.add(logits, torch.tensor([0, 1, 1, 1])) and acc.last == 0.75
    assert acc.add(logits[:2], torch.tensor([1, -100])) and acc.last == 0.0  # one counted label, wrong
    assert acc.value == pytest.approx(3 / 5)
    assert acc.add(logits[:2], torch.tensor([0, 1])) and acc.value == pytest.approx(2 / 3)  # the first batch left
    assert not acc.add(logits, torch.tensor([0.5, 1.0, 0.0, 2.0]))  # regression targets
    assert not acc.add(None, torch.tensor([0, 1])) and not acc.add(logits, None)


def test_train_logs_the_training_accuracy_of_each_batch():
    model = tiny_model("bert", layers=1)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.config.attention_probs_dropout_prob = 0.0
    model.eval()
    batch = _batch(0)
    with torch.no_grad():
        first = float((model(**batch).logits.argmax(-1) == batch["labels"]).float().mean())
    prepared = _prepared(("head", "row"), target=0.5)
    log = train(prepared, [batch], 3, mask_lr=0.5, descent=None, progress=False)
    assert len(log.accuracy) == 3 and all(a in (0.0, 0.25, 0.5, 0.75, 1.0) for a in log.accuracy)
    plain = train(model, [batch], 1, lr=0.0, progress=False)
    assert plain.accuracy == [first]  # lr 0 and no dropout: the batch's accuracy before the step
    assert train(model, [batch], 2, loss_fn=lambda m, b: m(**b).loss, progress=False).accuracy == []
