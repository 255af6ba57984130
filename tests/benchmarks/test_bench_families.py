"""The families benchmark at toy size: every model built, pruned to half, exported, timed, tabled."""

import pytest

from benchmarks import bench_families

pytestmark = pytest.mark.usefixtures("native_library")


def test_toy_run_prints_the_table(tmp_path, capsys):
    md = tmp_path / "families.md"
    assert bench_families.main(["--layers", "1", "--hidden", "32", "--heads", "4", "--inter", "64", "--vocab", "200",
                                "--batches", "2", "--seq", "8", "--rounds", "1", "--runs", "1", "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("machine: ")
    table = md.read_text()
    assert "| model | batch x seq | dense ms | pruned ms | speed-up |" in table
    rows = [line for line in table.splitlines() if line.startswith(("| mpnet", "| deberta", "| bert"))]
    assert len(rows) == 3
    assert all("| 2/4 |" in row for row in rows)  # half of each layer's heads kept


def test_keep_must_be_a_fraction():
    with pytest.raises(SystemExit):
        bench_families.main(["--keep", "1.5"])
