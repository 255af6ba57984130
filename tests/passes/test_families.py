"""MPNet, DeBERTa (v2 and v3 style), ModernBERT and ALBERT: found, pruned, converted and exported with parity."""

import numpy as np
import onnx
import pytest
import torch

import mlprune_fx as mp
from mlprune_fx.core.leap import soft_remaining
from mlprune_fx.core.pruning_state import mask_modules, pruning_state
from mlprune_fx.passes.analyze import find_structures
from mlprune_fx.passes.capture import capture
from mlprune_fx.runtime.library import is_block_sparse_linear

from conftest import EAGER_ONLY, NEW_FAMILIES, example_inputs, logits_of, prepare_tiny, randomize_masks, tiny_model

pytestmark = pytest.mark.usefixtures("native_library")

ATOL = 1e-4


def _attn(kind):
    return "eager" if kind in EAGER_ONLY else "sdpa"


def _structure(kind, layers=3):
    return find_structures(capture(tiny_model(kind, _attn(kind), layers=layers), example_inputs()))


def _prepared(kind, granularity=("head", "row"), seed=0, all_pruned=(), keep=(0.2, 0.8)):
    cfg = mp.PruningConfig(granularity=granularity, block_size=16)
    prepared = prepare_tiny(kind, _attn(kind), config=cfg, layers=2)
    randomize_masks(prepared, seed=seed, keep=keep, all_pruned=all_pruned)
    return prepared.eval()


def _check(prepared, converted, tmp_path, fused_expected=None):
    """Converted and ONNX Runtime outputs equal the masked model's on several shapes."""
    path = mp.export_onnx(converted, tmp_path / "m.onnx", example_inputs())
    session = mp.runtime.InferenceSession(path, num_threads=2)
    for b, s in [(1, 5), (3, 17), (2, 33)]:
        x = example_inputs(b, s, seed=b + s)
        expected = logits_of(prepared(**x))
        assert (logits_of(converted(**x)) - expected).abs().max() <= ATOL
        out = next(iter(session(**x).values()))
        assert np.abs(out - expected.detach().numpy()).max() <= ATOL
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    if fused_expected is not None:
        assert ("MultiHeadAttention" in ops) == fused_expected


def _params(gm):
    return sum(p.numel() for n, p in gm.named_parameters() if not n.startswith("mlprune_masks."))


@pytest.mark.parametrize("kind", NEW_FAMILIES)
def test_every_layer_has_its_attention_and_ffn(kind):
    structure = _structure(kind)
    assert len(structure.attention) == 3 and len(structure.ffn) == 3
    assert all((a.num_heads, a.head_dim) == (4, 16) and a.o_residual for a in structure.attention)
    assert all(f.rows == 128 and f.fc2_residual for f in structure.ffn)
    assert not any("attn" in s.weight or "attention" in s.weight or "ffn" in s.weight for s in structure.skipped)


def test_mpnet_relative_position_bias_is_sliced_per_head():
    structure = _structure("mpnet")
    for block in structure.attention:
        assert [t.axis for t in block.head_terms] == [1]
        assert block.score_terms == ("mpnet.encoder.relative_attention_bias.weight",)


@pytest.mark.parametrize("kind, projections", [("deberta", ("query_proj", "key_proj")), ("deberta_v2", ("pos_query_proj", "pos_key_proj"))])
def test_deberta_position_projections_carry_the_head_mask(kind, projections):
    structure = _structure(kind, layers=2)
    for block in structure.attention:
        assert sorted(s.weight.split(".")[-2] for s in block.score_linears) == sorted(projections)
        assert any(a.kind == "batch_heads" for a in block.shape_args)  # the gather index expanded to batch x heads
    prepared = _prepared(kind)
    state = pruning_state(prepared)
    for block in state.structure.attention:
        key = state.masks_of(block.q.weight).rows.key
        for site in block.score_linears:
            assert state.masks_of(site.weight).rows.key == key


def test_modernbert_fused_qkv_and_gated_ffn_rows_are_masked_in_ranges_and_pairs():
    prepared = _prepared("modernbert")
    state = pruning_state(prepared)
    block, ffn = state.structure.attention[0], state.structure.ffn[0]
    assert block.q == block.k == block.v and block.row_repeat(block.q) == 3
    assert ffn.fc1_chunks == 2 and "gelu" in ffn.activation and "gated" in ffn.activation
    qkv, wi = state.masks_of(block.q.weight), state.masks_of(ffn.fc1.weight)
    assert (qkv.rows.unit, qkv.rows.repeat) == (16, 3) and (wi.rows.unit, wi.rows.repeat) == (1, 2)
    converted = mp.convert(prepared)
    heads = int(mask_modules(prepared)[qkv.rows.key]().sum())
    rows = int(mask_modules(prepared)[wi.rows.key]().sum())
    assert converted.get_parameter(block.q.weight).shape[0] == 3 * 16 * heads
    assert converted.get_parameter(ffn.fc1.weight).shape[0] == 2 * rows


def test_albert_shared_layer_has_one_mask_per_weight_counted_once():
    prepared = _prepared("albert")
    state = pruning_state(prepared)
    weights = {s.weight for s in state.structure.linears()}
    layers = len(state.structure.attention)
    assert layers == len(state.structure.ffn) == 2 and len(weights) == 6  # Q, K, V, O, FFN in, FFN out
    assert len(state.linears) == 6 and all(len(lm.uses) == layers - 1 for lm in state.linears)
    assert sorted(k for k in mask_modules(prepared) if k.endswith("__heads")) == [
        "albert_encoder_albert_layer_groups_0_albert_layers_0_attention__heads"
    ]
    assert sum(lm.site.numel for lm in state.linears) == sum(prepared.get_parameter(w).numel() for w in weights)
    assert mp.sparsity_report(prepared).total == sum(lm.site.numel for lm in state.linears)
    with torch.no_grad():
        for mask in mask_modules(prepared).values():
            mask.threshold.fill_(20.0)
    assert float(soft_remaining(prepared).detach()) == pytest.approx(1.0)


@pytest.mark.parametrize("kind", NEW_FAMILIES)
def test_convert_and_onnx_runtime_match_the_masked_model_and_parameters_drop(kind, tmp_path):
    prepared = _prepared(kind, seed=1)
    converted = mp.convert(prepared)
    assert _params(converted) < _params(prepared)
    _check(prepared, converted, tmp_path, fused_expected={"albert": True, "modernbert": False}.get(kind))


@pytest.mark.parametrize("kind, all_pruned", [
    ("mpnet", ("layer_1_attention_attn__heads",)),
    ("deberta", ("__heads",)),
    ("deberta_v2", ("layer_0_attention__heads", "intermediate_dense__rows")),
    ("modernbert", ("layers_1_attn__heads", "mlp_Wi__rows")),
    ("albert", ("__heads", "ffn__rows")),
])
def test_blocks_with_nothing_left_still_match(kind, all_pruned, tmp_path):
    prepared = _prepared(kind, seed=2, all_pruned=all_pruned)
    _check(prepared, mp.convert(prepared), tmp_path)


@pytest.mark.parametrize("kind", ["deberta", "modernbert", "albert"])
def test_blocks_and_single_weights_on_the_new_families(kind, tmp_path):
    prepared = _prepared(kind, granularity=("head", "row", "block", "unstructured"), seed=3, keep=(0.3, 0.6))
    converted = mp.convert(prepared)
    assert pruning_state(converted).lowered
    _check(prepared, converted, tmp_path)


def test_every_use_of_a_shared_weight_runs_the_block_sparse_kernel(tmp_path):
    """ALBERT's one layer serves every layer: each use reads the same packed blocks, none stays dense."""
    prepared = _prepared("albert", granularity=("block",), seed=3, keep=(0.2, 0.4))
    converted = mp.convert(prepared)
    state = pruning_state(converted)
    lowered = [lm for lm in state.linears if lm.site.weight in state.lowered]
    assert lowered and all(len(lm.nodes) > 1 for lm in lowered)
    kernels = [n for n in converted.graph.nodes if is_block_sparse_linear(n)]
    assert len(kernels) == sum(len(lm.nodes) for lm in lowered)
    _check(prepared, converted, tmp_path)


def test_rotary_head_pruning_is_exact():
    """Rotary embeddings turn each head's Q and K within the head: removing whole heads changes no kept head."""
    prepared = _prepared("modernbert", granularity=("head",), seed=4, keep=(0.4, 0.6))
    converted = mp.convert(prepared)
    x = example_inputs(2, 40, seed=9)  # longer than the local window, so both layer kinds are exercised
    torch.testing.assert_close(logits_of(converted(**x)), logits_of(prepared(**x)), atol=1e-6, rtol=0)


def test_describe_names_the_score_terms_and_the_shared_weights(capsys):
    mp.describe(tiny_model("mpnet", "eager"), example_inputs())
    mp.describe(tiny_model("deberta", "eager"), example_inputs())
    mp.describe(tiny_model("albert"), example_inputs())
    printed = capsys.readouterr().out
    assert "scores + mpnet.encoder.relative_attention_bias.weight (1 outside tensor(s) sliced per kept head)" in printed
    assert "of deberta.encoder.rel_embeddings.weight" in printed
    assert "shared weights (one mask each, applied at every use): 6" in printed


@pytest.mark.parametrize("kind", ["mpnet", "deberta_v2"])
def test_attention_probabilities_returned_as_outputs_leave_heads_alone(kind, tmp_path):
    model = tiny_model(kind, "eager")
    model.config.output_attentions = True
    structure = find_structures(capture(model, example_inputs()))
    assert not structure.attention and len(structure.ffn) == 2
    assert all("leave the block as model outputs" in s.reason for s in structure.skipped if "attention" in s.weight)
    prepared = mp.prepare(model, mp.PruningConfig(), example_inputs())
    randomize_masks(prepared, seed=5)
    prepared.eval()
    converted = mp.convert(prepared)
    x = example_inputs(2, 9)
    torch.testing.assert_close(logits_of(converted(**x)), logits_of(prepared(**x)), atol=ATOL, rtol=0)


def test_mpnet_refuses_token_type_ids():
    inputs = {**example_inputs(), "token_type_ids": torch.zeros(3, 13, dtype=torch.long)}
    with pytest.raises(mp.ExampleInputsError, match="does not accept"):
        mp.prepare(tiny_model("mpnet", "eager"), mp.PruningConfig(), inputs)


def test_fused_qkv_block_size_must_divide_it():
    with pytest.raises(mp.ConfigError, match="Wqkv"):
        mp.prepare(tiny_model("modernbert", hidden=48, heads=3, inter=96), mp.PruningConfig(granularity=("block",), block_size=32),
                   example_inputs())


def test_saved_and_loaded_with_their_new_records(tmp_path):
    prepared = _prepared("deberta_v2", granularity=("head", "row"), seed=6)
    mp.save(prepared, tmp_path / "p")
    loaded = mp.load(tmp_path / "p").eval()
    assert pruning_state(loaded).structure.describe() == pruning_state(prepared).structure.describe()
    x = example_inputs(2, 11)
    torch.testing.assert_close(logits_of(loaded(**x)), logits_of(prepared(**x)), atol=0, rtol=0)
    converted = mp.convert(_prepared("mpnet", seed=6))
    mp.save(converted, tmp_path / "c")
    reloaded = mp.load(tmp_path / "c")
    torch.testing.assert_close(logits_of(reloaded(**x)), logits_of(converted(**x)), atol=1e-6, rtol=0)
    assert pruning_state(reloaded).structure.attention[0].head_terms
