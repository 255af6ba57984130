"""Patterns from hand-written encoders: a gated FFN with two up-projections, fused QKV split with
chunk or laid out per head, pre-norm residuals, a score term compaction cannot slice, a shared
weight read outside any block."""

import numpy as np
import pytest
import torch
from pattern_encoders import FoldedBiasEncoder, GatedEncoder, SharedOutsideEncoder

import mlprune_fx as mp
from mlprune_fx.core.pruning_state import pruning_state

from conftest import randomize_masks

pytestmark = pytest.mark.usefixtures("native_library")


def _ids(batch=3, seq=9, seed=0):
    return {"input_ids": torch.randint(0, 50, (batch, seq), generator=torch.Generator().manual_seed(seed))}


def _prune_and_check(model, tmp_path, seed=1, **config):
    torch.manual_seed(0)
    prepared = mp.prepare(model, mp.PruningConfig(**config), _ids())
    randomize_masks(prepared, seed=seed, keep=(0.2, 0.7))
    prepared.eval()
    converted = mp.convert(prepared)
    session = mp.runtime.InferenceSession(mp.export_onnx(converted, tmp_path / "m.onnx", _ids()), num_threads=2)
    for b, s in [(1, 4), (2, 15)]:
        x = _ids(b, s, seed=b)
        expected = prepared(**x)
        assert (converted(**x) - expected).abs().max() <= 1e-4
        assert np.abs(next(iter(session(**x).values())) - expected.detach().numpy()).max() <= 1e-4
    assert sum(p.numel() for p in converted.parameters()) < sum(p.numel() for p in model.parameters())
    return prepared


def test_two_up_projections_share_one_row_mask(tmp_path):
    prepared = _prune_and_check(GatedEncoder(), tmp_path, granularity=("head", "row", "block"), block_size=16)
    state = pruning_state(prepared)
    for block in state.structure.ffn:
        assert block.paired is not None and "silu" in block.activation
        assert state.masks_of(block.fc1.weight).rows == state.masks_of(block.paired.weight).rows
        assert block.fc2_residual is not None  # pre-norm: the add is to what the norm read
    assert all(a.o_residual for a in state.structure.attention)


def test_fused_qkv_split_by_chunk_and_a_chunked_gated_ffn(tmp_path):
    prepared = _prune_and_check(GatedEncoder(fused="chunk", chunked=True), tmp_path)
    block = pruning_state(prepared).structure.attention[0]
    assert block.q == block.k == block.v


def test_fused_qkv_laid_out_per_head_is_left_alone_with_the_reason():
    structure = mp.describe(GatedEncoder(fused="per_head"), _ids(), show=False)
    assert not structure.attention and len(structure.ffn) == 2
    reasons = {s.reason for s in structure.skipped if "attn" in s.weight}
    assert all("splits the head axis" in r and "[3][heads][head_dim]" in r for r in reasons)


def test_a_score_term_compaction_cannot_slice_is_named():
    structure = mp.describe(FoldedBiasEncoder(), _ids(), show=False)
    assert not structure.attention and len(structure.ffn) == 1
    reason = next(s.reason for s in structure.skipped if s.weight == "q.weight")
    assert reason.startswith("Q/K/V found; the scores take an additive term from head_bias;")
    assert "also counts the batch" in reason


def test_shared_weight_read_outside_any_block_is_refused_by_name():
    structure = mp.describe(SharedOutsideEncoder(), _ids(), show=False)
    assert not structure
    assert all("shared weight fc1.weight is also read by" in s.reason for s in structure.skipped)
    with pytest.raises(mp.UnsupportedModelError, match="shared weight fc1.weight"):
        mp.prepare(SharedOutsideEncoder(), mp.PruningConfig(), _ids())
