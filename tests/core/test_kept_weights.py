"""The one counter of kept weights agrees with the full mask it avoids building, for every mix of masks."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlprune_fx as mp
from mlprune_fx.core.kept_weights import effective_mask, kept_share, kept_weights
from mlprune_fx.core.pruning_state import LinearMasks, MaskRef
from mlprune_fx.core.structures import LinearSite

from conftest import prepare_tiny, randomize_masks


def _binary(shape, draw, p):
    return (torch.rand(shape, generator=torch.Generator().manual_seed(draw)) < p).float()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.sampled_from([None, 1, 4]), cols=st.sampled_from([None, 1, 8]), blocks=st.booleans(), elements=st.booleans(),
    seed=st.integers(0, 10_000), keep=st.floats(0.0, 1.0),
)
def test_kept_weights_is_the_sum_of_the_effective_mask(rows, cols, blocks, elements, seed, keep):
    out, inp, block = 32, 64, 16
    site = LinearSite("linear", "w", None, out, inp)
    masks, refs = {}, {}
    if rows is not None:
        masks["r"], refs["rows"] = _binary((out // rows,), seed, keep), MaskRef("r", rows)
    if cols is not None:
        masks["c"], refs["cols"] = _binary((inp // cols,), seed + 1, keep), MaskRef("c", cols)
    if blocks:
        masks["b"], refs["blocks"] = _binary((out // block, inp // block), seed + 2, keep), MaskRef("b")
    if elements:
        masks["e"], refs["elements"] = _binary((out, inp), seed + 3, keep), MaskRef("e")
    lm = LinearMasks(site, **refs)
    assert float(kept_weights(lm, masks, block)) == float(effective_mask(lm, masks, block).sum())


@pytest.mark.parametrize("granularity", [("head", "row"), ("block",), ("head", "row", "unstructured")])
def test_the_report_and_the_training_loop_count_alike(granularity):
    prepared = prepare_tiny(config=mp.PruningConfig(granularity=granularity, block_size=16))
    randomize_masks(prepared, seed=3)
    report = mp.sparsity_report(prepared)
    assert 0 < report.remaining < 1
    assert kept_share(prepared) == pytest.approx(report.remaining, abs=1e-12)
    converted = mp.convert(prepared, lower_blocks=False)
    assert mp.sparsity_report(converted).kept == report.kept
