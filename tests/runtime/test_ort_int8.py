"""The int8 ops in ONNX Runtime: ai.mlprune::BlockSparseLinearInt8 (our library) and int8_linear as
ONNX Runtime's DynamicQuantizeMatMul, both against the torch ops; and their standard-op forms."""

import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from mlprune_fx.runtime import int8, ort_library
from mlprune_fx.runtime.library import ORT_DOMAIN
from mlprune_fx.runtime.onnx_translation import translation_table

pytestmark = pytest.mark.usefixtures("native_library")


class Int8Layers(torch.nn.Module):
    """A block-sparse int8 layer (b = 32, GELU folded in) then a dense int8 one, with a residual."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc1 = int8.pack_blocks_int8(torch.randn(128, 64, generator=g), torch.tensor([[1, 0], [0, 0], [1, 1], [0, 1]]), 32)
        self.b1 = torch.randn(128, generator=g)
        q = int8.quantize_weight(torch.randn(64, 128, generator=g))
        self.w2_t, self.s2 = q.values.T.contiguous(), q.scale

    def forward(self, x):
        p = self.fc1
        h = torch.ops.mlprune.block_sparse_linear_int8(x, p.values, p.row_ptr, p.col_idx, p.w_scale, p.w_sum, self.b1,
                                                       128, "gelu")
        return torch.ops.mlprune.int8_linear(h, self.w2_t, self.s2, None) + x


def _session(model, standard_ops):
    x = torch.randn(2, 5, 64)
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")},)
    proto = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=dims, verbose=False,
                              custom_translation_table=translation_table(standard_ops)).model_proto
    onnx.checker.check_model(proto)
    kinds = {(n.domain, n.op_type) for n in proto.graph.node}
    options = ort.SessionOptions() if standard_ops else ort_library.register_library()
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"]), kinds


@pytest.mark.parametrize("standard_ops", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (2, 64)])
def test_exported_int8_layers_match_torch(standard_ops, shape):
    model = Int8Layers().eval()
    session, kinds = _session(model, standard_ops)
    if standard_ops:
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {k for _, k in kinds}
        assert not any(domain for domain, _ in kinds)
    else:
        assert {(ORT_DOMAIN, "BlockSparseLinearInt8"), ("com.microsoft", "DynamicQuantizeMatMul")} <= kinds
    x = torch.randn(*shape, 64, generator=torch.Generator().manual_seed(sum(shape)))
    expected = model(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


def test_weights_out_of_range_are_refused_in_ort():
    packed = int8.pack_blocks_int8(torch.randn(32, 32), torch.ones(1, 1), 32)
    values = packed.values.clone()
    values.view(-1)[0] = 127
    inits = [numpy_helper.from_array(t.numpy(), name) for name, t in (
        ("values", values), ("row_ptr", packed.row_ptr), ("col_idx", packed.col_idx), ("w_scale", packed.w_scale),
        ("w_sum", packed.w_sum))]
    node = helper.make_node("BlockSparseLinearInt8", ["X", "values", "row_ptr", "col_idx", "w_scale", "w_sum"], ["Y"],
                            domain=ORT_DOMAIN, out_features=32)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 32])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(ORT_DOMAIN, 1)],
                              ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), ort_library.register_library(),
                                   providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match=r"BlockSparseLinearInt8: int8 weights must lie in \[-64, 64\]"):
        session.run(None, {"X": np.ones((2, 32), np.float32)})


_RUN_IN_ORT = """
import sys, numpy as np, onnxruntime as ort
folder, library = sys.argv[1:]
options = ort.SessionOptions()
options.register_custom_ops_library(library)
sess = ort.InferenceSession(folder + "/model.onnx", options, providers=["CPUExecutionProvider"])
np.save(folder + "/y.npy", sess.run(None, {sess.get_inputs()[0].name: np.load(folder + "/x.npy")})[0])
"""


@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
def test_every_path_gives_the_same_bits_in_ort(isa, tmp_path):
    """The ISA is picked when the library loads, hence a fresh process for each; the integer sums are exact on
    every path, so the outputs agree with the best path's to the last bit of the float epilogue."""
    model = Int8Layers().eval()
    x = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(3))
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")},)
    proto = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=dims, verbose=False,
                              custom_translation_table=translation_table()).model_proto
    onnx.save(proto, tmp_path / "model.onnx")
    np.save(tmp_path / "x.npy", x.numpy())
    env = {**{k: v for k, v in os.environ.items() if k != "MLPRUNE_KERNEL_ISA"}, "MLPRUNE_KERNEL_ISA": isa}
    subprocess.run([sys.executable, "-c", _RUN_IN_ORT, str(tmp_path), ort_library.library_path()], env=env, check=True)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model(x).numpy(), rtol=1e-5, atol=1e-5)
