"""The shapes benchmark at toy size: every form of every random shape timed, ratios to convert's choice."""

import pytest

from benchmarks import bench_shapes


@pytest.mark.parametrize("blocks", [False, True])
def test_toy_run_times_every_form_beside_the_noise_control(monkeypatch, capsys, tmp_path, blocks):
    import mlprune_fx as mp

    from conftest import tiny_model

    monkeypatch.setattr(bench_shapes, "model_named", lambda name, layers: tiny_model("bert", layers=1).eval())
    cost = mp.CostModel(weight_ns=0.002, block_weight_ns=0.0, head_ns=0.001, fixed_ns=0.5, scatter_ns=0.05)
    path = cost.save(tmp_path / "cost.json")
    bench_shapes.main(["--cost-model", str(path), "--shapes", "2", "--batch", "1", "--seq", "16", "--threads", "1",
                       "--rounds", "1", "--repeats", "1", "--multiple", "8"] + (["--blocks"] if blocks else []))
    out = capsys.readouterr().out
    for form in bench_shapes.BLOCK_FORMS if blocks else bench_shapes.FORMS:
        assert f"| {form} |" in out
    assert out.count("| #10") == 2 and "geometric mean of ms / auto: auto (again)" in out
