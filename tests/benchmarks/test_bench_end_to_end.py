"""The end-to-end benchmark's two forms of ours land at the same share of weights, in their own shapes."""

from benchmarks import bench_end_to_end


def test_multilevel_and_heads_rows_models_share_the_weight_budget():
    model, example = bench_end_to_end.bert_base(2)
    dense, multilevel, ratio, heads_rows, heads_rows_ratio = bench_end_to_end.build(model, example, 0.5, 0.4, 32, 0.7)
    assert 0.15 < ratio < 0.25
    assert abs(heads_rows_ratio - ratio) < 0.03
    assert multilevel.meta["mlprune_fx"].lowered
    assert not heads_rows.meta["mlprune_fx"].lowered
    logits = {name: gm(**example)["logits"] for name, gm in
              [("dense", dense), ("multilevel", multilevel), ("heads_rows", heads_rows)]}
    assert all(v.shape == logits["dense"].shape for v in logits.values())
