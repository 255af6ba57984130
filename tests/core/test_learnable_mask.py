import math

import pytest
import torch

import mlprune_fx as mp
from mlprune_fx.core.learnable_mask import keep_count
from mlprune_fx.core.pruning_state import mask_modules

from conftest import example_inputs, logits_of, randomize_masks, tiny_model


@pytest.mark.parametrize("threshold, n", [(10.0, 12), (0.0, 12), (0.0, 13), (-2.0, 1536), (-1000.0, 7), (3.0, 1)])
def test_keep_count_is_ceil_of_sigmoid_times_n(threshold, n):
    expected = math.ceil(1 / (1 + math.exp(-threshold)) * n) if threshold > -700 else 0
    assert keep_count(torch.tensor(threshold), n) == min(n, expected)


def test_topk_keeps_the_largest_scores_and_passes_gradients_straight_through():
    mask = mp.LearnableMask("row", (6,), initial_threshold=0.0)
    with torch.no_grad():
        mask.scores.copy_(torch.tensor([0.1, 3.0, -1.0, 2.0, 0.5, -4.0]))
    m = mask()
    assert m.tolist() == [0, 1, 0, 1, 1, 0]
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    (m * upstream).sum().backward()
    torch.testing.assert_close(mask.scores.grad, upstream)
    torch.testing.assert_close(mask.threshold.grad, torch.tensor(2.0 + 4.0 + 5.0))


def test_block_and_unstructured_masks_have_the_right_shapes():
    assert mp.LearnableMask("block", (4, 3))().shape == (4, 3)
    with pytest.raises(ValueError, match="granularity"):
        mp.LearnableMask("channel", (3,))


def test_prepared_model_holds_one_mask_per_structure():
    prepared = mp.prepare(tiny_model("bert", layers=3), mp.PruningConfig(), example_inputs())
    masks = mask_modules(prepared)
    kinds = sorted(m.granularity for m in masks.values())
    assert kinds.count("head") == 3 and kinds.count("row") == 9  # O rows, FC1 rows, FC2 rows
    heads = [m for m in masks.values() if m.granularity == "head"]
    assert all(m.scores.shape == (4,) for m in heads)
    assert all(isinstance(m, mp.LearnableMask) for m in masks.values())
    names = dict(prepared.named_parameters())
    assert any(n.startswith("mlprune_masks.") and n.endswith(".threshold") for n in names)


def test_granularity_choice_controls_which_masks_exist():
    only_heads = mp.prepare(tiny_model("bert"), mp.PruningConfig(granularity=("head",)), example_inputs())
    assert {m.granularity for m in mask_modules(only_heads).values()} == {"head"}
    no_out = mp.prepare(tiny_model("bert"), mp.PruningConfig(granularity="row", prune_output_rows=False), example_inputs())
    assert len(mask_modules(no_out)) == 2


def test_a_pruned_head_zeroes_its_q_k_v_rows_biases_and_o_columns():
    prepared = mp.prepare(tiny_model("bert"), mp.PruningConfig(granularity=("head",)), example_inputs())
    key = next(k for k in mask_modules(prepared) if "layer_0" in k)
    with torch.no_grad():
        mask_modules(prepared)[key].scores.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
        mask_modules(prepared)[key].threshold.fill_(1.0)  # ceil(0.73 * 4) = 3 of 4 kept: head 0 goes
    from mlprune_fx.passes.freeze_masks import freeze_masks

    frozen = freeze_masks(prepared)
    layer = frozen.get_submodule("bert.encoder.layer.0.attention")
    for lin in (layer.self.query, layer.self.key, layer.self.value):
        assert lin.weight[:16].abs().max() == 0 and lin.bias[:16].abs().max() == 0
        assert lin.weight[16:].abs().min() > 0
    assert layer.output.dense.weight[:, :16].abs().max() == 0


def test_state_dict_round_trips_into_a_fresh_prepare():
    cfg = mp.PruningConfig()
    a = mp.prepare(tiny_model("bert", seed=1), cfg, example_inputs())
    randomize_masks(a, seed=3)
    b = mp.prepare(tiny_model("bert", seed=2), cfg, example_inputs())
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    torch.testing.assert_close(logits_of(a(**example_inputs())), logits_of(b(**example_inputs())), atol=0, rtol=0)


def test_any_torch_optimizer_moves_scores_and_thresholds():
    prepared = mp.prepare(tiny_model("bert"), mp.PruningConfig(target=0.3, initial_threshold=2.0), example_inputs())
    randomize_masks(prepared, keep=(0.6, 0.6))
    before = {k: v.detach().clone() for k, v in prepared.named_parameters() if "mlprune_masks" in k}
    opt = torch.optim.SGD(prepared.parameters(), lr=0.1)
    labels = torch.tensor([0, 1, 1])
    for _ in range(3):
        out = prepared(**example_inputs())
        loss = torch.nn.functional.cross_entropy(out.logits, labels) + mp.regularization(prepared)
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = dict(prepared.named_parameters())
    moved = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert any(k.endswith(".scores") for k in moved) and any(k.endswith(".threshold") for k in moved)
