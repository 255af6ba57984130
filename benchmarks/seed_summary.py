"""Mean and spread over seeds of the accuracy benchmark's results, and paired differences between methods.

One accuracy run is one seed; whether one method is above another needs several, read
together. This groups the cells of `bench_accuracy.py` result files by what they ran
(method, its options, budget and data; everything but `--prune-seed` and the machine), and
prints, per group, the seeds it has with their test and dev accuracy, mean and standard
deviation over seeds (a seed run on several machines counts once, at its mean); then, for
each pair of groups that share the budget and data, the per-seed difference on the seeds both ran (same data order and same teacher, so the pairing removes
the spread the seeds share) with its mean and standard error: by default each mlprune
variant against each baseline.

    python -m benchmarks.seed_summary benchmarks/results/grid_tweets/20pc_*.json --target 0.2
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.bench_accuracy import RESULT_SETTINGS, with_defaults
from mlprune_fx.tools.benchmarking import markdown_table

# Options that only the mlprune methods read: they tell variants apart.
MLPRUNE_OPTIONS = ("lambda_f", "descent", "output_rows", "hold_masks", "target_schedule", "separate_clipping",
                   "magnitude_prior", "attention_length", "mask_lr_scale")
# What every method in a comparison shares: the benchmark's own result settings, less the above,
# the seed (paired, not grouped on) and the device (the same computation either way).
SHARED = tuple(k for k in RESULT_SETTINGS if k not in MLPRUNE_OPTIONS + ("prune_seed", "device"))


@dataclass(frozen=True)
class Run:
    seed: int
    test: float
    dev: float
    machine: str
    source: str
    remaining: float | None = None  # share of the encoder weights kept
    speedup: float | None = None  # dense over pruned ORT time, side by side in the run


def variant(method: str, settings: dict) -> str:
    """The method with the options it reads, as a short label."""
    if not method.startswith("mlprune"):
        return method
    words = [f"lambda_f {settings['lambda_f']:g}", f"descent {settings['descent']:g}"]
    words += [] if settings["output_rows"] else ["output rows kept"]
    words += ["masks held"] if settings["hold_masks"] else []
    words += ["thresholds clipped apart"] if settings["separate_clipping"] else []
    words += [f"{settings['target_schedule']} target"] if settings["target_schedule"] != "constant" else []
    words += [f"magnitude prior {settings['magnitude_prior']:g}"] if settings["magnitude_prior"] else []
    words += [f"heads charged at {settings['attention_length']} tokens"] if settings["attention_length"] else []
    words += [f"mask lr x{settings['mask_lr_scale']:g}"] if settings["mask_lr_scale"] != 1 else []
    return f"{method} ({', '.join(words)})"


def read_results(path: Path) -> dict:
    """A result file of bench_accuracy.py, its settings completed with the defaults of older files."""
    try:
        saved = json.loads(path.read_text())
        saved["settings"] = with_defaults(saved["settings"])
        if not isinstance(saved["datasets"], dict):
            raise TypeError("'datasets' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"{path}: not a results file of bench_accuracy.py ({err})") from None
    return saved


def machine_line(saved: dict) -> str:
    """The machine a result file was made on, as its header wrote it ('' when not recorded)."""
    return saved.get("machine", "").split(";")[0].removeprefix("machine: ")


def machine_tag(header: str) -> str:
    """'AMD avx2', 'AMD avx512 25/17', 'Intel amx': the vendor, the widest ISA, and family/model where recorded."""
    isa = "amx" if "amx" in header else "avx512" if "avx512f" in header else "avx2" if "avx2" in header else "?"
    vendor = header.split()[0].removesuffix("(R)") if header else "?"
    ids = re.search(r"\(family (\d+) model (\d+)\)", header)
    return f"{vendor} {isa}" + (f" {ids[1]}/{ids[2]}" if ids else "")


@dataclass
class Comparison:
    """The runs that share one budget and data set, by variant, and the dense teacher(s) they started from."""

    runs: dict[str, list[Run]] = field(default_factory=lambda: defaultdict(list))
    dense: set[tuple[float, float]] = field(default_factory=set)  # (test, dev)


def collect(paths: list[Path], dataset: str | None, target: float) -> dict[tuple, Comparison]:
    """{shared settings: Comparison} over every cell at `target` in `paths`."""
    groups: dict[tuple, Comparison] = defaultdict(Comparison)
    for path in paths:
        saved = read_results(path)
        settings, datasets = saved["settings"], saved["datasets"]
        machine = machine_tag(machine_line(saved))
        for name, entry in datasets.items():
            if dataset is not None and name != dataset:
                continue
            shared = (name,) + tuple((k, settings.get(k)) for k in SHARED)
            dense = entry.get("dense") or {}
            if dense.get("test_acc") is not None:
                groups[shared].dense.add((100 * dense["test_acc"], 100 * dense["dev_acc"]))
            for cell in entry.get("cells", {}).values():
                if abs(cell.get("target", -1) - target) > 1e-9 or cell.get("test_acc") is None:
                    continue
                dense_ms = cell.get("dense_ort_ms") or dense.get("ort_ms")
                speedup = dense_ms / cell["ort_ms"] if dense_ms and cell.get("ort_ms") else None
                run = Run(settings["prune_seed"], 100 * cell["test_acc"], 100 * cell["dev_acc"], machine, path.name,
                          cell.get("remaining"), speedup)
                groups[shared].runs[variant(cell["method"], settings)].append(run)
    return {k: g for k, g in groups.items() if g.runs}


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def ordered(names) -> list[str]:
    """mlprune's variants first, then the baselines."""
    return sorted(names, key=lambda n: (not n.startswith("mlprune"), n))


def per_variant(runs: dict[str, list[Run]]) -> str:
    rows = []
    several = len({r.machine for rs in runs.values() for r in rs}) > 1
    for name in ordered(runs):
        rs = sorted(runs[name], key=lambda r: (r.seed, r.source))
        seeds = ", ".join(f"{r.seed}: {r.test:.2f} ({r.dev:.2f})" + (f" [{r.machine}]" if several else "") for r in rs)
        per_seed = by_seed(rs).values()
        kept = [r.remaining for r in rs if r.remaining is not None]
        fast = [r.speedup for r in rs if r.speedup is not None]
        rows.append([name, len(per_seed), seeds, _mean_sd([v["test"] for v in per_seed]),
                     _mean_sd([v["dev"] for v in per_seed]),
                     f"{100 * statistics.mean(kept):.1f} %" if kept else "-",
                     f"{min(fast):.2f}-{max(fast):.2f}x" if fast else "-"])
    return markdown_table(["method", "seeds", "seed: test (dev)", "test mean ± sd", "dev mean ± sd",
                           "weights kept", "speed-up"], rows)


def by_seed(runs: list[Run]) -> dict[int, dict[str, float]]:
    """{seed: {"test": ..., "dev": ...}}; a seed run more than once (on other machines) counts once, at its mean."""
    seeds: dict[int, list[Run]] = defaultdict(list)
    for r in runs:
        seeds[r.seed].append(r)
    return {seed: {split: statistics.mean(getattr(r, split) for r in rs) for split in ("test", "dev")}
            for seed, rs in sorted(seeds.items())}


def paired(runs: dict[str, list[Run]], all_pairs: bool = False) -> str:
    rows = []
    names = ordered(runs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if not all_pairs and (b.startswith("mlprune") or not a.startswith("mlprune")):
                continue
            ra, rb = by_seed(runs[a]), by_seed(runs[b])
            seeds = sorted(set(ra) & set(rb))
            if not seeds:
                continue
            for split in ("test", "dev"):
                diffs = [ra[s][split] - rb[s][split] for s in seeds]
                mean = statistics.mean(diffs)
                se = f"{statistics.stdev(diffs) / len(diffs) ** 0.5:.2f}" if len(diffs) > 1 else "-"
                rows.append([a, b, split, ", ".join(str(s) for s in seeds), " ".join(f"{d:+.2f}" for d in diffs),
                             f"{mean:+.2f}", se])
    return markdown_table(["A", "B", "split", "seeds", "A - B per seed", "mean", "standard error"], rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="results.json files of bench_accuracy.py")
    p.add_argument("--target", type=float, default=0.2, help="the remaining share to compare at")
    p.add_argument("--dataset", default=None, help="only this dataset (default: every one in the files)")
    p.add_argument("--all-pairs", action="store_true",
                   help="pair every two methods (default: each mlprune variant with each baseline)")
    args = p.parse_args(argv)
    groups = collect(args.results, args.dataset, args.target)
    if not groups:
        raise SystemExit(f"no cell at target {args.target} in the {len(args.results)} files given")
    for shared, group in groups.items():
        name, *settings = shared
        print(f"## {name} at {args.target:.0%}: " + ", ".join(f"{k} {v}" for k, v in settings) + "\n")
        for test, dev in sorted(group.dense):
            print(f"dense teacher: test {test:.2f} %, dev {dev:.2f} %\n")
        print(per_variant(group.runs) + "\n")
        print(paired(group.runs, args.all_pairs) + "\n")


if __name__ == "__main__":
    main()
