"""The cost model: its file, the speed-up target it drives, and the latency it predicts from the masks."""

import dataclasses
import json
import math
import warnings

import pytest
import torch

import mlprune_fx as mp
from mlprune_fx.core.kept_weights import kept_share
from mlprune_fx.core.latency import latency_counts, predict_latency
from mlprune_fx.core.leap import soft_remaining
from mlprune_fx.core.pruning_state import mask_modules, pruning_state
from mlprune_fx.training import ThresholdHold

from conftest import prepare_tiny, randomize_masks

MODEL = mp.CostModel(weight_ns=0.002, block_weight_ns=0.003, head_ns=0.001, fixed_ns=0.5, batch=4, seq=32)


def test_a_cost_model_file_round_trips_and_rejects_what_it_is_not(tmp_path):
    path = MODEL.save(tmp_path / "cost.json")
    assert mp.CostModel.load(path) == MODEL
    (tmp_path / "bad.json").write_text(json.dumps({**MODEL.to_json(), "speed": 3}))
    with pytest.raises(mp.CheckpointError, match="unknown fields"):
        mp.CostModel.load(tmp_path / "bad.json")
    with pytest.raises(mp.CheckpointError, match="mlprune calibrate"):
        mp.CostModel.load(tmp_path / "missing.json")
    with pytest.raises(mp.ConfigError, match="head_ns=-1"):
        mp.CostModel(weight_ns=1.0, block_weight_ns=0.0, head_ns=-1, fixed_ns=0.0)


@pytest.mark.parametrize("fields, message", [
    ({"target": 0.3, "speedup": 3}, "both set"),
    ({"speedup": 1.0}, "must be a number > 1"),
    ({"speedup": True}, "must be a number > 1"),
    ({"speedup": 3, "attention_length": 64}, "drop attention_length"),
    ({"speedup": 3, "cost_model": "fast"}, "must be a mlprune_fx.CostModel"),
])
def test_bad_speedup_settings_are_refused(fields, message):
    with pytest.raises(mp.ConfigError, match=message):
        mp.PruningConfig(**fields)


def test_target_or_speedup_and_what_the_regulariser_drives_to():
    assert mp.PruningConfig().target == 0.5 and mp.PruningConfig().share == 0.5
    config = mp.PruningConfig(speedup=4, cost_model=MODEL)
    assert config.target is None and config.share == 0.25
    assert config.replace(target=0.3).speedup is None and config.replace(target=0.3).share == 0.3
    rebuilt = mp.PruningConfig(**dataclasses.asdict(config))  # what save / load do
    assert rebuilt == config


def _speedup_model(speedup=2.0, cost=MODEL, inputs=None, **kw):
    config = mp.PruningConfig(speedup=speedup, cost_model=cost, **kw)
    prepared = prepare_tiny(config=config, inputs=inputs)
    randomize_masks(prepared, seed=5, keep=(0.3, 0.8))
    return prepared


def test_rho_is_predicted_latency_over_dense_under_the_cost_model():
    prepared = _speedup_model()
    state = pruning_state(prepared)
    masks = mask_modules(prepared)
    hidden, layers = 64, 2
    kept = total = MODEL.fixed_ns * hidden * layers
    for lm in state.linears:
        share = math.prod(float(masks[r.key].keep_ratio()) for r in lm.refs())
        kept += MODEL.weight_ns * lm.site.numel * share
        total += MODEL.weight_ns * lm.site.numel
    for block in state.structure.attention:
        head = MODEL.head_ns * MODEL.seq * block.num_heads * block.head_dim
        key = state.masks_of(block.q.weight).rows.key
        kept += head * float(masks[key].keep_ratio())
        total += head
    assert float(soft_remaining(prepared)) == pytest.approx(kept / total, rel=1e-5)


def test_the_hard_share_is_the_predicted_latency_and_the_hold_lands_on_one_over_speedup():
    prepared = _speedup_model(speedup=2.0)
    prediction = predict_latency(prepared)
    assert kept_share(prepared, work=True) == pytest.approx(prediction.ms / prediction.dense_ms, rel=1e-6)
    reached = ThresholdHold(prepared).calibrate()
    assert reached == pytest.approx(0.5, abs=0.06)
    assert mp.sparsity_report(prepared).predicted_speedup == pytest.approx(1 / reached, rel=1e-6)


def test_the_prediction_holds_through_convert():
    prepared = prepare_tiny(config=mp.PruningConfig(granularity=("head", "row", "block"), block_size=16))
    randomize_masks(prepared, seed=2, keep=(0.3, 0.7))
    before = mp.sparsity_report(prepared).latency
    after = mp.sparsity_report(mp.convert(prepared)).latency
    assert after.ms == pytest.approx(before.ms) and after.dense_ms == pytest.approx(before.dense_ms)
    assert before.speedup > 1


def test_latency_counts_follow_what_convert_keeps():
    prepared = prepare_tiny(config=mp.PruningConfig(granularity=("head", "row"), prune_output_rows=False))
    dense = latency_counts(prepared, 0.7, dense=True)
    assert dense.dense_weights == sum(lm.site.numel for lm in pruning_state(prepared).linears)
    assert dense.heads_x_dim == 2 * 4 * 16 and dense.hidden_x_layers == 64 * 2 and dense.block_weights == 0
    randomize_masks(prepared, seed=1, keep=(0.5, 0.5))
    counts = latency_counts(prepared, 0.7)
    converted = mp.convert(prepared)
    stored = sum(p.numel() for n, p in converted.named_parameters() if n.endswith("weight") and p.dim() == 2
                 and "embeddings" not in n and "classifier" not in n and "pooler" not in n)
    assert counts.dense_weights == stored


def test_compacting_output_rows_pays_only_where_the_saved_weights_outweigh_the_scatter():
    cost = dataclasses.replace(MODEL, scatter_ns=0.2)  # one scattered output element = 100 weights
    assert cost.compacting_pays(64, 256, 38) and not cost.compacting_pays(64, 256, 40)  # (64 - k) * 256 vs 6400
    assert not cost.compacting_pays(64, 256, 64)  # nothing pruned
    assert cost.compacting_pays(64, 256, 0)  # nothing left: no scatter either
    assert MODEL.compacting_pays(64, 4, 63)  # a model fitted without the scatter always compacts, as before


def test_an_older_cost_model_file_loads_without_the_scatter_term(tmp_path):
    data = MODEL.to_json()
    del data["scatter_ns"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert mp.CostModel.load(tmp_path / "old.json").scatter_ns == 0.0


@pytest.mark.parametrize("scatter_ns, compacted", [(0.0, True), (1e3, False)])
def test_convert_drops_pruned_output_rows_where_the_cost_model_says_it_pays(scatter_ns, compacted):
    from conftest import example_inputs, logits_of

    cost = dataclasses.replace(MODEL, scatter_ns=scatter_ns)
    prepared = prepare_tiny(config=mp.PruningConfig(granularity=("head", "row"), cost_model=cost))
    randomize_masks(prepared, seed=3, keep=(0.4, 0.6))
    counts = latency_counts(prepared, 0.7, compacting=cost.compacting_pays)
    converted = mp.convert(prepared)
    scatters = [n for n in converted.graph.nodes if n.target is torch.ops.aten.index_add.default]
    assert len(scatters) == (4 if compacted else 0)  # two layers, attention output and FC2
    assert counts.scattered == (4 * 64 if compacted else 0)
    stored = sum(p.numel() for n, p in converted.named_parameters() if n.endswith("weight") and p.dim() == 2
                 and "embeddings" not in n and "classifier" not in n and "pooler" not in n)
    assert counts.dense_weights == stored
    inputs = example_inputs()
    with torch.no_grad():
        torch.testing.assert_close(logits_of(converted(**inputs)), logits_of(prepared.eval()(**inputs)),
                                   atol=1e-5, rtol=1e-4)
    assert mp.sparsity_report(prepared).latency.ms == pytest.approx(counts.ms(cost))


def test_the_hold_lands_on_the_speedup_convert_will_build_where_output_rows_stay_whole():
    cost = dataclasses.replace(MODEL, scatter_ns=1e3)  # no compaction pays: pruned output rows save nothing
    prepared = _speedup_model(speedup=1.5, cost=cost)
    ThresholdHold(prepared).calibrate()
    assert mp.sparsity_report(prepared).predicted_speedup == pytest.approx(1.5, rel=0.05)
    assert kept_share(prepared, work=True) < 1 / 1.5  # the weights' count alone would have stopped short


def test_an_unreachable_speedup_names_the_maximum():
    cost = dataclasses.replace(MODEL, fixed_ns=50.0)  # what pruning leaves dominates
    with pytest.raises(mp.ConfigError, match=r"speedup=20 cannot be reached.*at most \d+\.\d+x"):
        prepare_tiny(config=mp.PruningConfig(speedup=20, cost_model=cost))


def test_a_cost_model_from_another_model_or_machine_is_named(recwarn):
    other = dataclasses.replace(MODEL, model={"hidden": 768, "layers": 12}, machine={"cpu": "another CPU"})
    warnings.simplefilter("always")
    prepare_tiny(config=mp.PruningConfig(speedup=2, cost_model=other))
    text = " ".join(str(w.message) for w in recwarn)
    assert "hidden 768 here 64" in text and "layers 12 here 2" in text and "another CPU" in text


def test_the_shipped_cost_model_says_when_it_was_made_for_another_model(recwarn):
    warnings.simplefilter("always")
    prepare_tiny(config=mp.PruningConfig(speedup=1.2))
    text = " ".join(str(w.message) for w in recwarn)
    assert "calibrated elsewhere" in text and "hidden 768 here 64" in text and "mlprune calibrate" in text


def test_training_toward_a_speedup_lowers_the_predicted_latency():
    from mlprune_fx.training import train

    from conftest import example_inputs

    batch = {**example_inputs(batch=4, seq=12), "labels": torch.zeros(4, dtype=torch.long)}
    prepared = _speedup_model(speedup=1.8, inputs=batch)
    with torch.no_grad():
        for mask in mask_modules(prepared).values():
            mask.threshold.fill_(6.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(prepared, [batch], 12, mask_lr=0.5, progress=False)
    assert mp.sparsity_report(prepared).predicted_speedup == pytest.approx(1.8, rel=0.15)
