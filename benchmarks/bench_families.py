"""Pruned vs dense MPNet and DeBERTa (v3-style) in ONNX Runtime, at BERT-base shapes.

Random weights and random masks keeping half of every layer's heads and FFN rows (speed does
not depend on which ones); MPNet's relative-position bias and DeBERTa's position projections
shrink with the heads. Pruned and dense models are converted and exported the same way and
timed with one session alive at a time. BERT (sdpa attention, fused in ONNX Runtime) runs the
same way as a reference. Run: python -m benchmarks.bench_families
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import torch

import mlprune_fx as mp
from mlprune_fx.core.pruning_state import mask_modules
from mlprune_fx.tools.benchmarking import machine_header, markdown_table, session_opener, time_sessions

MODELS = ("mpnet", "deberta", "bert")


def build(name: str, layers: int, hidden: int, heads: int, inter: int, vocab: int) -> torch.nn.Module:
    """A random-weight encoder of the family (seeded, so every run prunes alike)."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DebertaV2Config,
        DebertaV2ForSequenceClassification,
        MPNetConfig,
        MPNetForSequenceClassification,
    )

    torch.manual_seed(0)
    sizes = dict(vocab_size=vocab, hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter,
                 num_hidden_layers=layers, num_labels=2, attn_implementation="eager")
    if name == "bert":
        return BertForSequenceClassification(BertConfig(**{**sizes, "attn_implementation": "sdpa"})).eval()
    if name == "mpnet":
        return MPNetForSequenceClassification(MPNetConfig(**sizes)).eval()
    config = DebertaV2Config(**sizes, max_position_embeddings=512, relative_attention=True, position_buckets=256,
                             share_att_key=True, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm")
    return DebertaV2ForSequenceClassification(config).eval()


def inputs(vocab: int, batch: int, seq: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(batch * 1000 + seq)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def pruned_and_dense(model, example, keep: float):
    """The model with `keep` of each layer's heads and FFN rows (random), and with everything kept."""
    prepared = mp.prepare(model, mp.PruningConfig(granularity=("head", "row"), prune_output_rows=False), example).eval()
    masks = mask_modules(prepared).values()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mask in masks:
            mask.threshold.fill_(30.0)  # sigmoid(30) = 1: every unit kept
        dense = mp.convert(prepared)
        for mask in masks:
            mask.scores.copy_(torch.randn(mask.scores.shape, generator=g))
            mask.threshold.fill_(math.log(keep / (1 - keep)) - 1e-4)
    return mp.convert(prepared), dense, mp.sparsity_report(prepared)


def run(models, layers, hidden, heads, inter, vocab, batches, seq, threads, keep, rounds, runs, markdown):
    torch.set_num_threads(threads)
    print(machine_header(threads))
    print(f"{layers} layers, hidden {hidden}, {heads} heads, FFN {inter}, vocabulary {vocab}, random weights; "
          f"heads and FFN rows kept: {keep:.0%} of each layer (random); ONNX Runtime, one session alive at a time, "
          f"median of {rounds} rounds x {runs} runs")
    print(f"load average (1, 5, 15 min) at the start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    header = ["model", "batch x seq", "dense ms", "pruned ms", "speed-up", "encoder weights kept", "heads kept"]
    rows = []
    for name in models:
        start = time.perf_counter()
        model = build(name, layers, hidden, heads, inter, vocab)
        example = inputs(vocab, 2, 16)
        pruned, dense, report = pruned_and_dense(model, example, keep)
        heads_kept = sum(k for k, _ in report.heads_kept.values())
        heads_total = sum(n for _, n in report.heads_kept.values())
        with tempfile.TemporaryDirectory() as tmp:
            paths = {k: mp.export_onnx(m, Path(tmp) / f"{k}.onnx", example) for k, m in (("dense", dense), ("pruned", pruned))}
            print(f"{name}: built, pruned and exported in {time.perf_counter() - start:.0f} s", flush=True)
            for batch in batches:
                feeds = {k: v.numpy() for k, v in inputs(vocab, batch, seq).items()}
                ms = time_sessions({k: session_opener(p, feeds, threads) for k, p in paths.items()}, rounds=rounds, runs=runs)
                rows.append([name, f"{batch} x {seq}", f"{ms['dense']:.1f}", f"{ms['pruned']:.1f}",
                             f"{ms['dense'] / ms['pruned']:.2f}x", f"{report.remaining:.1%}", f"{heads_kept}/{heads_total}"])
                print(f"  {name} {batch} x {seq}: dense {ms['dense']:.1f} ms, pruned {ms['pruned']:.1f} ms", flush=True)
    table = markdown_table(header, rows)
    print(f"\nload average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(table)
    if markdown is not None:
        Path(markdown).write_text(table + "\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--inter", type=int, default=3072)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 1])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    if not 0 < args.keep < 1:
        parser.error("--keep must be between 0 and 1")
    run(args.models, args.layers, args.hidden, args.heads, args.inter, args.vocab, args.batches, args.seq,
        args.threads, args.keep, args.rounds, args.runs, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
