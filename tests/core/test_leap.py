import math

import pytest
import torch

import mlprune_fx as mp
from mlprune_fx.core.leap import head_cost, soft_remaining
from mlprune_fx.core.pruning_state import mask_modules
from mlprune_fx.training import hard_remaining, hard_target_share

from conftest import example_inputs, prepare_tiny, tiny_model


def _set(prepared, ratios: dict[str, float]):
    """Set sigmoid(T) of every mask whose key ends with a given suffix."""
    with torch.no_grad():
        for key, mask in mask_modules(prepared).items():
            for suffix, r in ratios.items():
                if key.endswith(suffix):
                    mask.threshold.fill_(math.log(r / (1 - r)))


def test_rho_is_mlprunings_formula_with_real_matrix_sizes():
    # hidden 64, intermediate 128: Q, K, V, O are 1 unit (64x64) each, FC1 and FC2 2 units
    prepared = prepare_tiny("bert", layers=2)
    a, o, f1, f2 = 0.5, 0.75, 0.25, 0.6
    _set(prepared, {"attention__heads": a, "attention_output_dense__rows": o, "intermediate_dense__rows": f1, "output_dense__rows": f2})
    # "output_dense__rows" also matches O's key; set O again after
    _set(prepared, {"attention_output_dense__rows": o})
    expected = (3 * a + a * o + 2 * f1 + 2 * f1 * f2) / 8
    assert float(soft_remaining(prepared).detach()) == pytest.approx(expected, rel=1e-5)


def test_keep_ratios_are_floored_at_one_over_n():
    prepared = prepare_tiny("bert", config=mp.PruningConfig(granularity=("head",)), layers=1)
    _set(prepared, {"__heads": 1e-30})
    # 4 heads: a = 1/4 floor; Q, K, V scale by a, O columns by a: every matrix at 1/4 (FFN not masked)
    expected = (4 * 0.25 + 4) / 8
    assert float(soft_remaining(prepared).detach()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("ratio, target", [(0.9, 0.5), (0.52, 0.5), (0.4, 0.5), (0.95, 0.2)])
def test_penalty_and_adaptive_lambda(ratio, target):
    cfg = mp.PruningConfig(target=target, granularity=("head",))
    prepared = prepare_tiny("bert", config=cfg, layers=1)
    _set(prepared, {"__heads": 0.999999})
    rho0 = float(soft_remaining(prepared).detach())  # attention at ~1, FFN unmasked
    # choose the head ratio so that rho == ratio: rho = (4a + 4) / 8
    a = 2 * ratio - 1 if ratio > 0.5 else 0.3
    _set(prepared, {"__heads": a})
    rho = float(soft_remaining(prepared).detach())
    assert rho0 > rho
    result = mp.penalty(prepared)
    R = max(rho - target, 0.0) ** 2
    lam = 10.0 if R < 3e-4 else max(20000 * R / (1 - target) ** 2, 50.0)
    assert result.distance == pytest.approx(R, rel=1e-4, abs=1e-9)
    assert result.lam == pytest.approx(lam, rel=1e-4)
    assert float(result.loss.detach()) == pytest.approx(lam * R, rel=1e-4, abs=1e-9)


def test_regulariser_gradient_reaches_thresholds_through_the_sigmoid():
    cfg = mp.PruningConfig(target=0.2, granularity=("head",))
    prepared = prepare_tiny("bert", config=cfg, layers=1)
    _set(prepared, {"__heads": 0.8})
    mask = next(iter(mask_modules(prepared).values()))
    loss = mp.regularization(prepared)
    loss.backward()
    rho = (4 * 0.8 + 4) / 8
    R = (rho - 0.2) ** 2
    lam = max(20000 * R / 0.8**2, 50)
    # d(lam * R)/dT = lam * 2 (rho - r) * d rho/d a * sigmoid'(T), with d rho/d a = 4/8 and lam held fixed
    expected = lam * 2 * (rho - 0.2) * 0.5 * 0.8 * 0.2
    assert float(mask.threshold.grad) == pytest.approx(expected, rel=1e-4)
    assert mask.scores.grad is None or float(mask.scores.grad.abs().sum()) == 0


def test_penalty_is_zero_below_target():
    prepared = prepare_tiny("bert", config=mp.PruningConfig(target=0.9), layers=1)
    _set(prepared, {"__rows": 0.3, "__heads": 0.3})
    result = mp.penalty(prepared)
    assert float(result.loss.detach()) == 0 and result.lam == 10.0


def test_report_counts_kept_weights_and_overall_ratio():
    prepared = prepare_tiny("bert", config=mp.PruningConfig(granularity=("head", "row"), prune_output_rows=False), layers=1)
    _set(prepared, {"__heads": 0.5, "__rows": 0.25})
    report = mp.sparsity_report(prepared)
    by_name = {m.weight.split(".")[-3] + "." + m.weight.split(".")[-2]: m for m in report.matrices}
    assert by_name["self.query"].kept == 32 * 64
    assert by_name["output.dense"].kept in (32 * 64, 64 * 32)
    # FFN: FC1 keeps 32 of 128 rows, FC2 32 of 128 columns
    assert report.kept == 4 * 32 * 64 + 2 * 32 * 64
    assert report.remaining == pytest.approx((4 * 32 * 64 + 2 * 32 * 64) / (4 * 64 * 64 + 2 * 128 * 64))
    assert "overall" in str(report)


@pytest.mark.parametrize("bad", [dict(target=0.0), dict(target=1.5), dict(target=-0.1), dict(granularity=("channel",)), dict(granularity=()), dict(block_size=12, granularity=("block",))])
def test_bad_config_is_rejected_with_a_reason(bad):
    with pytest.raises(mp.ConfigError):
        mp.PruningConfig(**bad)


def test_config_must_be_a_pruning_config():
    with pytest.raises(mp.ConfigError, match="PruningConfig"):
        mp.prepare(tiny_model("bert"), {"target": 0.5}, example_inputs())


def test_attention_length_counts_each_heads_attention_as_work():
    # per layer: Q, K, V, O 64x64 = 4096 each, FC1/FC2 128x64 = 8192 each; 4 heads of 16 at length 32
    cfg = mp.PruningConfig(target=0.3, granularity=("head", "row"), prune_output_rows=False, attention_length=32)
    prepared = prepare_tiny("bert", config=cfg, layers=2)
    a, f1 = 0.5, 0.25
    _set(prepared, {"__heads": a, "intermediate_dense__rows": f1})
    attention = 4 * head_cost(16, 32)
    assert attention == 4 * 4 * 32 * 16
    expected = (4096 * 4 * a + 8192 * 2 * f1 + attention * a) / (4096 * 4 + 8192 * 2 + attention)
    assert float(soft_remaining(prepared).detach()) == pytest.approx(expected, rel=1e-5)
    weights_only = prepare_tiny("bert", config=cfg.replace(attention_length=None), layers=2)
    _set(weights_only, {"__heads": a, "intermediate_dense__rows": f1})
    assert float(soft_remaining(weights_only).detach()) == pytest.approx((4096 * 4 * a + 8192 * 2 * f1) / 32768, rel=1e-5)
    # the hard share counts kept heads the same way; the reported remaining weights do not
    assert hard_target_share(prepared) == pytest.approx(expected, rel=1e-5)
    assert hard_remaining(prepared) == pytest.approx(hard_target_share(weights_only), rel=1e-6)


def test_attention_length_pulls_harder_on_heads_than_on_rows():
    def head_and_row_grads(length):
        cfg = mp.PruningConfig(target=0.1, granularity=("head", "row"), prune_output_rows=False, attention_length=length)
        prepared = prepare_tiny("bert", config=cfg, layers=1)
        _set(prepared, {"__heads": 0.5, "__rows": 0.5})
        mp.regularization(prepared).backward()
        grads = {k: float(m.threshold.grad) for k, m in mask_modules(prepared).items()}
        return next(g for k, g in grads.items() if k.endswith("__heads")), next(g for k, g in grads.items() if k.endswith("__rows"))

    heads, rows = head_and_row_grads(None)
    heads_l, rows_l = head_and_row_grads(64)
    # without it a head ratio and an FFN ratio control equal weights (16384 each) here, so equal pulls
    assert heads == pytest.approx(rows, rel=1e-5)
    assert heads_l / rows_l == pytest.approx((16384 + 4 * head_cost(16, 64)) / 16384, rel=1e-5)


def test_hold_calibrates_the_share_of_work_with_attention_length():
    from mlprune_fx.training import ThresholdHold

    cfg = mp.PruningConfig(target=0.3, granularity=("head", "row"), attention_length=64)
    prepared = prepare_tiny("bert", config=cfg, layers=2)
    _set(prepared, {"__heads": 0.7, "__rows": 0.6})
    reached = ThresholdHold(prepared).calibrate()
    assert reached == pytest.approx(hard_target_share(prepared)) and abs(reached - 0.3) < 0.06
    assert hard_remaining(prepared) != pytest.approx(reached, abs=1e-3)


@pytest.mark.parametrize("bad", [0, -128, 12.5, "128", True])
def test_attention_length_must_be_a_positive_whole_number(bad):
    with pytest.raises(mp.ConfigError, match="attention_length"):
        mp.PruningConfig(attention_length=bad)
