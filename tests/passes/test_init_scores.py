import math

import pytest
import torch

import mlprune_fx as mp
from mlprune_fx.core.pruning_state import mask_modules

from conftest import prepare_tiny, tiny_model

PRIOR = 1.5
LAYER = "bert.encoder.layer.1."


def rescaled(norms: torch.Tensor, prior: float = PRIOR) -> torch.Tensor:
    return prior * (norms - norms.min()) / (norms.max() - norms.min())


def weights() -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in tiny_model("bert").named_parameters()}


def test_head_scores_start_from_the_norm_of_their_q_k_v_rows_and_o_columns():
    prepared = prepare_tiny(config=mp.PruningConfig(magnitude_prior=PRIOR))
    w, heads, dim = weights(), 4, 16
    squares = sum(w[LAYER + f"attention.self.{m}.weight"].reshape(heads, dim, -1).pow(2).sum((1, 2))
                  for m in ("query", "key", "value"))
    squares = squares + w[LAYER + "attention.output.dense.weight"].reshape(-1, heads, dim).pow(2).sum((0, 2))
    scores = mask_modules(prepared)["bert_encoder_layer_1_attention__heads"].scores.detach()
    torch.testing.assert_close(scores, rescaled(squares.sqrt()))


def test_ffn_row_scores_count_fc1_rows_and_fc2_columns():
    prepared = prepare_tiny(config=mp.PruningConfig(magnitude_prior=PRIOR, initial_score=-2.0))
    w = weights()
    norms = (w[LAYER + "intermediate.dense.weight"].pow(2).sum(1) + w[LAYER + "output.dense.weight"].pow(2).sum(0)).sqrt()
    scores = mask_modules(prepared)["bert_encoder_layer_1_intermediate_dense__rows"].scores.detach()
    torch.testing.assert_close(scores, rescaled(norms) - 2.0)


def test_block_and_element_scores_follow_their_weights():
    config = mp.PruningConfig(granularity=("block", "unstructured"), block_size=16, magnitude_prior=PRIOR)
    masks = mask_modules(prepare_tiny(config=config))
    q = weights()[LAYER + "attention.self.query.weight"]
    blocks = q.reshape(4, 16, 4, 16).pow(2).sum((1, 3)).sqrt()
    torch.testing.assert_close(masks["bert_encoder_layer_1_attention_self_query__blocks"].scores.detach(), rescaled(blocks))
    torch.testing.assert_close(masks["bert_encoder_layer_1_attention_self_query__elements"].scores.detach(), rescaled(q.abs()))


def test_the_first_cut_drops_the_smallest_units():
    prepared = prepare_tiny(config=mp.PruningConfig(magnitude_prior=PRIOR))
    w = weights()
    norms = (w[LAYER + "intermediate.dense.weight"].pow(2).sum(1) + w[LAYER + "output.dense.weight"].pow(2).sum(0)).sqrt()
    mask = mask_modules(prepared)["bert_encoder_layer_1_intermediate_dense__rows"]
    with torch.no_grad():
        mask.threshold.fill_(math.log(0.25 / 0.75))
    kept = mask().bool()
    assert int(kept.sum()) == 32
    assert set(kept.nonzero().flatten().tolist()) == set(norms.topk(32).indices.tolist())


def test_without_a_prior_every_score_starts_equal():
    masks = mask_modules(prepare_tiny(config=mp.PruningConfig(initial_score=0.5)))
    assert all(bool((m.scores == 0.5).all()) for m in masks.values())


@pytest.mark.parametrize("prior", [-0.1, float("nan"), float("inf"), "1"])
def test_a_prior_that_is_not_a_finite_number_at_least_0_is_refused(prior):
    with pytest.raises(mp.ConfigError, match="magnitude_prior"):
        mp.PruningConfig(magnitude_prior=prior)
