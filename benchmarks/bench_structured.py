"""Dense vs head/row-pruned encoders, in torch and in ONNX Runtime, side by side in one run.

About half of the heads and half of the FFN rows of every layer are pruned (random
masks: speed does not depend on which ones). Shapes: BERT-base (random weights) and
the packaged MiniLM-L6. Run: python -m benchmarks.bench_structured
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch

import mlprune_fx as mp
from mlprune_fx.core.pruning_state import mask_modules
from mlprune_fx.tools.benchmarking import machine_header, markdown_table, time_side_by_side


def _bert_base():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(num_labels=2))


def _minilm():
    from mlprune_fx.tools.models import load_packaged_model

    return load_packaged_model(num_labels=2)[0]


def _inputs(vocab: int, batch: int, seq: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(batch * 1000 + seq)
    ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _half_pruned(model, example, keep: float):
    prepared = mp.prepare(model, mp.PruningConfig(granularity=("head", "row"), prune_output_rows=False), example)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mask in mask_modules(prepared).values():
            mask.scores.copy_(torch.randn(mask.scores.shape, generator=g))
            mask.threshold.fill_(math.log(keep / (1 - keep)) - 1e-4)
    return prepared.eval()


def run(models: list[str], batches: list[int], seq: int, threads: int, repeats: int, keep: float, markdown: Path | None):
    torch.set_num_threads(threads)
    print(machine_header(threads))
    print(f"sequence {seq}, heads and FFN rows kept: {keep:.0%} of each layer, median of {repeats} interleaved runs\n")
    rows = []
    for name in models:
        model = (_bert_base if name == "bert-base" else _minilm)().eval()
        vocab = model.config.vocab_size
        example = _inputs(vocab, 2, 16)
        prepared = _half_pruned(model, example, keep)
        pruned = mp.convert(prepared)
        dense = mp.convert(mp.prepare(model, mp.PruningConfig(), example))
        report = mp.sparsity_report(pruned)
        with tempfile.TemporaryDirectory() as tmp:
            dense_onnx = mp.export_onnx(dense, Path(tmp) / "dense.onnx", example)
            pruned_onnx = mp.export_onnx(pruned, Path(tmp) / "pruned.onnx", example)
            sessions = {
                k: mp.runtime.InferenceSession(p, num_threads=threads, spinning=False)
                for k, p in (("dense", dense_onnx), ("pruned", pruned_onnx))
            }
            for batch in batches:
                x = _inputs(vocab, batch, seq)
                feeds = {k: v.numpy() for k, v in x.items()}
                # ONNX Runtime pairs and torch pairs are timed in separate blocks, so that
                # neither runtime's idle threads compete with the other's measurement
                ms = time_side_by_side(
                    {"ort dense": lambda: sessions["dense"].run(None, feeds), "ort pruned": lambda: sessions["pruned"].run(None, feeds)},
                    repeats=repeats,
                )
                with torch.inference_mode():
                    ms.update(time_side_by_side({"torch dense": lambda: model(**x), "torch pruned": lambda: pruned(**x)}, repeats=repeats))
                rows.append([
                    name, batch, f"{report.remaining:.1%}",
                    f"{ms['torch dense']:.1f}", f"{ms['torch pruned']:.1f}", f"{ms['torch dense'] / ms['torch pruned']:.2f}x",
                    f"{ms['ort dense']:.1f}", f"{ms['ort pruned']:.1f}", f"{ms['ort dense'] / ms['ort pruned']:.2f}x",
                    f"{ms['torch dense'] / ms['ort pruned']:.2f}x",
                ])
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
    header = ["model", "batch", "encoder weights left", "torch dense ms", "torch pruned ms", "torch speed-up",
              "ORT dense ms", "ORT pruned ms", "ORT speed-up", "ORT pruned vs torch dense"]
    table = markdown_table(header, rows)
    print("\n" + table)
    if markdown:
        markdown.write_text(table + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["bert-base", "minilm"], choices=["bert-base", "minilm"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--keep", type=float, default=0.5, help="fraction of heads and FFN rows kept")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    run(args.models, args.batch, args.seq, args.threads, args.repeats, args.keep, args.markdown)


if __name__ == "__main__":
    main()
