import pytest
import torch
from torch import nn

import mlprune_fx as mp
from mlprune_fx.passes.analyze import find_structures
from mlprune_fx.passes.capture import capture

from conftest import ARCHITECTURES, example_inputs, tiny_model


@pytest.mark.parametrize("kind, attn", ARCHITECTURES)
def test_finds_every_attention_and_ffn_block(kind, attn):
    structure = find_structures(capture(tiny_model(kind, attn, layers=3), example_inputs()))
    assert len(structure.attention) == 3 and len(structure.ffn) == 3
    for block in structure.attention:
        assert (block.num_heads, block.head_dim) == (4, 16)
        assert block.o_residual is not None
        assert {s.out_features // block.row_repeat(s) for s in (block.q, block.k, block.v)} == {64}
    for block in structure.ffn:
        assert (block.rows, block.fc1.out_features // block.fc1_chunks) == (128, 128)
        assert block.fc2_residual is not None and "gelu" in block.activation
    pruned = {s.weight for s in structure.linears()}
    assert not any("classifier" in w or "pooler" in w or "project" in w for w in pruned)


def test_heads_are_read_from_the_graph_not_the_config():
    structure = find_structures(capture(tiny_model("bert", hidden=60, heads=5, inter=97), example_inputs()))
    assert [(b.num_heads, b.head_dim) for b in structure.attention] == [(5, 12), (5, 12)]
    assert [b.fc1.out_features for b in structure.ffn] == [97, 97]


def test_describe_lists_blocks_and_linears_left_alone(capsys):
    structure = mp.describe(tiny_model("electra"), example_inputs())
    printed = capsys.readouterr().out
    assert "2 attention blocks, 2 FFN blocks" in printed
    assert "left alone" in printed and "embeddings_project" in printed
    assert any("embeddings_project" in s.weight for s in structure.skipped)


class _SigmoidFFN(nn.Module):
    """FFN whose activation does not map 0 to 0: rows cannot vanish exactly."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        return x + self.fc2(torch.sigmoid(self.fc1(x)))


def test_ffn_with_nonzero_activation_at_zero_is_left_alone_with_reason():
    structure = find_structures(capture(_SigmoidFFN(), {"input_ids": torch.ones(2, 4, dtype=torch.long)}))
    assert not structure.ffn
    assert any("does not map 0 to 0" in s.reason for s in structure.skipped)


def test_skip_leaves_named_blocks_alone():
    structure = find_structures(capture(tiny_model("bert"), example_inputs()), skip=("layer.0.",))
    assert len(structure.attention) == 1 and len(structure.ffn) == 1
    assert sum("skipped by" in s.reason for s in structure.skipped) == 6
