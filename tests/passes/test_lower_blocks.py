import numpy as np
import onnxruntime as ort
import pytest
import torch

import mlprune_fx as mp
from mlprune_fx.core.pruning_state import mask_modules, pruning_state
from mlprune_fx.passes.lower_blocks import DEFAULT_MAX_DENSITY, block_mask_of

from conftest import example_inputs, logits_of, prepare_tiny, randomize_masks, tiny_model

pytestmark = pytest.mark.usefixtures("native_library")



def _prepared(granularity, seed=0, keep=(0.2, 0.45), block=16, **sizes):
    cfg = mp.PruningConfig(granularity=granularity, block_size=block)
    prepared = prepare_tiny("bert", config=cfg, layers=2, **sizes)
    randomize_masks(prepared, seed=seed, keep=keep)
    return prepared.eval()


def _lowered_ops(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and getattr(n.target, "namespace", "") == "mlprune"]


@pytest.mark.parametrize("granularity", [("block",), ("head", "row", "block"), ("row", "block")])
@pytest.mark.parametrize("block", [16, 32])
def test_block_masks_lower_to_the_native_op_with_parity(granularity, block):
    prepared = _prepared(granularity, seed=len(granularity) + block, block=block, hidden=64, inter=128)
    converted = mp.convert(prepared)
    lowered = pruning_state(converted).lowered
    assert _lowered_ops(converted), "sparse enough matrices must run on the block-sparse kernel"
    assert len(_lowered_ops(converted)) == len(lowered)
    assert all(d < DEFAULT_MAX_DENSITY for d in lowered.values())
    for b, s in [(1, 5), (3, 13), (4, 40)]:
        x = example_inputs(b, s, seed=s)
        assert (logits_of(converted(**x)) - logits_of(prepared(**x))).abs().max() <= 1e-4


def test_dense_enough_matrices_stay_dense():
    prepared = _prepared(("block",), keep=(0.9, 0.95))
    converted = mp.convert(prepared)
    assert not _lowered_ops(converted)
    assert not pruning_state(converted).lowered
    partly = mp.convert(prepared, max_block_density=1.01)
    assert len(_lowered_ops(partly)) == 12  # 2 layers x (Q, K, V, O, FC1, FC2)


def test_onnx_custom_op_and_standard_op_lowering_equal_the_masked_model(tmp_path):
    prepared = _prepared(("head", "row", "block"), seed=9)
    converted = mp.convert(prepared)
    custom = mp.export_onnx(converted, tmp_path / "custom.onnx", example_inputs())
    standard = mp.export_onnx(converted, tmp_path / "standard.onnx", example_inputs(), standard_ops=True)
    with_library = mp.runtime.InferenceSession(custom, num_threads=2)
    plain = ort.InferenceSession(str(standard), providers=["CPUExecutionProvider"])
    for b, s in [(2, 9), (5, 31)]:
        x = example_inputs(b, s, seed=b)
        expected = logits_of(prepared(**x)).detach().numpy()
        got_custom = with_library(**x)["logits"]
        got_standard = plain.run(None, {k: v.numpy() for k, v in x.items()})[0]
        assert np.abs(got_custom - expected).max() <= 1e-4
        assert np.abs(got_standard - expected).max() <= 1e-4
        assert np.abs(got_custom - got_standard).max() <= 1e-4


def test_block_size_must_divide_every_matrix():
    with pytest.raises(mp.ConfigError, match="does not divide"):
        mp.prepare(tiny_model("bert", hidden=48, heads=3, inter=96), mp.PruningConfig(granularity=("block",), block_size=32), example_inputs())


def test_block_mask_of_finds_nonzero_blocks():
    w = torch.zeros(32, 48)
    w[0, 17] = 1.0
    w[31, 47] = -2.0
    assert block_mask_of(w, 16).tolist() == [[0, 1, 0], [0, 0, 1]]


def test_without_the_native_library_convert_warns_and_keeps_dense(monkeypatch):
    from mlprune_fx.runtime import ops

    def missing():
        raise ops.NativeLibraryMissing("native block-sparse kernel not built: run python -m mlprune_fx.runtime.build")

    monkeypatch.setattr(ops, "load_library", missing)
    prepared = _prepared(("block",))
    with pytest.warns(UserWarning, match="stay dense"):
        converted = mp.convert(prepared)
    assert not _lowered_ops(converted)
    x = example_inputs()
    assert (logits_of(converted(**x)) - logits_of(prepared(**x))).abs().max() <= 1e-4
    with pytest.raises(ops.NativeLibraryMissing, match="runtime.build"):
        mp.convert(prepared, lower_blocks=True)


def test_block_masks_train_and_count_in_the_regulariser():
    prepared = _prepared(("block",), keep=(0.99, 0.99))
    masks = mask_modules(prepared)
    assert all(m.granularity == "block" for m in masks.values())
    q = next(m for k, m in masks.items() if "query" in k)
    assert q.scores.shape == (4, 4)
    rho = mp.penalty(prepared).rho
    assert rho == pytest.approx(0.99, abs=1e-3)


def test_onnx_model_whose_custom_op_library_is_missing(tmp_path, monkeypatch):
    from mlprune_fx.runtime import ort_library

    converted = mp.convert(_prepared(("block",)))
    path = mp.export_onnx(converted, tmp_path / "custom.onnx", example_inputs())
    monkeypatch.setenv("MLPRUNE_NATIVE_DIR", str(tmp_path))
    with pytest.raises(ort_library.OrtLibraryMissing, match="standard_ops=True") as err:
        mp.runtime.InferenceSession(path)
    assert "runtime.build" in str(err.value) and "ai.mlprune" in str(err.value)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_convert_and_keep_blocks_dense(dtype):
    model = tiny_model("bert", layers=2).to(dtype)
    prepared = mp.prepare(model, mp.PruningConfig(granularity=("head", "row", "block"), block_size=16), example_inputs())
    randomize_masks(prepared, seed=1, keep=(0.2, 0.4))
    prepared.eval()
    with pytest.warns(UserWarning, match="computes in float32"):
        converted = mp.convert(prepared)
    assert not _lowered_ops(converted)
    x = example_inputs()
    assert (logits_of(converted(**x)).float() - logits_of(prepared(**x)).float()).abs().max() <= 1e-2


@pytest.mark.parametrize("granularity", [("row", "block"), ("head", "row", "block")])
def test_rows_pruned_with_blocks_go_a_block_at_a_time_so_ffn_matrices_still_tile(granularity):
    prepared = _prepared(granularity, seed=3, hidden=64, inter=128)
    state = pruning_state(prepared)
    fc1 = [lm for lm in state.linears if "intermediate" in lm.site.weight]
    assert all(lm.rows.unit == 16 and mask_modules(prepared)[lm.rows.key].scores.numel() == 128 // 16 for lm in fc1)
    converted = mp.convert(prepared)
    lowered = pruning_state(converted).lowered
    ffn = [lm.site.weight for lm in state.linears if "intermediate" in lm.site.weight or "output.dense" in lm.site.weight]
    assert len(ffn) == 6 and all(w in lowered for w in ffn), "kept FFN and output rows must leave whole blocks"
    x = example_inputs(3, 13, seed=4)
    assert (logits_of(converted(**x)) - logits_of(prepared(**x))).abs().max() <= 1e-4
