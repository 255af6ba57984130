"""BlockSparseLinear exported to ONNX: custom ai.mlprune op in ONNX Runtime, and the standard-op lowering."""

import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from mlprune_fx.runtime import ops, ort_library
from mlprune_fx.runtime.library import ORT_DOMAIN
from mlprune_fx.runtime.onnx_translation import translation_table

from conftest import packed_initializers

SHAPES = [(2, 5), (3, 17), (1, 1), (4, 64)]


pytestmark = pytest.mark.usefixtures("native_library")


class TinyEncoderFFN(torch.nn.Module):
    """Two block-sparse layers (b = 32 with bias, b = 16 without) around a GELU."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        w1, w2 = torch.randn(128, 64, generator=g), torch.randn(64, 128, generator=g)
        m1 = torch.tensor([[1, 0], [0, 0], [1, 1], [0, 1]])
        m2 = (torch.rand(4, 8, generator=g) < 0.4).int()
        self.fc1 = ops.BlockSparseLinear.from_dense(w1, torch.randn(128, generator=g), m1, 32)
        self.fc2 = ops.BlockSparseLinear.from_dense(w2, None, m2, 16)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x))) + x


def _export(model, standard_ops):
    x = torch.randn(2, 5, 64)
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")},)
    program = torch.onnx.export(
        model, (x,), dynamo=True, dynamic_shapes=dims, custom_translation_table=translation_table(standard_ops), verbose=False
    )
    return program.model_proto


@pytest.fixture(scope="module")
def model():
    return TinyEncoderFFN().eval()


@pytest.fixture(scope="module")
def custom_proto(model):
    return _export(model, standard_ops=False)


@pytest.fixture(scope="module")
def standard_proto(model):
    return _export(model, standard_ops=True)


def _run(proto, options, shape, threads=2):
    options.intra_op_num_threads = threads
    sess = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = torch.randn(*shape, 64)
    return x, sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def test_custom_op_graph(custom_proto):
    kinds = {(n.domain, n.op_type) for n in custom_proto.graph.node}
    assert (ORT_DOMAIN, "BlockSparseLinear") in kinds
    assert any(o.domain == ORT_DOMAIN for o in custom_proto.opset_import)


@pytest.mark.parametrize("shape", SHAPES)
def test_custom_op_in_ort_matches_torch(model, custom_proto, shape):
    x, y = _run(custom_proto, ort_library.register_library(ort.SessionOptions()), shape)
    np.testing.assert_allclose(y, model(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_custom_op_single_thread(model, custom_proto):
    x, y = _run(custom_proto, ort_library.register_library(), (3, 40), threads=1)
    np.testing.assert_allclose(y, model(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_standard_lowering_uses_only_standard_ops(standard_proto):
    assert all(n.domain in ("", "ai.onnx") for n in standard_proto.graph.node)
    assert all(o.domain in ("", "ai.onnx") for o in standard_proto.opset_import)


@pytest.mark.parametrize("shape", SHAPES)
def test_standard_lowering_runs_in_plain_ort(model, custom_proto, standard_proto, shape):
    x, y_std = _run(standard_proto, ort.SessionOptions(), shape)
    np.testing.assert_allclose(y_std, model(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    sess = ort.InferenceSession(
        custom_proto.SerializeToString(), ort_library.register_library(), providers=["CPUExecutionProvider"]
    )
    y_custom = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(y_std, y_custom, rtol=1e-4, atol=1e-4)


def _raw_model(out_features, row_ptr):
    b = 16
    values = np.random.default_rng(0).standard_normal((2, b, b)).astype(np.float32)
    inits = [
        helper.make_tensor("values", TensorProto.FLOAT, values.shape, values.ravel()),
        helper.make_tensor("row_ptr", TensorProto.INT64, [len(row_ptr)], row_ptr),
        helper.make_tensor("col_idx", TensorProto.INT64, [2], [0, 1]),
    ]
    node = helper.make_node(
        "BlockSparseLinear", ["X", "values", "row_ptr", "col_idx"], ["Y"], domain=ORT_DOMAIN, out_features=out_features
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 32])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        inits,
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(ORT_DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def test_raw_node_and_bad_input_error():
    sess = ort.InferenceSession(
        _raw_model(32, [0, 1, 2]).SerializeToString(), ort_library.register_library(), providers=["CPUExecutionProvider"]
    )
    x = np.ones((3, 32), np.float32)
    assert sess.run(None, {"X": x})[0].shape == (3, 32)
    bad = ort.InferenceSession(
        _raw_model(48, [0, 1, 2]).SerializeToString(), ort_library.register_library(), providers=["CPUExecutionProvider"]
    )
    with pytest.raises(Exception, match="BlockSparseLinear: row_ptr has 3 entries"):
        bad.run(None, {"X": x})


def test_missing_library_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MLPRUNE_NATIVE_DIR", str(tmp_path))
    with pytest.raises(ort_library.OrtLibraryMissing, match="python -m mlprune_fx.runtime.build"):
        ort_library.library_path()
    with pytest.raises(ort_library.OrtLibraryMissing):
        ort_library.register_library(ort.SessionOptions())


def test_custom_model_passes_onnx_checker(custom_proto):
    onnx.checker.check_model(custom_proto)


@pytest.mark.parametrize("activation", [None, "gelu"])
def test_fused_epilogue_in_ort_matches_the_reference(activation):
    # bias left out ("") while the residual input is given: optional inputs by position.
    b, out_features = 16, 32
    g = torch.Generator().manual_seed(4)
    weight, mask = torch.randn(out_features, 48, generator=g), torch.tensor([[1, 0, 1], [0, 1, 1]])
    packed = ops.pack_blocks(weight, mask, b)
    inits = packed_initializers(packed)
    attrs = {"activation": activation} if activation else {}
    node = helper.make_node("BlockSparseLinear", ["X", "values", "row_ptr", "col_idx", "", "R"], ["Y"],
                            domain=ORT_DOMAIN, out_features=out_features, **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 48]),
         helper.make_tensor_value_info("R", TensorProto.FLOAT, ["n", "m"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(ORT_DOMAIN, 1)], ir_version=10)
    sess = ort.InferenceSession(model.SerializeToString(), ort_library.register_library(), providers=["CPUExecutionProvider"])
    x, r = torch.randn(7, 48, generator=g), torch.randn(7, out_features, generator=g)
    y = sess.run(None, {"X": x.numpy(), "R": r.numpy()})[0]
    ref = ops.block_sparse_linear_reference(x, packed.values, packed.row_ptr, packed.col_idx, None, out_features,
                                            activation or "none", r)
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="residual must have the output's shape"):
        sess.run(None, {"X": x.numpy(), "R": r[:, :16].contiguous().numpy()})


_RUN_IN_ORT = """
import sys, numpy as np, onnxruntime as ort
folder, library = sys.argv[1:]
options = ort.SessionOptions()
options.register_custom_ops_library(library)
sess = ort.InferenceSession(folder + "/model.onnx", options, providers=["CPUExecutionProvider"])
np.save(folder + "/z.npy", sess.run(None, {"X": np.load(folder + "/x.npy"), "Rin": np.load(folder + "/r.npy")})[0])
"""


@pytest.mark.parametrize("block", [16, 32])
@pytest.mark.parametrize("rows", [7, 4100])
@pytest.mark.parametrize("isa", ["auto", "avx2", "scalar"])
def test_output_written_in_place_of_the_residual(block, rows, isa, tmp_path):
    # R is an intermediate read by nothing else and, with static shapes, known to match Y: ORT then
    # gives Y R's buffer (seen with a probe in the op), so the kernel reads and writes the same lines.
    # 4100 x 128 floats is larger than L2, where a separate y would be written with streaming stores.
    # The ISA is picked when the library loads, hence a fresh process.
    in_features, out_features = 96, 128
    g = torch.Generator().manual_seed(block + rows)
    weight, bias = torch.randn(out_features, in_features, generator=g), torch.randn(out_features, generator=g)
    mask = (torch.rand(out_features // block, in_features // block, generator=g) < 0.6).int()
    mask[0] = 0  # an empty row-block: y there is act(bias) + residual
    packed = ops.pack_blocks(weight, mask, block)
    inits = packed_initializers(packed) + [helper.make_tensor("bias", TensorProto.FLOAT, [out_features], bias.tolist())]
    nodes = [
        helper.make_node("Neg", ["Rin"], ["R"]),
        helper.make_node("BlockSparseLinear", ["X", "values", "row_ptr", "col_idx", "bias", "R"], ["Y"],
                         domain=ORT_DOMAIN, out_features=out_features, activation="gelu"),
        helper.make_node("Neg", ["Y"], ["Z"]),  # a graph output gets a buffer of its own; Y must not be one
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [rows, in_features]),
         helper.make_tensor_value_info("Rin", TensorProto.FLOAT, [rows, out_features])],
        [helper.make_tensor_value_info("Z", TensorProto.FLOAT, [rows, out_features])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(ORT_DOMAIN, 1)],
                              ir_version=10)
    x, r = torch.randn(rows, in_features, generator=g), torch.randn(rows, out_features, generator=g)
    onnx.save(model, tmp_path / "model.onnx")
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "r.npy", r.numpy())
    env = {k: v for k, v in os.environ.items() if k != "MLPRUNE_KERNEL_ISA"}
    if isa != "auto":
        env["MLPRUNE_KERNEL_ISA"] = isa
    subprocess.run([sys.executable, "-c", _RUN_IN_ORT, str(tmp_path), ort_library.library_path()], env=env, check=True)
    ref = ops.block_sparse_linear_reference(x, packed.values, packed.row_ptr, packed.col_idx, bias, out_features,
                                            "gelu", -r)
    np.testing.assert_allclose(-np.load(tmp_path / "z.npy"), ref.numpy(), rtol=1e-5, atol=1e-5)
