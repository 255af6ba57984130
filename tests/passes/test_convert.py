import copy
import warnings

import pytest
import torch

import mlprune_fx as mp
from mlprune_fx.core.pruning_state import MASK_CONTAINER, mask_modules
from mlprune_fx.passes.cleanup import cleanup
from mlprune_fx.passes.compact_heads import compact_heads
from mlprune_fx.passes.compact_rows import compact_rows
from mlprune_fx.passes.freeze_masks import freeze_masks

from conftest import ARCHITECTURES, example_inputs, logits_of, prepare_tiny, randomize_masks, tiny_model

ATOL = 1e-4


def _prepared(kind="bert", attn="sdpa", seed=0, all_pruned=(), keep=(0.2, 0.9), **sizes):
    prepared = prepare_tiny(kind, attn, layers=3, **sizes)
    randomize_masks(prepared, seed=seed, keep=keep, all_pruned=all_pruned)
    return prepared.eval()


def _check_parity(prepared, converted, shapes=((3, 13), (1, 7), (5, 33))):
    for i, (b, s) in enumerate(shapes):
        inputs = example_inputs(b, s, seed=10 + i)
        expected = logits_of(prepared(**inputs))
        got = logits_of(converted(**inputs))
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= ATOL


@pytest.mark.parametrize("kind, attn", ARCHITECTURES)
def test_converted_equals_prepared_on_every_architecture(kind, attn):
    prepared = _prepared(kind, attn)
    converted = mp.convert(prepared)
    _check_parity(prepared, converted)
    assert not hasattr(converted, MASK_CONTAINER)
    assert sum(p.numel() for p in converted.parameters()) < sum(p.numel() for p in prepared.parameters())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_odd_sizes_and_different_head_counts_per_layer(seed):
    prepared = _prepared("bert", "eager", seed=seed, hidden=60, heads=5, inter=97)
    converted = mp.convert(prepared)
    heads = [converted.get_parameter(f"bert.encoder.layer.{i}.attention.self.query.weight").shape[0] // 12 for i in range(3)]
    report = mp.sparsity_report(prepared)
    assert heads == [k for k, _ in report.heads_kept.values()]
    _check_parity(prepared, converted)


@pytest.mark.parametrize(
    "all_pruned",
    [
        ("layer_0_attention__heads",),
        ("layer_1_intermediate_dense__rows",),
        ("layer_2_attention_output_dense__rows", "layer_2_output_dense__rows"),
        ("__heads", "intermediate_dense__rows"),
        ("layer_0_attention__heads", "layer_0_attention_output_dense__rows"),
    ],
)
@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_layers_with_everything_pruned_still_work(kind, all_pruned):
    prepared = _prepared(kind, "sdpa", seed=4, all_pruned=all_pruned)
    converted = mp.convert(prepared)
    _check_parity(prepared, converted)


def test_pruned_parameters_are_physically_gone():
    prepared = _prepared("bert", seed=5)
    report = mp.sparsity_report(prepared)
    converted = mp.convert(prepared)
    params = dict(converted.named_parameters())
    for m in report.matrices:
        w = params[m.weight]
        assert w.numel() == m.kept, m.weight  # every stored weight of a prunable matrix is a kept one
    assert not any("mlprune_masks" in n for n in params)


def test_each_pass_runs_alone_and_keeps_parity():
    prepared = _prepared("roberta", "eager", seed=6, all_pruned=("layer_1_attention__heads",))
    gm = freeze_masks(copy.deepcopy(prepared))
    _check_parity(prepared, gm)
    gm = compact_heads(gm)
    _check_parity(prepared, gm)
    gm = compact_rows(gm)
    _check_parity(prepared, gm)
    before = sum(p.numel() for p in gm.parameters())
    gm = cleanup(gm)
    _check_parity(prepared, gm)
    assert sum(p.numel() for p in gm.parameters()) <= before


def test_compact_rows_without_compact_heads():
    prepared = _prepared("bert", seed=7)
    gm = cleanup(compact_rows(freeze_masks(copy.deepcopy(prepared))))
    _check_parity(prepared, gm)


@pytest.mark.parametrize("multiple", [8, 16])
def test_rows_rounded_up_for_a_block_step_start_at_zero(multiple):
    """convert(row_multiple) adds rows so block sizes divide every matrix; the added rows must
    not bring back weights the masked model never used."""
    prepared = _prepared("bert", "sdpa", seed=4, keep=(0.3, 0.45))
    converted = mp.convert(prepared, row_multiple=multiple)
    _check_parity(prepared, converted)
    fc1 = [converted.get_parameter(f"bert.encoder.layer.{i}.intermediate.dense.weight") for i in range(3)]
    kept = [int(m().sum()) for k, m in mask_modules(prepared).items() if k.endswith("intermediate_dense__rows")]
    assert all(w.shape[0] % multiple == 0 for w in fc1)
    assert any(w.shape[0] > k for w, k in zip(fc1, kept))  # some rows were added, and they are zero
    assert sum(int((w.abs().sum(1) == 0).sum()) for w in fc1) == sum(w.shape[0] - k for w, k in zip(fc1, kept))


def test_convert_leaves_the_prepared_model_trainable():
    prepared = _prepared("bert", seed=8)
    snapshot = {k: v.clone() for k, v in prepared.state_dict().items()}
    mp.convert(prepared)
    for k, v in prepared.state_dict().items():
        assert torch.equal(v, snapshot[k])
    assert any(isinstance(m, mp.LearnableMask) for m in prepared.modules())


def test_labels_become_loss_while_training_and_vanish_after_convert():
    inputs = {**example_inputs(), "labels": torch.tensor([0, 1, 1])}
    prepared = mp.prepare(tiny_model("bert"), mp.PruningConfig(), inputs)
    randomize_masks(prepared)
    out = prepared(**inputs)
    assert out.loss is not None and out.loss.requires_grad
    prepared.eval()
    converted = mp.convert(prepared)
    plain = example_inputs()
    assert (converted(**plain).logits - prepared(**inputs).logits).abs().max() <= ATOL
    assert converted(**plain).loss is None
    kept = mp.convert(prepared, inference=False)
    assert kept(**inputs).loss is not None


def test_convert_needs_a_prepared_model():
    with pytest.raises(mp.NotPreparedError, match="prepare"):
        mp.convert(tiny_model("bert"))
    converted = mp.convert(_prepared())
    with pytest.raises(mp.NotPreparedError, match="stage"):
        mp.convert(converted)


def test_prepare_and_convert_raise_no_torch_pytree_warning():
    """Copying a captured graph used to print torch's LeafSpec FutureWarning on every convert."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        mp.convert(_prepared())
