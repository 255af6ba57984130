"""The embedded demo: the packaged MiniLM on packaged Rotten Tomatoes snippets, end to end.

fine-tune dense -> prepare -> LEAP training to the target -> convert -> ONNX -> ONNX Runtime,
then a table of dense vs pruned accuracy, size and latency. Run: python -m mlprune_fx.demo
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

import mlprune_fx as mp
from mlprune_fx.benchmarking import machine_header, markdown_table, time_side_by_side
from mlprune_fx.data import batches, load_dataset, tokenize
from mlprune_fx.models import load_packaged_model
from mlprune_fx.training import accuracy, train


def _params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "mlprune_masks" not in n)


def run(args) -> str:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.time()
    model, tokenizer = load_packaged_model(num_labels=2)
    splits = load_dataset("rotten_tomatoes", seed=args.seed, max_examples=args.examples)
    enc = {name: tokenize(getattr(splits, name), tokenizer, max_length=args.max_length) for name in ("train", "test")}
    train_batches = lambda epoch: batches(enc["train"], args.batch_size, shuffle=True, seed=args.seed + epoch)  # noqa: E731
    test_batches = list(batches(enc["test"], 64, shuffle=False))
    print(f"data: Rotten Tomatoes fresh/rotten, train {len(splits.train)}, test {len(splits.test)}")

    print(f"1/4 fine-tuning the dense model for {args.finetune_steps} steps")
    train(model, train_batches, args.finetune_steps, lr=args.lr_finetune, desc="fine-tune")
    dense_acc = accuracy(model, test_batches)
    print(f"    dense test accuracy {dense_acc:.2%}")

    print(f"2/4 pruning heads and FFN rows to {args.target:.0%} of the encoder weights ({args.prune_steps} steps)")
    example = next(iter(train_batches(0)))
    cfg = mp.PruningConfig(target=args.target, granularity=("head", "row"), initial_threshold=args.initial_threshold)
    prepared = mp.prepare(copy.deepcopy(model), cfg, example)
    log = train(prepared, train_batches, args.prune_steps, lr=args.lr_prune, mask_lr=args.mask_lr, desc="prune")
    report = mp.sparsity_report(prepared)
    print(f"    remaining encoder weights {report.remaining:.1%} (rho {log.rho[-1]:.3f}, lambda {log.lam[-1]:.0f})")

    print("3/4 converting and exporting to ONNX")
    converted = mp.convert(prepared)
    pruned_acc = accuracy(converted, test_batches)
    dense_graph = mp.convert(mp.prepare(model, mp.PruningConfig(), example))
    plain = {k: v for k, v in example.items() if k != "labels"}
    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mlprune-demo-"))
    dense_path = mp.export_onnx(dense_graph, out_dir / "dense.onnx", plain)
    pruned_path = mp.export_onnx(converted, out_dir / "pruned.onnx", plain)
    dense_sess = mp.runtime.InferenceSession(dense_path, num_threads=args.threads)
    pruned_sess = mp.runtime.InferenceSession(pruned_path, num_threads=args.threads)
    ort_acc = accuracy(lambda **x: torch.from_numpy(pruned_sess(**x)["logits"]), test_batches)

    print(f"4/4 ONNX Runtime latency, batch {args.bench_batch} x sequence {args.bench_seq}, {args.threads} threads")
    ids = torch.randint(1000, model.config.vocab_size, (args.bench_batch, args.bench_seq))
    feeds = {"input_ids": ids.numpy(), "attention_mask": torch.ones_like(ids).numpy()}
    if "token_type_ids" in plain:
        feeds["token_type_ids"] = torch.zeros_like(ids).numpy()
    ms = time_side_by_side(
        {"dense": lambda: dense_sess.run(None, feeds), "pruned": lambda: pruned_sess.run(None, feeds)}, repeats=args.repeats
    )
    rows = [
        ["test accuracy", f"{dense_acc:.2%}", f"{pruned_acc:.2%} (ONNX Runtime {ort_acc:.2%})"],
        ["encoder weights remaining", "100%", f"{report.remaining:.1%}"],
        ["parameters", f"{_params(model):,}", f"{_params(converted):,}"],
        ["ONNX file", f"{dense_path.stat().st_size / 2**20:.1f} MiB", f"{pruned_path.stat().st_size / 2**20:.1f} MiB"],
        ["ONNX Runtime latency", f"{ms['dense']:.1f} ms", f"{ms['pruned']:.1f} ms ({ms['dense'] / ms['pruned']:.2f}x faster)"],
    ]
    heads = ", ".join(f"{k}/{n}" for k, n in report.heads_kept.values())
    table = markdown_table(["", "dense", f"pruned (target {args.target:.0%})"], rows)
    text = (
        f"{table}\n\nheads kept per layer: {heads}\n"
        f"command: python -m mlprune_fx.demo {' '.join(args.argv)}\n{machine_header(args.threads)}\n"
        f"run time {time.time() - started:.0f} s; ONNX files in {out_dir}"
    )
    print("\n" + text)
    if args.report:
        Path(args.report).write_text("# Demo result\n\n" + text + "\n")
    return text


def main(argv: list[str] | None = None) -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.5, help="remaining fraction of encoder weights")
    parser.add_argument("--examples", type=int, default=4000, help="snippets used (train/dev/test 80/10/10)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--prune-steps", type=int, default=400)
    parser.add_argument("--lr-finetune", type=float, default=5e-5)
    parser.add_argument("--lr-prune", type=float, default=3e-5)
    parser.add_argument("--mask-lr", type=float, default=5e-2)
    parser.add_argument("--initial-threshold", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bench-batch", type=int, default=8)
    parser.add_argument("--bench-seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="folder for the ONNX files (default: a temporary folder)")
    parser.add_argument("--report", help="also write the result table to this Markdown file")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.argv = argv
    run(args)


if __name__ == "__main__":
    main()
