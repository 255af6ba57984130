"""The kernel benchmark at toy size: every row timed, the target summary printed."""

import time

from benchmarks import bench_kernel


def test_interleaved_timing_keeps_each_callable_apart():
    ms = bench_kernel.median_ms({"fast": lambda: None, "slow": lambda: time.sleep(0.002)},
                                rounds=2, min_time=0.0, min_reps=3, settle=0.0)
    assert set(ms) == {"fast", "slow"} and ms["slow"] >= 2.0 > ms["fast"]
    assert isinstance(bench_kernel.median_ms(lambda: None, rounds=1, min_time=0.0, settle=0.0), float)


def test_toy_run_prints_table_and_summary(tmp_path, capsys, monkeypatch):
    real = bench_kernel.median_ms
    monkeypatch.setattr(bench_kernel, "median_ms",
                        lambda fns: real(fns, rounds=2, min_time=0.0, min_reps=2, max_reps=2, warmup=1, settle=0.0))
    md = tmp_path / "kernel.md"
    assert bench_kernel.main(["--shapes", "64x64", "--rows", "128", "--densities", "0.5", "--blocks", "32", "16",
                              "--threads", "1", "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert "target met in 0/1 rows" in out or "target met in 1/1 rows" in out
    assert "b = 16: efficiency" in out
    assert md.read_text().count("| 64x64 | 128 | 0.50 |") == 2
