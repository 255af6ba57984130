"""fuse_epilogues alone: what it folds into the block-sparse op, what it leaves, and parity."""

import math

import pytest
import torch
import torch.nn.functional as F

import mlprune_fx as mp
from mlprune_fx.core.pruning_state import mask_modules
from mlprune_fx.passes.fuse_epilogues import fuse_epilogues
from mlprune_fx.runtime import ops
from mlprune_fx.runtime.library import is_block_sparse_linear

from conftest import example_inputs, logits_of, tiny_model

pytestmark = pytest.mark.usefixtures("native_library")


def _bsl_nodes(gm):
    return [n for n in gm.graph.nodes if is_block_sparse_linear(n)]


def _count(gm, target):
    return sum(n.target is target for n in gm.graph.nodes)


class Epilogues(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        mask = (torch.rand(2, 2, generator=g) < 0.7).int()

        def weight():  # scaled like nn.Linear's, so four layers deep the outputs stay O(1) and fp32 parity is fair
            return torch.randn(32, 32, generator=g) / math.sqrt(32)

        self.a = ops.BlockSparseLinear.from_dense(weight(), torch.randn(32, generator=g), mask, 16)
        self.b = ops.BlockSparseLinear.from_dense(weight(), None, mask, 16)
        self.c = ops.BlockSparseLinear.from_dense(weight(), None, mask, 16)
        self.d = ops.BlockSparseLinear.from_dense(weight(), None, mask, 16)
        self.shift = torch.nn.Parameter(torch.randn(32, generator=g))

    def forward(self, x, r):
        fused = F.gelu(self.a(x)) + r                               # both fold
        tanh = F.gelu(self.b(fused), approximate="tanh") + self.shift  # neither: tanh GELU, broadcast add
        y = self.c(tanh)
        shared = y + y.sum(-1, keepdim=True)                         # y has two users: nothing folds
        return r + self.d(shared)                                    # residual on the left folds


def test_folds_exact_gelu_and_same_shape_residuals_only():
    model = Epilogues()
    g = torch.Generator().manual_seed(1)
    x, r = torch.randn(5, 32, generator=g), torch.randn(5, 32, generator=g)
    dyn = {"x": {0: torch.export.Dim.DYNAMIC}, "r": {0: torch.export.Dim.DYNAMIC}}
    gm = torch.export.export(model, (x, r), dynamic_shapes=dyn).module()
    expected = model(x, r)
    gm = fuse_epilogues(gm)
    fused = [(n.kwargs.get("activation", "none"), n.kwargs.get("residual") is not None) for n in _bsl_nodes(gm)]
    assert fused == [("gelu", True), ("none", False), ("none", False), ("none", True)]
    assert _count(gm, torch.ops.aten.gelu.default) == 1  # the tanh one
    torch.testing.assert_close(gm(x, r), expected, rtol=1e-4, atol=1e-4)
    x9, r9 = torch.randn(9, 32, generator=g), torch.randn(9, 32, generator=g)
    torch.testing.assert_close(gm(x9, r9), model(x9, r9), rtol=1e-4, atol=1e-4)


def test_convert_folds_ffn_gelu_and_both_residuals_of_every_layer():
    model = tiny_model("bert").eval()
    prepared = mp.prepare(model, mp.PruningConfig(granularity=("block",), block_size=16), example_inputs())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mask in mask_modules(prepared).values():
            mask.scores.copy_(torch.randn(mask.scores.shape, generator=g))
            mask.threshold.fill_(math.log(0.4 / 0.6))
    prepared.eval()
    converted = mp.convert(prepared)
    nodes = _bsl_nodes(converted)
    layers = model.config.num_hidden_layers
    assert len(nodes) == 6 * layers
    assert sum(n.kwargs.get("activation") == "gelu" for n in nodes) == layers
    assert sum(n.kwargs.get("residual") is not None for n in nodes) == 2 * layers
    assert _count(converted, torch.ops.aten.gelu.default) == 0
    state = converted.meta["mlprune_fx"]
    names = {n.name for n in converted.graph.nodes}
    assert all(state.renamed[lm.site.node] in names for lm in state.linears)
    inputs = example_inputs(batch=4, seq=9, seed=3)
    torch.testing.assert_close(logits_of(converted(**inputs)), logits_of(prepared(**inputs)), rtol=1e-4, atol=1e-4)
