"""Interrupted and resumed pruning ends with the same masks as an uninterrupted run."""

import pytest
import torch

import mlprune_fx as mp
from mlprune_fx.core.pruning_state import mask_modules
from mlprune_fx.training import train

from conftest import example_inputs, prepare_tiny, tiny_model

STEPS = 10


def _batches():
    out = []
    for i in range(4):
        x = example_inputs(4, 12, seed=100 + i)
        out.append({**x, "labels": torch.tensor([0, 1, 1, 0])})
    return out


def _fresh():
    torch.manual_seed(0)
    cfg = mp.PruningConfig(target=0.4, initial_threshold=2.0)
    return prepare_tiny("bert", config=cfg, inputs=_batches()[0], layers=2)


class _Interrupt(Exception):
    pass


def _stopping_at(batches, stop):
    def epoch(i):
        for j, b in enumerate(batches):
            if i * len(batches) + j == stop and stop is not None:
                raise _Interrupt
            yield b

    return epoch


def _masks(prepared):
    return {k: (m.scores.detach().clone(), m.threshold.detach().clone()) for k, m in mask_modules(prepared).items()}


@pytest.mark.parametrize("interrupt_at", [6, 9])  # before and after the thresholds are held (step 5)
def test_resumed_run_ends_like_an_uninterrupted_one(tmp_path, interrupt_at):
    data = _batches()
    torch.manual_seed(1)
    whole = _fresh()
    log_whole = train(whole, data, STEPS, mask_lr=0.2, progress=False, checkpoint=tmp_path / "a", save_every=4)

    torch.manual_seed(1)
    part = _fresh()
    with pytest.raises(_Interrupt):
        train(part, _stopping_at(data, interrupt_at), STEPS, mask_lr=0.2, progress=False, checkpoint=tmp_path / "b", save_every=4)
    resumed = _fresh()
    torch.manual_seed(123)  # the saved RNG state, not this one, must drive the rest
    log_resumed = train(resumed, data, STEPS, mask_lr=0.2, progress=False, checkpoint=tmp_path / "b", save_every=4, resume=True)

    a, b = _masks(whole), _masks(resumed)
    for key in a:
        assert torch.equal(a[key][0], b[key][0]), key
        assert torch.equal(a[key][1], b[key][1]), key
    assert log_whole.loss == log_resumed.loss
    assert log_whole.hold_from == log_resumed.hold_from
    assert log_whole.hold_churn is not None and log_whole.hold_churn == log_resumed.hold_churn
    assert mp.sparsity_report(whole).remaining == mp.sparsity_report(resumed).remaining
    for (n1, p1), (n2, p2) in zip(whole.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p1, p2), n1


def test_resume_from_nothing_or_another_model_is_a_clear_error(tmp_path):
    with pytest.raises(mp.CheckpointError, match="nothing to resume"):
        train(_fresh(), _batches(), 2, progress=False, checkpoint=tmp_path / "none", resume=True)
    train(_fresh(), _batches(), 2, progress=False, checkpoint=tmp_path / "c", save_every=1)
    other = mp.prepare(tiny_model("bert", layers=1), mp.PruningConfig(), _batches()[0])
    with pytest.raises(mp.CheckpointError, match="another model"):
        train(other, _batches(), 2, progress=False, checkpoint=tmp_path / "c", resume=True)
