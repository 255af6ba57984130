"""Block-sparse kernel benchmark: our ORT custom op and torch op vs dense ONNX Runtime, dense torch and torch BSR.

Usage: python -m benchmarks.bench_kernel [--quick] [--int8] [--threads 2] [--markdown PATH]
Efficiency = (ONNX Runtime dense ms x density) / our ORT-op ms; the target is >= 0.8 for b = 32 and N >= 128
(at density 0.2: at least 4x faster than dense ONNX Runtime). For every row, dense ONNX Runtime, our op
and our op on an empty matrix are timed side by side, their rounds interleaved.

"ceiling" estimates the best efficiency a kernel could show in this measurement: a call of our op
on an empty matrix (session call, custom-op overhead, thread-pool dispatch, writing Y) costs `empty`
ms whatever the kernel does, and the rest is assumed to run at best at dense ONNX Runtime's own
rate, so ours ~>= empty + density x (ORT dense - empty). An estimate, not a proof: with large
outputs, writing Y is part of both terms, so a row can beat it slightly.

--int8 times the int8 path instead, all in ONNX Runtime, side by side per row: our int8 op
(BlockSparseLinearInt8), our fp32 op on the same blocks, ONNX Runtime's own int8 GEMM on the
dense weight (DynamicQuantizeMatMul, int8 per column) and its fp32 MatMul; densities up to 1.0, where
our op holds every block, the case that decides which kernel runs dense int8 linears.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import subprocess
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from mlprune_fx.runtime import build, int8, ops, ort_library
from mlprune_fx.runtime.library import ORT_DOMAIN

SHAPES = [(768, 768), (3072, 768), (768, 3072), (384, 384), (1536, 384), (384, 1536)]
ROWS = [128, 1024]
DENSITIES = [0.1, 0.2, 0.3, 0.5]
BLOCKS = [32, 16]
QUICK = dict(shapes=[(768, 768), (3072, 768), (384, 1536)], rows=[128, 1024], densities=[0.2, 0.5], blocks=[32, 16])
TARGET = 0.8
INT8_DENSITIES = [0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
INT8_TARGET = 2.5  # our int8 op against our fp32 op, b = 32, N >= 128


def median_ms(fns, rounds=5, min_time=0.05, min_reps=7, max_reps=200, warmup=3, settle=0.05):
    """Best of `rounds` medians of wall time in ms, each over >= min_reps calls and >= min_time seconds.

    `fns`: one callable (the result: its ms) or a dict of them (a dict of ms). Several take turns round by
    round, so a slow spell of the VM falls on all of them rather than on whichever ran then. Each turn
    first pauses to let the other pools (ORT's, OpenMP's) stop spinning: on two cores a spinning idle
    pool steals the CPU from the one being measured. Best-of-medians filters bursts where the VM's vCPUs
    are descheduled by the host (seen here as calls stuck at multiples of 4 ms).
    """
    named = fns if isinstance(fns, dict) else {"": fns}
    for fn in named.values():
        for _ in range(warmup):
            fn()
    best = {name: float("inf") for name in named}
    for _ in range(rounds):
        for name, fn in named.items():
            time.sleep(settle)
            fn()  # after the pause: the pool's threads wake here, not in the timed calls
            times, start = [], time.perf_counter()
            while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_time):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            best[name] = min(best[name], statistics.median(times))
    ms = {name: t * 1e3 for name, t in best.items()}
    return ms if isinstance(fns, dict) else ms[""]


def _model(nodes, inits, in_features, out_features):
    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", in_features])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n", out_features])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(ORT_DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10).SerializeToString()


def dense_model(weight: np.ndarray) -> bytes:
    out_f, in_f = weight.shape
    return _model([helper.make_node("MatMul", ["X", "WT"], ["Y"])], {"WT": np.ascontiguousarray(weight.T)}, in_f, out_f)


def sparse_model(packed: ops.PackedBlocks) -> bytes:
    node = helper.make_node(
        "BlockSparseLinear", ["X", "values", "row_ptr", "col_idx"], ["Y"], domain=ORT_DOMAIN, out_features=packed.out_features
    )
    inits = {"values": packed.values.numpy(), "row_ptr": packed.row_ptr.numpy(), "col_idx": packed.col_idx.numpy()}
    return _model([node], inits, packed.in_features, packed.out_features)


class OrtRunner:
    """An ORT session run through IO binding (pre-allocated output) to keep Python overhead out of the timing."""

    def __init__(self, model: bytes, threads: int, custom: bool):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        if custom:
            ort_library.register_library(opts)
        self.sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])

    def bind(self, x: np.ndarray, out_features: int):
        self.y = np.empty((x.shape[0], out_features), np.float32)
        self.binding = self.sess.io_binding()
        self.binding.bind_cpu_input("X", x)
        self.binding.bind_output("Y", "cpu", 0, np.float32, list(self.y.shape), self.y.ctypes.data)
        return self

    def __call__(self):
        self.sess.run_with_iobinding(self.binding)
        return self.y


def machine_info() -> list[str]:
    model = "unknown"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        cxx = build._compiler()
        compiler = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except Exception as exc:  # report, do not fail the benchmark
        compiler = f"unknown ({exc})"
    return [
        f"machine: {model} ({platform.machine()}), {os.cpu_count()} logical cores, "
        f"avx2={'avx2' in flags} avx512f={'avx512f' in flags} fma={'fma' in flags}",
        f"versions: torch {torch.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}, compiler {compiler}",
        f"kernel isa: {ops.kernel_isa()}",
    ]


def int8_sparse_model(packed) -> bytes:
    inputs = ["X", "values", "row_ptr", "col_idx", "w_scale", "w_sum"]
    node = helper.make_node("BlockSparseLinearInt8", inputs, ["Y"], domain=ORT_DOMAIN, out_features=packed.out_features)
    inits = {k: getattr(packed, k).numpy() for k in inputs[1:]}
    return _model([node], inits, packed.in_features, packed.out_features)


def int8_dense_model(weight: torch.Tensor) -> bytes:
    """ONNX Runtime's own int8 GEMM: DynamicQuantizeMatMul, weights int8 per output column."""
    q = int8.quantize_weight(weight)
    node = helper.make_node("DynamicQuantizeMatMul", ["X", "WT", "scale"], ["Y"], domain="com.microsoft")
    inits = {"WT": q.values.T.contiguous().numpy(), "scale": q.scale.numpy()}
    out_f, in_f = weight.shape
    graph = helper.make_graph([node], "bench", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", in_f])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n", out_f])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10).SerializeToString()


def _ort_ms(models: dict[str, tuple[bytes, bool, torch.Tensor]], x: np.ndarray, out_features: int,
            threads: int, tolerance: float = 1e-3, relative: bool = False) -> dict[str, float]:
    """Time ORT sessions side by side (name -> model, custom op?, expected Y), then drop them: a live ORT
    pool next to torch's OpenMP pool on two cores makes torch calls wait for a scheduler tick (measured:
    8 ms per call), and vice versa."""
    runners = {}
    for name, (model, custom, expected) in models.items():
        runners[name] = OrtRunner(model, threads, custom).bind(x, out_features)
        atol = tolerance * float(expected.abs().max()) if relative else tolerance
        torch.testing.assert_close(torch.from_numpy(runners[name]().copy()), expected, rtol=1e-3, atol=atol)
    ms = median_ms(runners)
    del runners
    gc.collect()
    return ms


def block_mask(shape, rows, density, block) -> torch.Tensor:
    """A random mask keeping round(density x blocks) blocks, the same for every run of one row."""
    rb, cb = shape[0] // block, shape[1] // block
    gen = torch.Generator().manual_seed(hash((shape, rows, density, block)) & 0xFFFF)
    mask = torch.zeros(rb * cb, dtype=torch.int32)
    mask[torch.rand(rb * cb, generator=gen).topk(max(1, round(density * rb * cb))).indices] = 1
    return mask.view(rb, cb)


def bench_row(shape, rows, density, block, threads, cache, rng):
    out_f, in_f = shape
    key = (shape, rows)
    if key not in cache:
        weight = torch.from_numpy(rng.standard_normal((out_f, in_f), dtype=np.float32))
        x = torch.from_numpy(rng.standard_normal((rows, in_f), dtype=np.float32))
        cache[key] = (weight, x, dense_model(weight.numpy()), F.linear(x, weight), median_ms(lambda: F.linear(x, weight)))
    weight, x, dense_onnx, dense_y, torch_dense_ms = cache[key]

    rb, cb = out_f // block, in_f // block
    mask = block_mask(shape, rows, density, block)
    packed = ops.pack_blocks(weight, mask, block)
    w_masked = ops.unpack_blocks(packed)
    expected = F.linear(x, w_masked)

    empty = ops.pack_blocks(weight, torch.zeros(rb, cb, dtype=torch.int32), block)
    ort_ms = _ort_ms({"dense": (dense_onnx, False, dense_y), "ours": (sparse_model(packed), True, expected),
                      "empty": (sparse_model(empty), True, torch.zeros(rows, out_f))}, x.numpy(), out_f, threads)
    ort_dense_ms, ours_ort_ms, empty_ms = ort_ms["dense"], ort_ms["ours"], ort_ms["empty"]
    ours_torch = lambda: ops.block_sparse_linear(x, packed)  # noqa: E731
    torch.testing.assert_close(ours_torch(), expected, rtol=1e-3, atol=1e-3)
    ours_torch_ms = median_ms(ours_torch)
    w_bsr = w_masked.to_sparse_bsr((block, block))
    bsr_ms = median_ms(lambda: (w_bsr @ x.T).T)
    real_density = packed.density
    floor_ms = empty_ms + real_density * max(ort_dense_ms - empty_ms, 0.0)
    return dict(
        shape=f"{out_f}x{in_f}", n=rows, density=real_density, b=block,
        ours_ort=ours_ort_ms, ours_torch=ours_torch_ms, ort_dense=ort_dense_ms,
        torch_dense=torch_dense_ms, torch_bsr=bsr_ms,
        eff=ort_dense_ms * real_density / ours_ort_ms, speedup=ort_dense_ms / ours_ort_ms,
        empty=empty_ms, ceiling=ort_dense_ms * real_density / floor_ms,
    )


def bench_int8_row(shape, rows, density, block, threads, cache, rng):
    out_f, in_f = shape
    key = (shape, rows)
    if key not in cache:
        weight = torch.from_numpy(rng.standard_normal((out_f, in_f), dtype=np.float32))
        x = torch.from_numpy(rng.standard_normal((rows, in_f), dtype=np.float32))
        cache[key] = (weight, x, dense_model(weight.numpy()), int8_dense_model(weight), F.linear(x, weight))
    weight, x, dense_onnx, dense_int8_onnx, dense_y = cache[key]
    mask = block_mask(shape, rows, density, block)
    packed = ops.pack_blocks(weight, mask, block)
    packed8 = int8.pack_blocks_int8(weight, mask, block)
    expected = F.linear(x, ops.unpack_blocks(packed))
    ms = _ort_ms({"fp32": (sparse_model(packed), True, expected),
                  "int8": (int8_sparse_model(packed8), True, expected),
                  "ort_int8": (dense_int8_onnx, False, dense_y),
                  "ort_fp32": (dense_onnx, False, dense_y)}, x.numpy(), out_f, threads,
                 tolerance=0.05, relative=True)  # int8 outputs are checked against float, loosely
    return dict(shape=f"{out_f}x{in_f}", n=rows, density=packed.density, b=block, int8=ms["int8"], fp32=ms["fp32"],
                ort_int8=ms["ort_int8"], ort_fp32=ms["ort_fp32"], int8_vs_fp32=ms["fp32"] / ms["int8"],
                int8_vs_ort_int8=ms["ort_int8"] / ms["int8"], int8_vs_ort_fp32=ms["ort_fp32"] / ms["int8"],
                eff=ms["ort_int8"] * packed.density / ms["int8"])


INT8_COLUMNS = [
    ("shape", "out x in", "{}"), ("n", "N", "{}"), ("density", "dens", "{:.2f}"), ("b", "b", "{}"),
    ("int8", "ours int8 ms", "{:.3f}"), ("fp32", "ours fp32 ms", "{:.3f}"), ("ort_int8", "ORT int8 dense ms", "{:.3f}"),
    ("ort_fp32", "ORT fp32 dense ms", "{:.3f}"), ("int8_vs_fp32", "int8 vs ours fp32", "{:.2f}x"),
    ("int8_vs_ort_int8", "vs ORT int8 dense", "{:.2f}x"), ("int8_vs_ort_fp32", "vs ORT fp32 dense", "{:.2f}x"),
    ("eff", "efficiency vs ORT int8", "{:.2f}"),
]


def int8_summary(results) -> list[str]:
    rows = [r for r in results if r["b"] == 32 and r["n"] >= 128]
    lines = [f"target: our int8 op >= {INT8_TARGET}x our fp32 op at the same density, b = 32, N >= 128"]
    if rows:
        ratios = [r["int8_vs_fp32"] for r in rows]
        lines.append(f"b = 32, N >= 128: int8 vs fp32 min {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x, "
                     f"max {max(ratios):.2f}x; target met in {sum(x >= INT8_TARGET for x in ratios)}/{len(ratios)} rows")
    full = [r for r in results if r["density"] >= 0.999]
    if full:
        lines.append("every block kept, ours int8 vs ONNX Runtime's int8 GEMM: "
                     + ", ".join(f"{r['shape']} N={r['n']} b={r['b']}: {r['int8_vs_ort_int8']:.2f}x" for r in full))
    return lines


COLUMNS = [
    ("shape", "out x in", "{}"), ("n", "N", "{}"), ("density", "dens", "{:.2f}"), ("b", "b", "{}"),
    ("ours_ort", "ours ORT ms", "{:.3f}"), ("ours_torch", "ours torch ms", "{:.3f}"),
    ("ort_dense", "ORT dense ms", "{:.3f}"), ("torch_dense", "torch dense ms", "{:.3f}"),
    ("torch_bsr", "torch BSR ms", "{:.3f}"), ("empty", "empty ms", "{:.3f}"), ("speedup", "x vs ORT dense", "{:.2f}"),
    ("eff", "efficiency", "{:.2f}"), ("ceiling", "ceiling", "{:.2f}"),
]


def format_table(results, markdown=False, columns=COLUMNS) -> str:
    header = [c[1] for c in columns]
    body = [[fmt.format(r[k]) for k, _, fmt in columns] for r in results]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    fmt_row = lambda row: "  ".join(v.rjust(w) for v, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt_row(header)] + [fmt_row(row) for row in body])


def summary(results) -> list[str]:
    target_rows = [r for r in results if r["b"] == 32 and r["n"] >= 128]
    lines = [f"target: efficiency >= {TARGET} for b = 32 and N >= 128 (density 0.2 -> >= {TARGET / 0.2:.0f}x faster than ORT dense)"]
    for b in sorted({r["b"] for r in results}, reverse=True):
        effs = [r["eff"] for r in results if r["b"] == b]
        lines.append(f"b = {b}: efficiency min {min(effs):.2f}, median {statistics.median(effs):.2f}, max {max(effs):.2f}")
    if target_rows:
        met = sum(r["eff"] >= TARGET for r in target_rows)
        lines.append(f"target met in {met}/{len(target_rows)} rows with b = 32")
        reachable = [r for r in target_rows if r["ceiling"] >= TARGET]
        met_reachable = sum(r["eff"] >= TARGET for r in reachable)
        lines.append(f"the estimated ceiling allows the target in {len(reachable)}/{len(target_rows)} of them; "
                     f"met in {met_reachable} of those")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small subset of shapes and densities")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", help="also write the table as markdown to this path")
    parser.add_argument("--densities", type=float, nargs="+", help=f"override the densities (default {DENSITIES})")
    parser.add_argument("--rows", type=int, nargs="+", help=f"override N (default {ROWS})")
    parser.add_argument("--blocks", type=int, nargs="+", help=f"override the block sizes (default {BLOCKS})")
    parser.add_argument("--shapes", nargs="+", help="override the shapes, as OUTxIN (e.g. 3072x768)")
    parser.add_argument("--int8", action="store_true", help="time the int8 path against fp32 and ONNX Runtime's int8 GEMM")
    args = parser.parse_args(argv)

    build.build(quiet=True)
    ops.load_library()
    warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta state")
    torch.set_num_threads(args.threads)
    cfg = dict(QUICK) if args.quick else dict(shapes=SHAPES, rows=ROWS, densities=DENSITIES, blocks=BLOCKS)
    if args.int8 and not args.quick:
        cfg["densities"] = INT8_DENSITIES
    row, columns, summarize = (bench_int8_row, INT8_COLUMNS, int8_summary) if args.int8 else (bench_row, COLUMNS, summary)
    for key in ("densities", "rows", "blocks"):
        if getattr(args, key):
            cfg[key] = getattr(args, key)
    if args.shapes:
        cfg["shapes"] = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    header = machine_info() + [f"threads: {args.threads} (torch.set_num_threads, ORT intra_op_num_threads, our kernel)"]
    print("\n".join(header), flush=True)

    rng = np.random.default_rng(0)
    results, cache = [], {}
    for shape in cfg["shapes"]:
        for rows in cfg["rows"]:
            for block in cfg["blocks"]:
                for density in cfg["densities"]:
                    results.append(row(shape, rows, density, block, args.threads, cache, rng))
                    print("  " + "  ".join(fmt.format(results[-1][k]) for k, _, fmt in columns), flush=True)
            cache.clear()
    table = format_table(results, columns=columns)
    print("\n" + table + "\n")
    print("\n".join(summarize(results)))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n\n".join(["\n".join(f"- {h}" for h in header), format_table(results, markdown=True, columns=columns),
                                   "\n".join(summarize(results))]) + "\n")
        print(f"markdown written to {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
