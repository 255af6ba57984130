"""The cost-model benchmark at toy size: calibrated, random shapes timed, predicted beside measured."""

import pytest

from benchmarks import bench_cost_model

pytestmark = pytest.mark.usefixtures("native_library")


def test_toy_run_prints_predicted_and_measured(monkeypatch, capsys):
    from conftest import tiny_model

    monkeypatch.setattr(bench_cost_model, "model_named", lambda name, layers: tiny_model("bert", layers=1).eval())
    bench_cost_model.main(["--shapes", "3", "--batch", "1", "--seq", "16", "--threads", "1", "--rounds", "1",
                           "--repeats", "1"])
    out = capsys.readouterr().out
    assert "| #0 units kept" in out and "| #1 units kept" in out and "blocks" in out
    assert "| #2 units kept" in out and "output rows (auto)" in out and "output rows (compacted)" in out
    assert "prediction error mean" in out and "always compacted" in out
