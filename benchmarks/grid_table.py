"""One accuracy table from the cells of several bench_accuracy.py runs.

A grid is often run in pieces: one process a core, a share added in a later session. This
merges the cells of result files that computed the same thing (the same result settings and
seed, the same dense teacher; mlprune's own options compared between the files that ran it)
into the table bench_accuracy.py prints, shares from the largest, methods in the benchmark's
order. Each cell keeps the speed-up measured side by side in its own run; the dense row's
timing is the first file's.

    python -m benchmarks.grid_table benchmarks/results/grid_tweets/10pc_seed0_*.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.bench_accuracy import METHODS, dataset_table
from benchmarks.seed_summary import MLPRUNE_OPTIONS, SHARED, machine_line, read_results, variant

# What every cell of one table must share (the device aside: the same computation either way);
# the options only mlprune reads must match between files that hold mlprune cells.
COMPARED = SHARED + ("prune_seed",)


def _same_settings(first: tuple[Path, dict], other: tuple[Path, dict], keys: tuple[str, ...]) -> None:
    differ = {k: (first[1].get(k), other[1].get(k)) for k in keys if first[1].get(k) != other[1].get(k)}
    if differ:
        raise SystemExit(f"{other[0]} was run with other settings than {first[0]}: {differ}; "
                         "a table mixes only runs of one computation")


def merge(paths: list[Path], dataset: str) -> tuple[dict, dict[str, tuple[Path, str]], dict | None]:
    """The dataset's entry with the cells of every file, each cell's (file, machine), and mlprune's settings.

    Refuses files that computed different things, or that both hold one cell.
    """
    merged, first, first_mlprune, source = None, None, None, {}
    for path in paths:
        saved = read_results(path)
        entry = saved["datasets"].get(dataset)
        if entry is None:
            continue
        machine = machine_line(saved) or "machine not recorded"
        if any(cell["method"].startswith("mlprune") for cell in entry["cells"].values()):
            if first_mlprune is None:
                first_mlprune = (path, saved["settings"])
            else:
                _same_settings(first_mlprune, (path, saved["settings"]), MLPRUNE_OPTIONS)
        if merged is None:
            merged, first = {**entry, "cells": dict(entry["cells"])}, (path, saved["settings"])
            source.update(dict.fromkeys(entry["cells"], (path, machine)))
            continue
        _same_settings(first, (path, saved["settings"]), COMPARED)
        teacher = ("test_acc", "dev_acc")
        if any(entry["dense"].get(k) != merged["dense"].get(k) for k in teacher):
            raise SystemExit(f"{path} started from another dense model than {first[0]} "
                             f"(test/dev {entry['dense'].get('test_acc')}/{entry['dense'].get('dev_acc')} against "
                             f"{merged['dense'].get('test_acc')}/{merged['dense'].get('dev_acc')})")
        for key, cell in entry["cells"].items():
            if key in merged["cells"]:
                raise SystemExit(f"cell {key} is in both {source[key][0]} and {path}: pass one of them")
            merged["cells"][key], source[key] = cell, (path, machine)
    if merged is None:
        raise SystemExit(f"no file given holds the dataset {dataset!r}")
    return merged, source, first_mlprune and first_mlprune[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="results.json files of bench_accuracy.py")
    p.add_argument("--dataset", default=None, help="the dataset to tabulate (default: the first file's first)")
    args = p.parse_args(argv)
    dataset = args.dataset or next(iter(read_results(args.results[0])["datasets"]), None)
    if dataset is None:
        raise SystemExit(f"{args.results[0]} holds no dataset")
    entry, source, mlprune_settings = merge(args.results, dataset)
    targets = sorted({cell["target"] for cell in entry["cells"].values()}, reverse=True)
    methods = [m for m in METHODS if any(cell["method"] == m for cell in entry["cells"].values())]
    print(dataset_table(dataset, entry, targets, methods) + "\n")
    by_file: dict[tuple[Path, str], list[str]] = {}
    for key, where in source.items():
        by_file.setdefault(where, []).append(key)
    print(f"Each speed-up is against the dense model timed in the cell's own run; the dense row's ORT ms is "
          f"{args.results[0].name}'s.")
    if mlprune_settings is not None:
        print(f"mlprune ran as {variant('mlprune', mlprune_settings)}.")
    for (path, machine), keys in by_file.items():
        print(f"- {path.name} ({machine}): {', '.join(keys)}")


if __name__ == "__main__":
    main()
