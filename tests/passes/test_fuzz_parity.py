"""Hypothesis draws encoders and masks; convert and ONNX Runtime must match the masked model.

More examples: MLPRUNE_FUZZ_EXAMPLES=200 make test PYTEST_ARGS="tests/passes/test_fuzz_parity.py"
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlprune_fx as mp

from conftest import EAGER_ONLY, NEW_FAMILIES, example_inputs, logits_of, randomize_masks, tiny_model

pytestmark = pytest.mark.usefixtures("native_library")

EXAMPLES = int(os.environ.get("MLPRUNE_FUZZ_EXAMPLES", "5"))
GRANULARITIES = st.sets(st.sampled_from(["head", "row", "block", "unstructured"]), min_size=1)


@st.composite
def encoders(draw, kinds=("bert", "roberta", "distilbert", "electra", "bertmodel")):
    kind = draw(st.sampled_from(kinds))
    attn = "eager" if kind in EAGER_ONLY else draw(st.sampled_from(["sdpa", "eager"]))
    granularity = tuple(sorted(draw(GRANULARITIES)))
    heads = draw(st.integers(1, 6))
    if "block" in granularity:
        head_dim = draw(st.sampled_from([16, 32]))
        inter = 16 * draw(st.integers(1, 12))
    else:
        head_dim = draw(st.sampled_from([4, 8, 12, 16]))
        inter = draw(st.integers(1, 150))
    return dict(
        kind=kind, attn=attn, granularity=granularity, layers=draw(st.integers(1, 3)), heads=heads,
        hidden=heads * head_dim, inter=inter, seed=draw(st.integers(0, 2**16)),
        all_pruned=draw(st.sampled_from([(), ("layer_0_attention__heads",), ("__heads",), ("__rows",), ("__blocks",)])),
        output_rows=draw(st.booleans()),
    )


def _convert_and_compare(spec, tmp_path_factory):
    model = tiny_model(spec["kind"], spec["attn"], hidden=spec["hidden"], heads=spec["heads"], inter=spec["inter"], layers=spec["layers"], seed=spec["seed"] % 100)
    cfg = mp.PruningConfig(granularity=spec["granularity"], block_size=16, prune_output_rows=spec["output_rows"])
    prepared = mp.prepare(model, cfg, example_inputs())
    randomize_masks(prepared, seed=spec["seed"], keep=(0.1, 0.9), all_pruned=spec["all_pruned"])
    prepared.eval()
    converted = mp.convert(prepared)
    path = mp.export_onnx(converted, tmp_path_factory.mktemp("fuzz") / "m.onnx", example_inputs())
    session = mp.runtime.InferenceSession(path, num_threads=2)
    for b, s in [(1, 4), (3, 17)]:
        x = example_inputs(b, s, seed=spec["seed"] + b)
        expected = logits_of(prepared(**x))
        got = logits_of(converted(**x))
        assert (got - expected).abs().max() <= 1e-4, spec
        out = next(iter(session(**x).values()))
        assert np.abs(out - expected.detach().numpy()).max() <= 1e-4, spec


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=encoders())
def test_convert_and_onnx_parity_on_drawn_encoders(spec, tmp_path_factory):
    _convert_and_compare(spec, tmp_path_factory)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=encoders(kinds=NEW_FAMILIES))
def test_convert_and_onnx_parity_on_drawn_new_families(spec, tmp_path_factory):
    """MPNet, DeBERTa (v2, v3 style), ModernBERT, ALBERT: score terms, fused QKV, gated FFN, rotary, shared layers."""
    _convert_and_compare(spec, tmp_path_factory)
