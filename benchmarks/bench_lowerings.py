"""Two graph shapes convert could emit instead of today's, timed alone in ONNX Runtime.

- scatter: a matrix whose pruned output rows are compacted adds its `kept` outputs into the residual
  stream with index_add on the hidden axis, which the exporter writes as Transpose x 3 + ScatterND(add)
  ("transpose_scatternd", today's). Against: ScatterElements(add) on the last axis with expanded
  indices, a Gather of the padded outputs then Add, and a MatMul by a 0/1 selection matrix, at
  several kept widths.
- qkv: Q, K and V as three matmuls on the same input (today's) against one matmul of the three
  weights side by side then Split, in fp32 (MatMul + Add) and int8 (DynamicQuantizeMatMul, which
  quantizes its input once per call instead of three times).

Every variant is checked against numpy before it is timed; one session open at a time, alternating
rounds (`time_sessions`). Run: python -m benchmarks.bench_lowerings [--hidden 384 --tokens 1024]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

from mlprune_fx.tools.benchmarking import machine_header, markdown_table, time_sessions

SCATTERS = ("transpose_scatternd", "scatter_elements", "gather_add", "matmul_select")


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = h.make_graph(nodes, "lowering", inputs, outputs, inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18), h.make_opsetid("com.microsoft", 1)])


def _value(name: str, shape: list[int]):
    return h.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def scatter_model(kind: str, tokens: int, hidden: int, kept: np.ndarray) -> onnx.ModelProto:
    """out[t, kept[j]] = residual[t, kept[j]] + y[t, j]; every other column is the residual's."""
    k = len(kept)
    nodes, inits = [], []
    if kind == "transpose_scatternd":
        inits.append(nh.from_array(kept.reshape(-1, 1).astype(np.int64), "index"))
        nodes += [h.make_node("Transpose", ["residual"], ["rt"], perm=[1, 0]),
                  h.make_node("Transpose", ["y"], ["yt"], perm=[1, 0]),
                  h.make_node("ScatterND", ["rt", "index", "yt"], ["ot"], reduction="add"),
                  h.make_node("Transpose", ["ot"], ["out"], perm=[1, 0])]
    elif kind == "scatter_elements":
        inits += [nh.from_array(kept.reshape(1, -1).astype(np.int64), "index"),
                  nh.from_array(np.array([tokens, k], np.int64), "shape")]
        nodes += [h.make_node("Expand", ["index", "shape"], ["indices"]),
                  h.make_node("ScatterElements", ["residual", "indices", "y"], ["out"], axis=1, reduction="add")]
    elif kind == "gather_add":
        source = np.full(hidden, k, np.int64)  # column k of the padded y is zero
        source[kept] = np.arange(k)
        inits += [nh.from_array(source, "source"), nh.from_array(np.array([0, 0, 0, 1], np.int64), "pads")]
        nodes += [h.make_node("Pad", ["y", "pads"], ["padded"]), h.make_node("Gather", ["padded", "source"], ["g"], axis=1),
                  h.make_node("Add", ["residual", "g"], ["out"])]
    elif kind == "matmul_select":
        select = np.zeros((k, hidden), np.float32)
        select[np.arange(k), kept] = 1
        inits.append(nh.from_array(select, "select"))
        nodes += [h.make_node("MatMul", ["y", "select"], ["g"]), h.make_node("Add", ["residual", "g"], ["out"])]
    else:
        raise ValueError(f"unknown scatter {kind!r}: one of {SCATTERS}")
    return _model(nodes, [_value("residual", [tokens, hidden]), _value("y", [tokens, k])],
                  [_value("out", [tokens, hidden])], inits)


def qkv_model(fused: bool, int8: bool, tokens: int, hidden: int, width: int, weights: list[np.ndarray]) -> onnx.ModelProto:
    """Q, K, V = x W_i (+ 0 bias), each `width` wide; int8 weights take a scale of 0.01 per column."""
    nodes, inits = [], []

    def linear(name: str, w: np.ndarray, out: str) -> None:
        bias = nh.from_array(np.zeros(w.shape[1], np.float32), name + "_bias")
        if int8:
            scale = nh.from_array(np.full(w.shape[1], 0.01, np.float32), name + "_scale")
            inits.extend([nh.from_array(w.astype(np.int8), name), scale, bias])
            nodes.append(h.make_node("DynamicQuantizeMatMul", ["x", name, scale.name, "", bias.name], [out],
                                     domain="com.microsoft"))
        else:
            inits.extend([nh.from_array(w.astype(np.float32), name), bias])
            nodes.extend([h.make_node("MatMul", ["x", name], [out + "_mm"]),
                          h.make_node("Add", [out + "_mm", bias.name], [out])])

    if fused:
        linear("w_qkv", np.concatenate(weights, axis=1), "qkv")
        inits.append(nh.from_array(np.array([width] * 3, np.int64), "split"))
        nodes.append(h.make_node("Split", ["qkv", "split"], ["q", "k", "v"], axis=1))
    else:
        for name, w in zip("qkv", weights):
            linear("w_" + name, w, name)
    return _model(nodes, [_value("x", [tokens, hidden])], [_value(n, [tokens, width]) for n in "qkv"], inits)


def _opener(path: Path, feeds: dict, threads: int):
    def open_session():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda: session.run(None, feeds)
    return open_session


def timed(models: dict[str, onnx.ModelProto], feeds: dict, check, args, tmp: Path) -> dict[str, float]:
    """Each model checked by `check(outputs)`, then timed: ms per call."""
    paths = {}
    for name, model in models.items():
        paths[name] = tmp / f"{name}.onnx"
        onnx.save(model, paths[name])
        check(name, ort.InferenceSession(str(paths[name]), providers=["CPUExecutionProvider"]).run(None, feeds))
    return time_sessions({n: _opener(p, feeds, args.threads) for n, p in paths.items()}, rounds=args.rounds,
                         runs=args.repeats)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=1024, help="batch x sequence (8 x 128)")
    p.add_argument("--hidden", type=int, default=384, help="the packaged MiniLM's width")
    p.add_argument("--kept", type=float, nargs="+", default=[0.125, 0.5, 0.875], help="kept shares of the outputs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=40)
    args = p.parse_args(argv)
    print(machine_header(args.threads))
    rng = np.random.default_rng(0)
    t, d = args.tokens, args.hidden
    scatter_rows, qkv_rows = [], []
    with tempfile.TemporaryDirectory(prefix="lowerings_") as tmp:
        tmp = Path(tmp)
        for share in args.kept:
            k = max(1, round(share * d))
            kept = np.sort(rng.choice(d, k, replace=False))
            feeds = {"residual": rng.standard_normal((t, d), dtype=np.float32),
                     "y": rng.standard_normal((t, k), dtype=np.float32)}
            want = feeds["residual"].copy()
            want[:, kept] += feeds["y"]

            def check(name, outs, want=want):
                np.testing.assert_allclose(outs[0], want, atol=1e-5, err_msg=name)

            ms = timed({kind: scatter_model(kind, t, d, kept) for kind in SCATTERS}, feeds, check, args, tmp)
            scatter_rows.append([f"{k} of {d}"] + [f"{ms[kind]:.3f}" for kind in SCATTERS])
            for int8 in (False, True):
                weights = [rng.integers(-127, 128, (d, k)).astype(np.float32) if int8 else
                           rng.standard_normal((d, k), dtype=np.float32) for _ in range(3)]
                x = {"x": rng.standard_normal((t, d), dtype=np.float32)}
                three = qkv_model(False, int8, t, d, k, weights)
                reference = ort.InferenceSession(three.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)

                def same(name, outs, reference=reference):
                    for got, expected in zip(outs, reference):
                        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3, err_msg=name)

                ms = timed({"three": three, "fused": qkv_model(True, int8, t, d, k, weights)}, x, same, args, tmp)
                qkv_rows.append([f"{k}", "int8" if int8 else "fp32", f"{ms['three']:.3f}", f"{ms['fused']:.3f}",
                                 f"{ms['three'] / ms['fused']:.2f}x"])
    print(f"\nindex_add of `kept` outputs into a {t} x {d} residual, ms per call:\n")
    print(markdown_table(["kept"] + list(SCATTERS), scatter_rows))
    print(f"\nQ, K, V of width `kept` from one {t} x {d} input, ms per call:\n")
    print(markdown_table(["width", "dtype", "three matmuls", "one matmul + Split", "fused speed-up"], qkv_rows))


if __name__ == "__main__":
    main()
