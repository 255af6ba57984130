"""How far clipping all gradients together shrinks the weights' steps while the masks descend.

Runs the first `--probe-steps` steps of one mlprune cell of the accuracy benchmark (its
own flags, its dense model from `--dense-from`) and prints, every `--every` steps, the
gradient norms of the weights and scores and of the thresholds before clipping, and the
factor clipping multiplies the weights' gradients by: with every gradient clipped to one
norm, and with the thresholds clipped apart (`train(separate_clipping=True)`).

    python benchmarks/clip_probe.py --probe-steps 1000 --datasets tweets --targets 0.2 \\
        --methods mlprune --dense-from out/teacher2000_grouped ...   # bench_accuracy's flags
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_accuracy  # noqa: E402

from mlprune_fx import training  # noqa: E402


class _Enough(Exception):
    pass


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probe-steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=50)
    own, rest = p.parse_known_args(argv)
    args = bench_accuracy.parse_args(rest)
    if args.dense_from is None:
        raise SystemExit("--dense-from: the probe reuses a fine-tuned dense model")
    torch.set_num_threads(args.torch_threads or args.threads)
    name, target = args.datasets[0], args.targets[0]
    dense, data, _ = bench_accuracy.dense_model(name, args, torch.device(args.device), args.dense_from, {})
    data.reseed(args.prune_seed)
    real = training.clip_gradients
    norms: list[tuple[float, float]] = []

    def recording(params, masks, clip, separate):
        norms.append(real(params, masks, clip, separate))
        if len(norms) >= own.probe_steps:
            raise _Enough
        return norms[-1]

    training.clip_gradients = recording
    args.progress = False
    try:
        bench_accuracy.run_mlprune(dense, target, data, args, bench_accuracy.distill_config(args.distill))
    except _Enough:
        pass
    finally:
        training.clip_gradients = real
    print(f"{name} at {target}, {args.prune_steps} steps planned, first {len(norms)} probed; clip 1.0")
    print("| step | weights + scores norm | thresholds norm | weights' factor, together | apart |")
    print("|---|---|---|---|---|")
    for step in range(0, len(norms), own.every):
        a, b = norms[step]
        print(f"| {step} | {a:.3g} | {b:.3g} | {min(1.0, 1.0 / math.hypot(a, b)):.2g} | {min(1.0, 1.0 / a):.2g} |")
    shrunk = [s for s, (a, b) in enumerate(norms) if min(1.0, 1 / math.hypot(a, b)) < 0.01 * min(1.0, 1 / a)]
    if shrunk:
        print(f"together, the thresholds cut the weights' steps below 1 % of their own clipping at {len(shrunk)} "
              f"steps, from step {shrunk[0]} to {shrunk[-1]}")


if __name__ == "__main__":
    main()
