"""The seed summary reads the accuracy benchmark's files the way they are written, and pairs seeds correctly."""

import json
from pathlib import Path

import pytest

from benchmarks import seed_summary

SETTINGS = {"finetune_steps": 20, "finetune_lr": 1e-4, "prune_steps": 40, "lr": 2e-4, "batch_size": 16,
            "max_length": 64, "examples": None, "seed": 0, "distill": "hidden", "device": "cpu",
            "group_by_length": True, "lambda_f": 2e5}


def write(folder: Path, name: str, seed: int, cells: dict[str, tuple[float, float]], machine="AMD EPYC, 2 cores, flags: avx2 fma", **settings) -> Path:
    results = {
        "settings": {**SETTINGS, "prune_seed": seed, **settings},
        "machine": f"machine: {machine}; threads used: 1",
        "datasets": {"toy": {"dense": {"test_acc": 0.8, "dev_acc": 0.82}, "cells": {
            f"{method}@0.2": {"method": method, "target": 0.2, "test_acc": test, "dev_acc": dev}
            for method, (test, dev) in cells.items()}}},
    }
    path = folder / name
    path.write_text(json.dumps(results))
    return path


def test_means_and_paired_differences(tmp_path, capsys):
    files = [
        write(tmp_path, "s1.json", 1, {"mlprune": (0.79, 0.81), "magnitude": (0.785, 0.80)}),
        write(tmp_path, "s2.json", 2, {"mlprune": (0.80, 0.80), "magnitude": (0.79, 0.81)}),
        write(tmp_path, "s3.json", 3, {"magnitude": (0.78, 0.80)}),  # no mlprune run on seed 3: left out of the pairs
        write(tmp_path, "s1_held.json", 1, {"mlprune": (0.70, 0.70)}, hold_masks=True),
        write(tmp_path, "other_budget.json", 1, {"magnitude": (0.5, 0.5)}, prune_steps=80),
    ]
    seed_summary.main([str(f) for f in files])
    out = capsys.readouterr().out
    assert out.count("## toy at 20%") == 2, "another budget is its own comparison"
    assert "dense teacher: test 80.00 %, dev 82.00 %" in out
    assert "| magnitude | 3 | 1: 78.50 (80.00), 2: 79.00 (81.00), 3: 78.00 (80.00) | 78.50 ± 0.50 | 80.33 ± 0.58 | - | - |" in out
    assert "| mlprune (lambda_f 200000, descent 0.5) | 2 |" in out
    assert "| mlprune (lambda_f 200000, descent 0.5, masks held) | 1 |" in out
    test_row = "| mlprune (lambda_f 200000, descent 0.5) | magnitude | test | 1, 2 | +0.50 +1.00 | +0.75 | 0.25 |"
    assert test_row in out
    assert "| mlprune (lambda_f 200000, descent 0.5) | magnitude | dev | 1, 2 | +1.00 -1.00 | +0.00 | 1.00 |" in out
    assert "mlprune (lambda_f 200000, descent 0.5, masks held) | mlprune" not in out, "variants pair only with --all-pairs"
    seed_summary.main([str(f) for f in files] + ["--all-pairs"])
    one_seed = "| mlprune (lambda_f 200000, descent 0.5) | mlprune (lambda_f 200000, descent 0.5, masks held) | test | 1 | +9.00 | +9.00 | - |"
    assert one_seed in capsys.readouterr().out, "one seed has no standard error"


def test_machines_are_named_when_runs_come_from_several(tmp_path, capsys):
    files = [
        write(tmp_path, "a.json", 1, {"mlprune": (0.79, 0.81)}),
        write(tmp_path, "b.json", 1, {"mlprune": (0.78, 0.80)},
              machine="Intel(R) Xeon(R) Processor (family 6 model 207), 2 cores, flags: avx2 fma avx512f amx_tile"),
    ]
    seed_summary.main([str(f) for f in files])
    out = capsys.readouterr().out
    assert "| 1 | 1: 79.00 (81.00) [AMD avx2], 1: 78.00 (80.00) [Intel amx 6/207] | 78.50 | 80.50 |" in out, "one seed, at its mean"


def test_bad_files_and_empty_selections_say_what_is_wrong(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="bad.json: not a results file"):
        seed_summary.main([str(bad)])
    good = write(tmp_path, "good.json", 1, {"mlprune": (0.79, 0.81)})
    with pytest.raises(SystemExit, match="no cell at target 0.5"):
        seed_summary.main([str(good), "--target", "0.5"])


def test_weights_kept_and_speed_up_come_from_the_cells(tmp_path, capsys):
    path = write(tmp_path, "a.json", 1, {"mlprune": (0.79, 0.81)})
    saved = json.loads(path.read_text())
    saved["datasets"]["toy"]["cells"]["mlprune@0.2"].update(remaining=0.171, ort_ms=50.0, dense_ort_ms=225.0)
    path.write_text(json.dumps(saved))
    other = write(tmp_path, "b.json", 2, {"mlprune": (0.78, 0.80)})
    saved = json.loads(other.read_text())
    saved["datasets"]["toy"]["dense"]["ort_ms"] = 200.0  # older files: the dense time only on the dense entry
    saved["datasets"]["toy"]["cells"]["mlprune@0.2"].update(remaining=0.169, ort_ms=50.0)
    other.write_text(json.dumps(saved))
    seed_summary.main([str(path), str(other)])
    assert "| 17.0 % | 4.00-4.50x |" in capsys.readouterr().out


def test_variant_labels_name_each_option_set():
    plain = seed_summary.with_defaults({**SETTINGS, "prune_seed": 1})
    assert seed_summary.variant("mlprune", plain) == "mlprune (lambda_f 200000, descent 0.5)"
    tuned = {**plain, "attention_length": 128, "mask_lr_scale": 2.0, "magnitude_prior": 1.0}
    assert seed_summary.variant("mlprune", tuned) == ("mlprune (lambda_f 200000, descent 0.5, magnitude prior 1, "
                                                      "heads charged at 128 tokens, mask lr x2)")
    assert seed_summary.variant("torch_pruning", tuned) == "torch_pruning"
