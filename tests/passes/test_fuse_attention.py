"""fuse_attention alone and through export_onnx: one MultiHeadAttention node per layer, same numbers."""

import numpy as np
import onnx
import pytest
import torch

import mlprune_fx as mp
from mlprune_fx.passes.fuse_attention import fuse_attention
from mlprune_fx.passes.graph_utils import get_tensor

from conftest import example_inputs, logits_of, prepare_tiny, randomize_masks


def _converted(kind="bert", attn="sdpa", seed=5):
    prepared = prepare_tiny(kind, attn, layers=2)
    randomize_masks(prepared, seed=seed)
    return mp.convert(prepared.eval())


def _count(gm, target):
    return sum(n.op == "call_function" and n.target is target for n in gm.graph.nodes)


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
def test_every_sdpa_chain_becomes_one_op_with_the_same_output(kind):
    converted = _converted(kind)
    fused = fuse_attention(_converted(kind), example_inputs())
    assert _count(fused, torch.ops.aten.scaled_dot_product_attention.default) == 0
    assert _count(fused, torch.ops.mlprune.attention.default) == 2
    assert _count(fused, torch.ops.aten.transpose.int) == 0
    for b, s in [(1, 5), (3, 13)]:
        inputs = example_inputs(b, s, seed=b)
        torch.testing.assert_close(logits_of(fused(**inputs)), logits_of(converted(**inputs)), rtol=1e-5, atol=1e-5)


def test_head_counts_are_the_compacted_ones():
    converted = _converted("bert", seed=8)
    fused = fuse_attention(converted, example_inputs())
    found = []
    for node in fused.graph.nodes:
        if node.target is torch.ops.mlprune.attention.default:
            weight = get_tensor(fused, node.args[0].args[1].target)  # the query linear's weight
            found.append((node.args[4], weight.shape[0] // 16))
    assert len(found) == 2 and all(h == kept for h, kept in found)
    assert any(h < 4 for h, _ in found)  # some heads were pruned


def test_eager_attention_is_left_alone():
    fused = fuse_attention(_converted("bert", "eager"), example_inputs())
    assert _count(fused, torch.ops.mlprune.attention.default) == 0


def test_export_writes_multi_head_attention_and_matches_torch(tmp_path):
    converted = _converted()
    path = mp.export_onnx(converted, tmp_path / "fused.onnx", example_inputs())
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MultiHeadAttention") == 2 and "Softmax" not in ops
    plain = mp.export_onnx(converted, tmp_path / "plain.onnx", example_inputs(), fused_attention=False)
    assert "MultiHeadAttention" not in [n.op_type for n in onnx.load(str(plain)).graph.node]
    assert _count(converted, torch.ops.aten.scaled_dot_product_attention.default) == 2  # export worked on a copy
    fused_session, plain_session = mp.runtime.InferenceSession(path), mp.runtime.InferenceSession(plain)
    for b, s in [(1, 5), (4, 29)]:
        inputs = example_inputs(b, s, seed=s)
        expected = logits_of(converted(**inputs)).detach().numpy()
        assert np.abs(fused_session(**inputs)["logits"] - expected).max() <= 1e-4
        assert np.abs(plain_session(**inputs)["logits"] - expected).max() <= 1e-4
