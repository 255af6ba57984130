"""The frontier benchmark end to end at toy size: calibration, every method at a speed-up, int8 forms, the verdicts."""

import json

import pytest

from benchmarks import bench_frontier

pytestmark = pytest.mark.usefixtures("small_bert")  # tests/conftest.py


def test_toy_frontier_runs_every_method_and_prints_the_targets(tmp_path, capsys):
    # a speed-up target (with blocks: plain mlprune_speedup is the same path with one granularity less), a peer
    # through ORT's quantize_dynamic, and a speed-up asked of the int8 form; each cell costs about 30 s of exports
    methods = ["mlprune_speedup_blocks", "mlprune_speedup_int8", "magnitude"]
    argv = ["--datasets", "rotten_tomatoes", "--speedups", "3", "--seeds", "0", "--methods", *methods,
            "--threads", "1", "--batch", "1", "--seq", "8", "--rounds", "1", "--repeats", "1", "--no-progress",
            "--out", str(tmp_path), "--", "--examples", "120", "--finetune-steps", "2", "--prune-steps", "4",
            "--batch-size", "8", "--max-length", "16", "--repeats", "1"]
    # a made-up calibration (mlprune_fx.calibrate has its own tests): a toy model's timings are all fixed cost
    bench_frontier.mp.CostModel(0.01, 0.01, 0.06, 0.1, batch=1, seq=8, threads=1).save(tmp_path / "cost_model.json")
    bench_frontier.mp.CostModel(0.004, 0.004, 0.06, 0.1, batch=1, seq=8, threads=1, quantize="int8").save(
        tmp_path / "cost_model_int8.json")
    bench_frontier.main(argv)
    out = capsys.readouterr().out
    assert (tmp_path / "frontier.png").stat().st_size > 0
    results = json.loads((tmp_path / "seed0" / "results.json").read_text())
    cells = results["datasets"]["rotten_tomatoes"]["cells"]
    assert set(cells) == {f"{m}@0.333333" for m in methods}
    assert all(c["predicted_speedup"] > 0 for c in cells.values())
    assert results["settings"]["cost_model"] == str(tmp_path / "cost_model.json")
    int8 = json.loads((tmp_path / "int8.json").read_text())
    assert {f"seed0/rotten_tomatoes/{m}@0.333333" for m in methods} | {"seed0/rotten_tomatoes/dense"} == set(int8)
    assert all(int8[f"seed0/rotten_tomatoes/{m}@0.333333"]["fp32_ms"] > 0 for m in methods)  # fp32 timed alone too
    assert {r["machine"] for r in int8.values()} == {bench_frontier.machine_line()}
    assert {c["machine"] for c in cells.values()} == {bench_frontier.machine_line()}  # the cells' own timings
    md = (tmp_path / "frontier.md").read_text()
    for name in ["dense", "dense + ORT quantize_dynamic", "mlprune_speedup_blocks + int8",
                 "magnitude + ORT quantize_dynamic"]:
        assert f"| {name} |" in md
    assert "rotten_tomatoes mlprune_speedup_blocks asked 3x: measured" in out and "within 1 point" in out
    assert "rotten_tomatoes mlprune_speedup_blocks @ 3x: predicted" in out
    # the int8-targeted model: trained under the int8 fit, its prediction and the asked S judged on its int8 form
    extra = cells["mlprune_speedup_int8@0.333333"]["extra"]
    assert extra["int8_cost_model"] == str(tmp_path / "cost_model_int8.json") and extra["int8_gain"] > 1
    assert "rotten_tomatoes mlprune_speedup_int8 + int8 @ 3x: predicted" in out
    assert "rotten_tomatoes mlprune_speedup_int8 + int8 asked 3x: measured" in out
    assert "rotten_tomatoes mlprune_speedup_int8 @ 3x: predicted" not in out
    assert "Frontier (best mean test accuracy at the speed-up or faster" in md
    assert f"Timed on: {bench_frontier.machine_line()} (7 points)" in md  # dense qd, 3 cells fp32 and int8
    # resumable: a second run trains nothing and times nothing again
    capsys.readouterr()
    bench_frontier.main(argv)
    out = capsys.readouterr().out
    assert ": remaining" not in out and "int8 test" not in out
    bench_frontier.main(argv[:argv.index("--")] + ["--train-only"] + argv[argv.index("--"):])
    out = capsys.readouterr().out
    assert f"trained and scored into {tmp_path}" in out and "written:" not in out
    # a report of what the folder holds, with a seed that has nothing yet
    bench_frontier.main(argv[:argv.index("--")] + ["--report-only", "--seeds", "0", "7"])
    assert "| mlprune_speedup_blocks | 3x | 1 |" in capsys.readouterr().out
    # another fit judged on the same models: the fit that trained them predicts what their cells did
    cost = bench_frontier.mp.CostModel.load(tmp_path / "cost_model.json")
    again = bench_frontier.predictions_with([tmp_path / "seed0"], cost, type("Args", (), {"methods": methods, "speedups": [3.0]}))
    assert again.pop("seed0/rotten_tomatoes/mlprune_speedup_int8@0.333333") > 0  # of its float32 form
    assert again == pytest.approx({f"seed0/rotten_tomatoes/{k}": c["predicted_speedup"] for k, c in cells.items()
                                   if not k.startswith("mlprune_speedup_int8")})


def test_frontier_takes_the_best_point_at_the_speed_up_or_faster_and_calls_ties_within_one_standard_error():
    def at(acc, speedup, predicted=None):
        return [{"test_acc": acc, "speedup": speedup, "predicted": predicted}]

    table = {("dense", 1.0): at(0.82, 1.0), ("mlprune_speedup", 3.0): at(0.815, 2.8, 3.0),
             ("mlprune_speedup + int8", 3.0): at(0.81, 6.0), ("torch_pruning", 3.0): at(0.80, 3.1),
             ("torch_pruning + ORT quantize_dynamic", 3.0): at(0.79, 9.0),
             (bench_frontier.DENSE_QD, 1.0): at(0.818, 2.5)}
    assert bench_frontier.frontier(table, "mlprune", 3.0) == (0.81, "mlprune_speedup + int8 @ 3x")  # 2.8x is too slow
    assert bench_frontier.frontier(table, "torch_pruning", 8.0) == (0.79, "torch_pruning + ORT quantize_dynamic @ 3x")
    assert bench_frontier.frontier(table, "mlprune", 7.0) is None
    args = type("Args", (), {"speedups": [3.0, 8.0], "predict_with": None})
    text, verdicts = bench_frontier.report({"rt": table}, {"rt": 1275}, args)
    se = (0.82 * 0.18 / 1275) ** 0.5
    assert 0.81 - 0.80 < se  # so 3x is a tie
    assert "rt at 3x: mlprune 81.00% vs torch_pruning 80.00%: tie" in verdicts
    assert "rt at 8x: no mlprune model that fast, torch_pruning 79.00%: BELOW" in verdicts
    assert bench_frontier.frontier(table, bench_frontier.DENSE_QD, 2.0) == (0.818, bench_frontier.DENSE_QD)
    assert f"rt at 3x: mlprune 81.00% vs {bench_frontier.DENSE_QD} 81.80%: tie" not in verdicts  # 2.5x: too slow
    assert bench_frontier.frontier(table, bench_frontier.DENSE_QD, 3.0) is None
    assert any(v.startswith("rt: mlprune at 3x 81.00%") and "-1.00 pt (met" in v for v in verdicts)
    assert "rt mlprune_speedup @ 3x: predicted 3.00x, measured 2.80x (+7.1%; target within 10 %)" in verdicts
    assert "rt mlprune_speedup asked 3x: measured 2.80x (met: >= 2.70x)" in verdicts


def test_another_fit_is_a_column_and_an_error_summary_beside_the_fit_that_trained():
    table = {("dense", 1.0): [{"test_acc": 0.82, "speedup": 1.0}],
             ("mlprune_speedup", 3.0): [{"test_acc": 0.81, "speedup": 2.8, "predicted": 3.0, "predicted_with": 2.52},
                                        {"test_acc": 0.81, "speedup": 3.2, "predicted": 3.0, "predicted_with": 3.2}]}
    args = type("Args", (), {"speedups": [3.0], "predict_with": bench_frontier.Path("refit.json")})
    text, verdicts = bench_frontier.report({"rt": table}, {"rt": 1275}, args)
    assert "| mlprune_speedup | 3x | 2 | 81.00% ± 0.00 | 3.00x | 3.00x | 2.86x |" in text
    assert "predicted by refit.json |" in text
    assert "rt: predicted by the fit each model trained with: error -6.2% to +7.1%, 6.7% on average over 2 models" in verdicts
    assert "rt: predicted by refit.json: error -10.0% to +0.0%, 5.0% on average over 2 models" in verdicts


def test_a_speed_up_that_dense_int8_already_gives_is_an_error_of_its_cell_not_of_the_run():
    import torch

    from benchmarks import bench_accuracy
    from conftest import tiny_model

    fp32 = bench_frontier.mp.CostModel(0.01, 0.01, 0.06, 0.1, batch=1, seq=8)
    int8 = bench_frontier.mp.CostModel(0.001, 0.001, 0.0001, 0.01, batch=1, seq=8, quantize="int8")
    ids = torch.randint(5, 90, (2, 8))
    data = type("Data", (), {"example": {"input_ids": ids, "attention_mask": torch.ones_like(ids)}})
    args = type("Args", (), {"cost": fp32, "int8_cost": int8, "int8_cost_model": "int8.json"})
    dense = tiny_model("bert", layers=1).eval()
    gain = bench_accuracy.int8_gain(dense, data.example, fp32, int8)
    assert gain > 2
    with pytest.raises(bench_accuracy.Unreachable, match=f"asked 2x, and dense int8 is predicted at {gain:.2f}x"):
        bench_accuracy.run_mlprune(dense, 0.5, data, args, None, speedup=True, int8=True)


def test_a_table_timed_on_two_cpus_says_so():
    here = bench_frontier.header_machine(bench_frontier.machine_header(2))
    assert here == bench_frontier.machine_line()
    table = {("dense", 1.0): [{"test_acc": 0.82, "speedup": 1.0}],
             ("mlprune_speedup", 3.0): [{"test_acc": 0.81, "speedup": 2.8, "machine": here},
                                        {"test_acc": 0.81, "speedup": 3.2, "machine": "another CPU"}],
             ("torch_pruning", 3.0): [{"test_acc": 0.80, "speedup": 3.1}]}
    args = type("Args", (), {"speedups": [3.0], "predict_with": None})
    text, verdicts = bench_frontier.report({"rt": table}, {"rt": 1275}, args)
    timed = "; ".join(f"{m} (1 points)" for m in sorted([here, "another CPU", "unrecorded"]))
    assert f"Timed on: {timed}" in text
    assert any(v.startswith("rt: speed-ups timed on 2 CPUs") for v in verdicts)
    del table[("mlprune_speedup", 3.0)][1]
    assert not any("CPUs" in v for v in bench_frontier.report({"rt": table}, {"rt": 1275}, args)[1])


def test_a_point_not_timed_by_step_3_is_of_its_cells_machine_or_else_the_runs(tmp_path):
    run = tmp_path / "seed0"
    run.mkdir()
    cell = {"test_acc": 0.8, "ort_ms": 50.0, "dense_ort_ms": 150.0, "predicted_speedup": 3.0}
    results = {"machine": bench_frontier.machine_header(2), "datasets": {"rt": {
        "dense": {"test_acc": 0.82}, "cells": {"mlprune_speedup@0.333333": cell | {"machine": "the cell's CPU"},
                                               "torch_pruning@0.333333": cell}}}}
    (run / "results.json").write_text(json.dumps(results))
    args = type("Args", (), {"speedups": [3.0], "methods": ["mlprune_speedup", "torch_pruning"]})
    table = bench_frontier.points([run], {}, args)["rt"]
    assert table[("mlprune_speedup", 3.0)][0]["machine"] == "the cell's CPU"
    assert table[("torch_pruning", 3.0)][0]["machine"] == bench_frontier.machine_line()
    assert table[("torch_pruning", 3.0)][0]["speedup"] == 3.0
