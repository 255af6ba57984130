"""The shapes benchmark at toy size: every form of every random shape timed, ratios to convert's choice."""

import pytest

from benchmarks import bench_shapes


@pytest.mark.parametrize("option", [None, "--blocks", "--int8"])
def test_toy_run_times_every_form_beside_the_noise_control(monkeypatch, capsys, tmp_path, option):
    import mlprune_fx as mp

    from conftest import tiny_model

    monkeypatch.setattr(bench_shapes, "model_named", lambda name, layers: tiny_model("bert", layers=1).eval())
    cost = mp.CostModel(weight_ns=0.002, block_weight_ns=0.0, head_ns=0.001, fixed_ns=0.5, scatter_ns=0.05)
    path = cost.save(tmp_path / "cost.json")
    bench_shapes.main(["--cost-model", str(path), "--shapes", "2", "--batch", "1", "--seq", "16", "--threads", "1",
                       "--rounds", "1", "--repeats", "1", "--multiple", "8"] + ([option] if option else []))
    out = capsys.readouterr().out
    for form in {"--blocks": bench_shapes.BLOCK_FORMS, "--int8": bench_shapes.INT8_FORMS}.get(option, bench_shapes.FORMS):
        assert f"| {form} |" in out
    assert out.count("| #10") == 2 and "geometric mean of ms / auto: auto (again)" in out


def test_int8_and_blocks_together_are_refused(capsys):
    with pytest.raises(SystemExit):
        bench_shapes.main(["--cost-model", "unused.json", "--int8", "--blocks"])
    assert "leave out --blocks" in capsys.readouterr().err
