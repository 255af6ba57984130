"""Two builds of libmlprune_ort.so on the end-to-end model, in one process: is a kernel change faster?

Run-to-run noise on a small VM exceeds most kernel changes, so the builds are timed in the same
minutes, in both slot orders, beside the dense model, and with a "before, before" run whose
spread says how much the slot alone moves (the A/A). Keep a copy of the library before a change:
  cp runtime/_build/libmlprune_ort.so /tmp/before.so   # then change, make native
  .venv/bin/python benchmarks/ab_ort_library.py /tmp/before.so runtime/_build/libmlprune_ort.so
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch

import mlprune_fx as mp
from mlprune_fx.benchmarking import machine_header, time_sessions

from bench_end_to_end import BLOCK, KEEP_STEP1, KEEP_STEP2, MAX_BLOCK_DENSITY, bert_base, build


def opener(model: Path, library: str | None, threads: int, feeds: dict):
    def open_session():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if library:
            options.register_custom_ops_library(library)
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=["SkipLayerNormFusion"])  # as mp.runtime.InferenceSession
        return lambda: session.run(None, feeds)
    return open_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path, help="libmlprune_ort.so before the change")
    parser.add_argument("after", type=Path, help="libmlprune_ort.so after it")
    parser.add_argument("--batch", nargs="+", type=int, default=[8, 1])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args()
    for lib in (args.before, args.after):
        if not lib.is_file():
            parser.error(f"{lib} is not a file: build the library (make native) and copy it first")

    model, example = bert_base(args.layers)
    dense, pruned, ratio = build(model, example, KEEP_STEP1, KEEP_STEP2, BLOCK, MAX_BLOCK_DENSITY)
    libs = {"before": str(args.before.resolve()), "after": str(args.after.resolve())}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {k: mp.export_onnx(m, Path(tmp) / f"{k}.onnx", example) for k, m in (("dense", dense), ("pruned", pruned))}
        print(machine_header(args.threads))
        print(f"end-to-end model of bench_end_to_end.py ({args.layers} layers, {ratio:.1%} of the encoder weights "
              f"left); timing starts now", flush=True)
        for batch in args.batch:
            x = torch.randint(1000, model.config.vocab_size, (batch, args.seq))
            feeds = {"input_ids": x.numpy(), "attention_mask": torch.ones_like(x).numpy()}
            runs = max(4, 10 // batch)
            for first, second in (("before", "after"), ("after", "before"), ("before", "before")):
                make = {"dense": opener(paths["dense"], None, args.threads, feeds),
                        f"1:{first}": opener(paths["pruned"], libs[first], args.threads, feeds),
                        f"2:{second}": opener(paths["pruned"], libs[second], args.threads, feeds)}
                ms = time_sessions(make, rounds=args.rounds, runs=runs)
                a, b = ms[f"1:{first}"], ms[f"2:{second}"]
                print(f"batch {batch} x {args.seq}: dense {ms['dense']:.1f} ms; {first} {a:.1f} ms "
                      f"({ms['dense'] / a:.2f}x), then {second} {b:.1f} ms ({ms['dense'] / b:.2f}x); "
                      f"second / first {b / a:.3f}", flush=True)


if __name__ == "__main__":
    main()
