"""The packaged MiniLM on the packaged Rotten Tomatoes snippets: real weights, real text."""

import numpy as np
import pytest
import torch

import mlprune_fx as mp
from mlprune_fx.core.pruning_state import mask_modules
from mlprune_fx.tools.data import batches, load_dataset, tokenize
from mlprune_fx.training import train

from conftest import randomize_masks


@pytest.fixture(scope="module")
def real_batches(minilm):
    _, tokenizer = minilm
    splits = load_dataset("rotten_tomatoes", max_examples=400, seed=0)
    encoded = tokenize(splits.train, tokenizer, max_length=48)
    return list(batches(encoded, batch_size=16, shuffle=True, seed=0))


def test_a_few_leap_steps_move_masks_and_lower_the_remaining_ratio(minilm, real_batches):
    model, _ = minilm
    torch.manual_seed(0)
    example = real_batches[0]
    cfg = mp.PruningConfig(target=0.3, initial_threshold=1.0)
    prepared = mp.prepare(model, cfg, example)
    before = {k: (m.scores.detach().clone(), float(m.threshold.detach())) for k, m in mask_modules(prepared).items()}
    soft0 = mp.sparsity_report(prepared).soft_remaining
    hard0 = mp.sparsity_report(prepared).remaining
    log = train(prepared, real_batches, steps=8, lr=3e-5, mask_lr=0.1, warmup=0.0, progress=False)
    report = mp.sparsity_report(prepared)
    after = mask_modules(prepared)
    assert all(float(after[k].threshold.detach()) < t for k, (_, t) in before.items()), "every threshold should fall"
    assert any(not torch.equal(after[k].scores, s) for k, (s, _) in before.items()), "scores should move"
    assert report.soft_remaining < soft0 and report.remaining < hard0
    assert report.remaining > cfg.target - 0.05  # moving toward the target, not past it in 8 steps
    assert log.rho[-1] < log.rho[0] and log.lam[0] >= 50
    assert all(np.isfinite(log.loss))


def test_converted_minilm_matches_on_real_text_in_torch_and_onnx_runtime(minilm, real_batches, tmp_path):
    model, _ = minilm
    batch = {k: v for k, v in real_batches[0].items() if k != "labels"}
    prepared = mp.prepare(model, mp.PruningConfig(), batch)
    randomize_masks(prepared, seed=21, keep=(0.3, 0.7), all_pruned=("layer_5_attention__heads",))
    prepared.eval()
    converted = mp.convert(prepared)
    for b in real_batches[1:3]:
        inputs = {k: v for k, v in b.items() if k != "labels"}
        expected = prepared(**inputs).logits
        assert (converted(**inputs).logits - expected).abs().max() <= 1e-4
    path = mp.export_onnx(converted, tmp_path / "minilm.onnx", batch)
    session = mp.runtime.InferenceSession(path, num_threads=2)
    for b in real_batches[3:5]:
        inputs = {k: v for k, v in b.items() if k != "labels"}
        got = session(**inputs)["logits"]
        assert np.abs(got - prepared(**inputs).logits.detach().numpy()).max() <= 1e-4
