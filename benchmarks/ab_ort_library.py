"""Two builds of libmlprune_ort.so on the end-to-end model, in one process: is a kernel change faster?

Run-to-run noise on a small VM exceeds most kernel changes, so the builds are timed in the same
minutes, in both slot orders, beside the dense model, and with a "before, before" run whose
spread says how much the slot alone moves (the A/A). Keep a copy of the library before a change:
  cp runtime/_build/libmlprune_ort.so /tmp/before.so   # then change, make native
  python -m benchmarks.ab_ort_library /tmp/before.so runtime/_build/libmlprune_ort.so
With --by-kind it reads ONNX Runtime's profiler instead and splits the time by matrix kind (Q, K,
V, O, FFN1, FFN2): a change meant for one kind shows there, against the others in the same round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import onnxruntime as ort
import torch

import mlprune_fx as mp
from benchmarks.bench_end_to_end import BLOCK, KEEP_STEP1, KEEP_STEP2, MAX_BLOCK_DENSITY, bert_base, build, quantized
from mlprune_fx.tools.benchmarking import machine_header, time_sessions

KINDS = ("Q", "K", "V", "O", "FFN1", "FFN2")


def session(model: Path, library: str | None, threads: int, profile_prefix: str | None = None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if library:
        options.register_custom_ops_library(library)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["SkipLayerNormFusion"])  # as mp.runtime.InferenceSession


def opener(model: Path, library: str | None, threads: int, feeds: dict):
    def open_session():
        s = session(model, library, threads)
        return lambda: s.run(None, feeds)
    return open_session


def kinds(model: Path) -> dict[str, str]:
    """Node name -> matrix kind: the exporter writes each layer's six linears in the order of KINDS."""
    import onnx

    nodes = [n for n in onnx.load(str(model)).graph.node if n.op_type in ("BlockSparseLinear", "BlockSparseLinearInt8")]
    if len(nodes) % len(KINDS):
        raise SystemExit(f"{len(nodes)} block-sparse nodes, not six per layer: --by-kind needs the end-to-end model")
    return {n.name: KINDS[i % len(KINDS)] for i, n in enumerate(nodes)}


def time_by_kind(model: Path, library: str, threads: int, feeds: dict, names: dict[str, str], prefix: str,
                 runs: int) -> dict[str, float]:
    """ms per run in each kind's nodes, in the other ops' nodes, and in all nodes, from the profiler.

    The first two runs are warm-up: their events (each node's first two) are left out.
    """
    warmup = 2
    s = session(model, library, threads, prefix)
    for _ in range(warmup + runs):
        s.run(None, feeds)
    seen: dict[str, int] = defaultdict(int)
    ms: dict[str, float] = defaultdict(float)
    for e in json.loads(Path(s.end_profiling()).read_text()):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"].removesuffix("_kernel_time")
            seen[node] += 1
            if seen[node] > warmup:
                ms[names.get(node, "other ops")] += e["dur"] / 1e3 / runs
    ms["all nodes"] = sum(ms.values())
    return ms


def ab_by_kind(model: Path, libs: dict[str, str], threads: int, feeds: dict, rounds: int, runs: int, tmp: str) -> None:
    names = kinds(model)
    got: dict[str, dict[str, list[float]]] = {k: defaultdict(list) for k in libs}
    for r in range(2 * rounds):
        for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
            for kind, ms in time_by_kind(model, libs[name], threads, feeds, names, f"{tmp}/p", runs).items():
                got[name][kind].append(ms)
    for kind in [*KINDS, "other ops", "all nodes"]:
        b, a = got["before"][kind], got["after"][kind]
        ratios = [y / x for x, y in zip(b, a)]
        print(f"  {kind}: before {statistics.median(b):.2f} ms, after {statistics.median(a):.2f} ms; after / before "
              f"per round {' '.join(f'{v:.3f}' for v in ratios)}, median {statistics.median(ratios):.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path, help="libmlprune_ort.so before the change")
    parser.add_argument("after", type=Path, help="libmlprune_ort.so after it")
    parser.add_argument("--batch", nargs="+", type=int, default=[8, 1])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--int8", action="store_true", help="the pruned model with int8 linears (convert's quantize='int8')")
    parser.add_argument("--by-kind", action="store_true",
                        help="time each matrix kind with ONNX Runtime's profiler, rounds alternating the libraries")
    args = parser.parse_args()
    for lib in (args.before, args.after):
        if not lib.is_file():
            parser.error(f"{lib} is not a file: build the library (make native) and copy it first")

    model, example = bert_base(args.layers)
    dense, pruned, ratio, _, _ = build(model, example, KEEP_STEP1, KEEP_STEP2, BLOCK, MAX_BLOCK_DENSITY)
    if args.int8:
        pruned = quantized(pruned)
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
            if args.by_kind:
                print(f"batch {batch} x {args.seq}, ms per run in each kind's nodes, {2 * args.rounds} rounds:")
                ab_by_kind(paths["pruned"], libs, args.threads, feeds, args.rounds, runs, tmp)
                continue
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
