"""The head-cost benchmark at toy size: layouts parsed, FFN rows fill the share, the kept counts converted."""


import pytest
import torch

import mlprune_fx as mp
from benchmarks import head_cost


@pytest.fixture(scope="module")
def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=1100, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                        num_hidden_layers=2, max_position_embeddings=64, num_labels=3)
    return BertForSequenceClassification(config).eval()


def test_layouts_are_checked():
    assert head_cost.parse_layout("few=1,2", layers=2, heads=4) == ("few", [1, 2], None)
    assert head_cost.parse_layout("few=1,2@0.17", layers=2, heads=4) == ("few", [1, 2], 0.17)
    for bad in ("few", "few=1", "few=1,5", "few=0,1", "few=a,b", "few=1,2@", "few=1,2@1.5", "few=1,2@x"):
        with pytest.raises(SystemExit, match="heads kept per layer"):
            head_cost.parse_layout(bad, layers=2, heads=4)


def test_ffn_rows_spend_the_rest_of_the_share(tiny_bert):
    config = tiny_bert.config
    total = 2 * (4 * 32 * 32 + 2 * 32 * 64)
    for heads in ([1, 1], [4, 2]):
        rows = head_cost.ffn_rows(heads, 0.5, config)
        assert abs(rows[0] - rows[1]) <= 1
        spent = sum(heads) * 4 * 32 * 8 + sum(rows) * 2 * 32
        assert abs(spent - 0.5 * total) <= 2 * 32
    with pytest.raises(SystemExit, match="fewer heads"):
        head_cost.ffn_rows([4, 4], 0.5, config)


def test_converted_model_keeps_the_layout(tiny_bert):
    ids = torch.randint(1000, 1100, (2, 8))
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    gm = head_cost.with_kept(tiny_bert, example, [1, 3], [10, 20], seed=0)
    report = mp.sparsity_report(gm)
    assert sorted(k for k, _ in report.heads_kept.values()) == [1, 3]
    expected = (4 * 32 * 8 * 4 + 2 * 32 * 30) / (2 * (4 * 32 * 32 + 2 * 32 * 64))
    assert report.remaining == pytest.approx(expected, abs=1e-6)


def test_toy_run_prints_every_layout_at_every_length(tiny_bert, capsys):
    table = head_cost.main(["--layout", "few=1,1", "--layout", "many=3,3", "--layout", "lean=3,3@0.4", "--share", "0.5", "--seq", "8", "16",
                            "--repeats", "1"], model=tiny_bert)
    for seq in (8, 16):
        for name in ("dense", "few", "many", "lean"):
            assert f"| {seq} | {name} |" in table
    assert "batch 8, ONNX Runtime" in capsys.readouterr().out


def test_lengths_past_the_models_positions_are_refused(tiny_bert):
    with pytest.raises(SystemExit, match="the model's positions"):
        head_cost.main(["--layout", "few=1,1", "--share", "0.5", "--seq", "65"], model=tiny_bert)


def test_attention_cost_recovers_a_heads_worth_in_weights():
    # ms = 2 + weights / 1000 + heads * 0.5: a head costs 500 weights
    points = [(w, h, 2 + w / 1000 + h * 0.5) for w, h in ((10_000, 8), (2_000, 2), (2_000, 6), (2_000, 4))]
    assert head_cost.attention_cost(points) == pytest.approx(500)
    assert head_cost.attention_cost(points[:2]) is None  # two points cannot separate three terms
    assert head_cost.attention_cost([(10_000, 8, 9), (2_000, 2, 3), (4_000, 4, 5)]) is not None
    assert head_cost.attention_cost([(10_000, 8, 9), (5_000, 4, 5), (2_500, 2, 3)]) is None  # heads follow weights
