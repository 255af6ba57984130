"""convert(quantize="int8"): every kept encoder linear in int8, close to the float model, equal in ONNX Runtime."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import mlprune_fx as mp
from mlprune_fx.core.pruning_state import pruning_state

from conftest import ARCHITECTURES, example_inputs, logits_of, prepare_tiny, randomize_masks, tiny_model

pytestmark = pytest.mark.usefixtures("native_library")

INT8_OPS = {"mlprune.int8_linear.default", "mlprune.block_sparse_linear_int8.default"}


def _targets(gm) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


def _pair(kind="bert", attn="sdpa", granularity=("head", "row"), seed=1, keep=(0.3, 0.7)):
    prepared = prepare_tiny(kind, attn, config=mp.PruningConfig(granularity=granularity, block_size=16))
    randomize_masks(prepared, seed=seed, keep=keep)
    return mp.convert(prepared), mp.convert(prepared, quantize="int8")


def _relative(a, b) -> float:
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


@pytest.mark.parametrize("kind, attn", ARCHITECTURES)
def test_every_kept_linear_is_int8_and_close_to_float(kind, attn):
    fp32, q = _pair(kind, attn)
    state = pruning_state(q)
    assert state.quantization == "int8" and set(state.quantized.values()) == {"int8"}
    assert len(state.quantized) == len(state.linears)
    uses = sum(len(lm.nodes) for lm in state.linears)  # a shared weight (ALBERT) has one use per layer
    assert sum(t in INT8_OPS for t in _targets(q)) == uses
    x = example_inputs()
    with torch.no_grad():
        assert _relative(logits_of(q(**x)), logits_of(fp32(**x))) < 0.05


def test_block_sparse_matrices_run_the_int8_kernel_with_their_epilogue():
    fp32, q = _pair(granularity=("block",), keep=(0.2, 0.5))
    kinds = set(pruning_state(q).quantized.values())
    assert kinds == {"int8 block-sparse"}
    fused = [n for n in q.graph.nodes if str(n.target) == "mlprune.block_sparse_linear_int8.default"
             and (n.kwargs.get("activation") == "gelu" or n.kwargs.get("residual") is not None)]
    assert fused, "the GELU / residual folded into the fp32 op must stay folded in its int8 form"
    x = example_inputs()
    with torch.no_grad():
        assert _relative(q(**x).logits, fp32(**x).logits) < 0.05


def test_pooler_and_classifier_stay_float32():
    _, q = _pair()
    assert sum(t == "aten.linear.default" for t in _targets(q)) == 2  # pooler + classifier
    assert all(p.dtype == torch.float32 for p in q.parameters())


@pytest.mark.parametrize("granularity", [("head", "row"), ("head", "row", "block")])
@pytest.mark.parametrize("standard_ops", [False, True])
def test_onnx_runtime_equals_the_torch_int8_model(tmp_path, granularity, standard_ops):
    _, q = _pair(granularity=granularity)
    x = example_inputs(batch=4, seq=11, seed=7)
    path = mp.export_onnx(q, tmp_path / "q.onnx", x, standard_ops=standard_ops)
    if standard_ops:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {k: v.numpy() for k, v in x.items()})[0]
    else:
        got = mp.runtime.InferenceSession(path)(**x)["logits"]
    expected = q(**x).logits.detach().numpy()
    assert np.abs(got - expected).max() <= 1e-3


def test_save_and_load_keep_the_int8_model(tmp_path):
    _, q = _pair(granularity=("head", "row", "block"))
    loaded = mp.load(mp.save(q, tmp_path / "q"))
    assert pruning_state(loaded).quantized == pruning_state(q).quantized
    x = example_inputs()
    torch.testing.assert_close(loaded(**x).logits, q(**x).logits)


def test_unknown_quantization_is_a_config_error():
    prepared = prepare_tiny()
    with pytest.raises(mp.ConfigError, match=r"quantize='int4' is not supported: use one of \(None, 'int8'\)"):
        mp.convert(prepared, quantize="int4")


def test_half_precision_models_get_a_clear_error():
    model = tiny_model("bert").half()
    prepared = mp.prepare(model, mp.PruningConfig(), example_inputs())
    with pytest.raises(mp.ConfigError, match="quantize='int8' needs float32 weights.*model.float"):
        mp.convert(prepared, quantize="int8")


def test_an_int8_file_without_the_library_names_the_build_and_the_standard_ops_way(tmp_path, monkeypatch):
    _, q = _pair(granularity=("block",), keep=(0.2, 0.5))
    path = mp.export_onnx(q, tmp_path / "q.onnx", example_inputs())
    monkeypatch.setenv("MLPRUNE_NATIVE_DIR", str(tmp_path))
    with pytest.raises(mp.OrtLibraryMissing, match=r"python -m mlprune_fx.runtime.build.*standard_ops=True"):
        mp.runtime.InferenceSession(path)
