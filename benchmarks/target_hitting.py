"""Does LEAP training land on the target when only the target is set?

The packaged MiniLM is fine-tuned dense on packaged Rotten Tomatoes snippets once; then,
for each target, a copy is prepared with `PruningConfig(target=...)` (every other
field at its default) and trained with `training.train(prepared, batches, steps)`
(every option at its default). Prints a table and writes a PNG of the hard and soft
remaining ratio and of lambda over the steps.

    python -m benchmarks.target_hitting --steps 800 --batch-size 16 --max-length 64 --out docs/target_hitting.png
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

import mlprune_fx as mp
from mlprune_fx.tools.benchmarking import machine_header, markdown_table
from mlprune_fx.tools.data import batches, load_dataset, tokenize
from mlprune_fx.tools.models import load_packaged_model
from mlprune_fx.training import accuracy, train


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_l) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for res in results:
        log, target = res["log"], res["target"]
        line, = ax_r.plot(log.remaining_steps, log.remaining, label=f"target {target:.0%}: hard (Top-k)")
        ax_r.plot([s + 1 for s in log.steps], log.rho, ls="--", color=line.get_color(), alpha=0.7, label=f"target {target:.0%}: soft rho")
        ax_r.axhline(target, color=line.get_color(), lw=0.6, ls=":")
        ax_l.plot([s + 1 for s in log.steps], log.lam, color=line.get_color(), label=f"target {target:.0%}")
        if log.hold_from:
            ax_r.axvline(log.hold_from, color="grey", lw=0.6)
            ax_l.axvline(log.hold_from, color="grey", lw=0.6)
    ax_r.set_ylabel("remaining ratio of the encoder weights")
    ax_r.set_ylim(0, 1.02)
    ax_r.legend(fontsize=7, ncol=2)
    ax_r.set_title("LEAP with only the target set (grey line: hold phase starts)")
    ax_l.set_yscale("log")
    ax_l.set_ylabel("lambda")
    ax_l.set_xlabel("step")
    ax_l.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3, 0.2])
    parser.add_argument("--steps", type=int, default=800, help="pruning steps per target")
    parser.add_argument("--finetune-steps", type=int, default=300, help="dense fine-tuning steps before pruning")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--examples", type=int, default=6000, help="snippets used (train/dev/test 80/10/10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kd", action="store_true", help="distil from the fine-tuned dense model (logits + hidden states)")
    parser.add_argument("--out", help="write the plot to this PNG")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tokenizer = load_packaged_model(num_labels=2)
    splits = load_dataset("rotten_tomatoes", seed=args.seed, max_examples=args.examples)
    enc_train = tokenize(splits.train, tokenizer, max_length=args.max_length)
    dev = list(batches(tokenize(splits.dev, tokenizer, max_length=args.max_length), 64, shuffle=False))
    data = lambda epoch: batches(enc_train, args.batch_size, shuffle=True, seed=args.seed + epoch)  # noqa: E731
    example = {k: v.clone() for k, v in next(iter(data(0))).items()}  # fresh tensors: export guards on views (see docs)
    progress = not args.no_progress

    started = time.time()
    train(model, data, args.finetune_steps, lr=5e-5, desc="fine-tune dense", progress=progress)
    dense_acc = accuracy(model, dev)
    print(f"dense model: {args.finetune_steps} fine-tuning steps in {time.time() - started:.0f} s, dev accuracy {dense_acc:.2%}", flush=True)
    if args.kd:
        from mlprune_fx.training.distill import enable_distillation_outputs

        enable_distillation_outputs(model)

    results = []
    for target in args.targets:
        torch.manual_seed(args.seed)
        t0 = time.time()
        prepared = mp.prepare(copy.deepcopy(model), mp.PruningConfig(target=target), example)
        kwargs = {"teacher": model} if args.kd else {}
        log = train(prepared, data, args.steps, desc=f"target {target}", progress=progress, **kwargs)
        seconds = time.time() - t0
        report = mp.sparsity_report(prepared)
        acc = accuracy(mp.convert(prepared), dev)
        res = dict(target=target, log=log, hard=report.remaining, soft=report.soft_remaining,
                   lam=log.lam[-1], acc=acc, seconds=seconds, heads=report.heads_kept)
        results.append(res)
        print(
            f"target {target:.2f}: hard {res['hard']:.4f}, soft rho {res['soft']:.4f}, lambda {res['lam']:.0f}, "
            f"before hold {log.before_hold:.4f} (adjust {log.adjust:+.3f}), mask lr {log.mask_lr:.4f}, "
            f"dev {acc:.2%}, {seconds:.0f} s",
            flush=True,
        )

    rows = [
        [f"{r['target']:.2f}", f"{r['hard']:.4f}", f"{r['hard'] - r['target']:+.4f}", f"{r['soft']:.4f}",
         f"{r['lam']:.0f}", f"{r['acc']:.2%}", args.steps, f"{r['seconds']:.0f} s"]
        for r in results
    ]
    header = ["target", "final hard remaining", "hard - target", "soft rho", "lambda", "dev accuracy", "steps", "time"]
    print()
    print(markdown_table(header, rows))
    print(f"\ndense dev accuracy {dense_acc:.2%} after {args.finetune_steps} fine-tuning steps; "
          f"dev set {len(splits.dev)} snippets, train {len(splits.train)}")
    for r in results:
        log = r["log"]
        heads = ", ".join(f"{k}" for k, _ in r["heads"].values())
        print(f"target {r['target']:.2f}: mask lr {log.mask_lr:.4f}, hold from step {log.hold_from}, "
              f"hard ratio before the hold {log.before_hold:.4f}, hold adjustment {log.adjust:+.3f}; heads kept per layer {heads}")
    print(f"command: python -m benchmarks.target_hitting {' '.join(argv)}")
    print(machine_header(args.threads))
    if args.out:
        plot(results, args.out)
        print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
