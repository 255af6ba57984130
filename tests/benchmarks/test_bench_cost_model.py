"""The cost-model benchmark at toy size: random shapes timed, predicted by every fit beside measured."""

import pytest

import mlprune_fx as mp
from benchmarks import bench_cost_model
from mlprune_fx.core.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("native_library")


def test_toy_run_prints_predicted_and_measured(monkeypatch, capsys, tmp_path):
    """One fit per output-rows share (calibrate sees each in turn; the shipped share is restored) and a fit from a
    file predict every timed shape: plain, with blocks, with output rows as convert chooses and compacted."""
    from conftest import tiny_model

    shares = []

    def fake_calibrate(model, **kw):  # calibrate itself is timed in tests/test_calibrate.py
        shares.append(bench_cost_model.calibration.OUTPUT_ROWS_VARIANT)
        return mp.CostModel(0.01, 0.01, 0.05, 1.0, scatter_ns=len(shares), batch=1, seq=16, threads=1,
                            fit={"max_error": 0.0, "layers_timed": 1})

    other = mp.CostModel(weight_ns=0.02, block_weight_ns=0.01, head_ns=0.05, fixed_ns=1.0).save(tmp_path / "other.json")
    monkeypatch.setattr(bench_cost_model, "model_named", lambda name, layers: tiny_model("bert", layers=1).eval())
    monkeypatch.setattr(bench_cost_model.mp, "calibrate", fake_calibrate)
    bench_cost_model.main(["--shapes", "3", "--batch", "1", "--seq", "16", "--threads", "1", "--rounds", "1",
                           "--repeats", "1", "--kept", "0.05", "0.3", "--output-rows-kept", "0.5", "0.99",
                           "--compare", str(other)])
    out = capsys.readouterr().out
    assert "| #0 units kept" in out and "| #1 units kept" in out and "blocks" in out
    assert "| #2 units kept" in out and "output rows (auto)" in out and "output rows (compacted)" in out
    assert "always compacted" in out and "units kept 5%-30% a matrix" in out
    assert shares == [0.5, 0.99] and bench_cost_model.calibration.OUTPUT_ROWS_VARIANT == 0.5
    assert out.count("calibrated in") == 2 and "output rows 99.0% kept" in out
    assert "predicted by output rows 99.0%" in out and f"predicted by {other}" in out
    assert "prediction error of output rows 50.0%: mean" in out and f"prediction error of {other}: mean" in out


@pytest.mark.parametrize("argv", [["--kept", "0.5", "0.2"], ["--output-rows-kept", "0"], ["--compare", "missing.json"]])
def test_bad_options_fail_before_timing(argv):
    with pytest.raises((SystemExit, CheckpointError)):
        bench_cost_model.main(argv)
