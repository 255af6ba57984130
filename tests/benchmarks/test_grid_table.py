"""The grid table merges runs of one computation and refuses to merge anything else."""

import json
from pathlib import Path

import pytest

from benchmarks import grid_table

SETTINGS = {"finetune_steps": 20, "finetune_lr": 1e-4, "prune_steps": 40, "lr": 2e-4, "batch_size": 16,
            "max_length": 64, "examples": None, "seed": 0, "distill": "hidden", "device": "cpu", "prune_seed": 0}


def cell(method: str, target: float, test: float) -> dict:
    return {"method": method, "target": target, "remaining": target, "params": 1_000_000, "test_acc": test,
            "dev_acc": test, "ort_test_acc": test, "ort_ms": 10.0, "dense_ort_ms": 20.0, "train_seconds": 5.0,
            "notes": []}


def write(folder: Path, name: str, cells: list[dict], dense_test=0.8, **settings) -> Path:
    entry = {"dense": {"params": 2_000_000, "test_acc": dense_test, "dev_acc": 0.8, "ort_ms": 20.0, "seconds": 9.0},
             "sizes": {"train": 100, "dev": 10, "test": 10}, "num_labels": 2,
             "cells": {f"{c['method']}@{c['target']:g}": c for c in cells}}
    path = folder / name
    path.write_text(json.dumps({"settings": {**SETTINGS, **settings}, "machine": "machine: toy; threads used: 1",
                                "datasets": {"toy": entry}}))
    return path


def test_cells_of_several_runs_make_one_table(tmp_path, capsys):
    files = [write(tmp_path, "a.json", [cell("magnitude", 0.5, 0.7), cell("mlprune", 0.5, 0.8)]),
             write(tmp_path, "b.json", [cell("mlprune", 0.1, 0.6), cell("torch_pruning", 0.5, 0.75)], device="cuda")]
    grid_table.main([str(f) for f in files])
    out = capsys.readouterr().out
    rows = [line.split(" | ")[:2] for line in out.splitlines() if line.startswith("| ") and "%" in line]
    assert rows == [["| dense", "-"], ["| mlprune", "50%"], ["| magnitude", "50%"], ["| torch_pruning", "50%"],
                    ["| mlprune", "10%"]], "shares from the largest, methods in the benchmark's order"
    assert "- b.json (toy): mlprune@0.1, torch_pruning@0.5" in out


@pytest.mark.parametrize("second, message", [
    (dict(cells=[cell("magnitude", 0.5, 0.7)]), "magnitude@0.5 is in both"),
    (dict(cells=[cell("torch_pruning", 0.1, 0.6)], lr=1e-4), "other settings"),
    (dict(cells=[cell("torch_pruning", 0.1, 0.6)], prune_seed=1), "other settings"),
    (dict(cells=[cell("mlprune", 0.1, 0.6)], hold_masks=True), "other settings"),
    (dict(cells=[cell("torch_pruning", 0.1, 0.6)], dense_test=0.7), "another dense model"),
])
def test_runs_of_different_computations_are_refused(tmp_path, second, message):
    first = write(tmp_path, "a.json", [cell("magnitude", 0.5, 0.7), cell("mlprune", 0.5, 0.8)])
    other = write(tmp_path, "b.json", **second)
    with pytest.raises(SystemExit, match=message):
        grid_table.main([str(first), str(other)])


def test_mlprune_options_do_not_separate_baselines(tmp_path, capsys):
    """A baseline reads none of mlprune's options: its cells join a variant's run."""
    variant = write(tmp_path, "a.json", [cell("mlprune", 0.1, 0.6)], hold_masks=True)
    baselines = write(tmp_path, "b.json", [cell("magnitude", 0.1, 0.5)])
    grid_table.main([str(variant), str(baselines)])
    out = capsys.readouterr().out
    assert "| magnitude | 10% |" in out and "mlprune ran as mlprune (" in out and "masks held)." in out


def test_a_file_that_is_not_a_result_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="bad.json: not a results file"):
        grid_table.main([str(bad)])
    with pytest.raises(SystemExit, match="no file given holds the dataset 'other'"):
        grid_table.main([str(write(tmp_path, "a.json", [])), "--dataset", "other"])
