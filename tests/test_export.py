import warnings

import numpy as np
import pytest
import torch

import mlprune_fx as mp

from conftest import example_inputs, logits_of, prepare_tiny, randomize_masks


def _converted(kind, attn, all_pruned=()):
    prepared = prepare_tiny(kind, attn, layers=2)
    randomize_masks(prepared, seed=11, all_pruned=all_pruned)
    prepared.eval()
    return prepared, mp.convert(prepared)


@pytest.mark.parametrize(
    "kind, attn, all_pruned",
    [("bert", "sdpa", ("layer_0_attention__heads",)), ("distilbert", "eager", ("layer_1_intermediate_dense__rows",)), ("roberta", "sdpa", ())],
)
def test_onnx_runtime_equals_torch_with_dynamic_batch_and_sequence(tmp_path, kind, attn, all_pruned):
    prepared, converted = _converted(kind, attn, all_pruned)
    path = mp.export_onnx(converted, tmp_path / "model.onnx", example_inputs())
    session = mp.runtime.InferenceSession(path, num_threads=2)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for b, s in [(1, 5), (3, 13), (6, 40)]:
        inputs = example_inputs(b, s, seed=b + s)
        got = session(**inputs)["logits"]
        expected = logits_of(converted(**inputs)).detach().numpy()
        masked = logits_of(prepared(**inputs)).detach().numpy()
        assert np.abs(got - expected).max() <= 1e-4
        assert np.abs(got - masked).max() <= 1e-4


@pytest.mark.parametrize("fuse", [False, True])
def test_skip_layernorm_fusion_is_off_unless_asked(tmp_path, fuse):
    import onnx
    import onnxruntime as ort

    converted = mp.convert(prepare_tiny("bert", layers=1))
    path = mp.export_onnx(converted, tmp_path / "model.onnx", example_inputs())
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = mp.runtime.InferenceSession(path, options, fuse_skip_layernorm=fuse, disabled_optimizers=["BiasGeluFusion"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert ("SkipLayerNormalization" in ops) == fuse
    assert "LayerNormalization" in ops and "BiasGelu" not in ops  # the caller's own list still applies
    inputs = example_inputs(2, 7)
    np.testing.assert_allclose(session(**inputs)["logits"], logits_of(converted(**inputs)).detach().numpy(), atol=1e-4)


def test_bare_encoder_exports_hidden_states(tmp_path):
    prepared, converted = _converted("bertmodel", "sdpa")
    path = mp.export_onnx(converted, tmp_path / "encoder.onnx", example_inputs())
    session = mp.runtime.InferenceSession(path)
    out = session(**example_inputs())
    assert "last_hidden_state" in out
    assert np.abs(out["last_hidden_state"] - converted(**example_inputs()).last_hidden_state.detach().numpy()).max() <= 1e-4


def test_export_checks_inputs_and_stage(tmp_path):
    prepared, converted = _converted("bert", "sdpa")
    with pytest.raises(mp.ExampleInputsError, match="takes no labels"):
        mp.export_onnx(converted, tmp_path / "m.onnx", {**example_inputs(), "labels": torch.tensor([0, 1, 0])})
    with pytest.raises(mp.ExampleInputsError, match="missing"):
        mp.export_onnx(converted, tmp_path / "m.onnx", {"input_ids": example_inputs()["input_ids"]})
    with pytest.raises(mp.NotPreparedError):
        mp.export_onnx(prepared, tmp_path / "m.onnx", example_inputs())
    assert not (tmp_path / "m.onnx").exists()


def test_failed_export_leaves_an_existing_file_intact(tmp_path, monkeypatch):
    _, converted = _converted("bert", "sdpa")
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous model")

    def broken(*args, **kwargs):
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError):
        mp.export_onnx(converted, target, example_inputs())
    assert target.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_missing_onnx_file_gets_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        mp.runtime.InferenceSession(tmp_path / "nothing.onnx")


def test_export_does_not_warn_about_torchvision(tmp_path, caplog):
    """The exporter's note that torchvision's ops are skipped concerns no encoder; only verbose shows it."""
    _, converted = _converted("bert", "sdpa")
    mp.export_onnx(converted, tmp_path / "model.onnx", example_inputs())
    assert not [r for r in caplog.records if "torchvision" in r.getMessage()]


def test_export_raises_no_torch_pytree_warning(tmp_path):
    """torch.export's own passes copy the graph's pytree specs and used to print torch's LeafSpec
    FutureWarning on every export."""
    _, converted = _converted("bert", "sdpa")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        mp.export_onnx(converted, tmp_path / "model.onnx", example_inputs())


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_output_rows_kept_as_zeros_export_and_quantize_like_compacted_ones(tmp_path, quantize):
    prepared = prepare_tiny(config=mp.PruningConfig(granularity=("head", "row")))
    randomize_masks(prepared, seed=3, keep=(0.4, 0.6))
    prepared.eval()
    inputs = example_inputs()
    masked = logits_of(prepared(**inputs)).detach().numpy()
    for compact in (False, True):
        converted = mp.convert(prepared, quantize=quantize, compact_output_rows=compact)
        scatters = sum(n.target is torch.ops.aten.index_add.default for n in converted.graph.nodes)
        assert (scatters > 0) == compact
        session = mp.runtime.InferenceSession(mp.export_onnx(converted, tmp_path / f"{compact}.onnx", inputs))
        got = session(**inputs)["logits"]
        assert np.abs(got - logits_of(converted(**inputs)).detach().numpy()).max() <= 1e-4
        assert np.abs(got - masked).max() <= (1e-4 if quantize is None else 1e-2)
