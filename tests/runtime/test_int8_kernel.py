"""The int8 path of the native kernel against the pure-torch integer reference, on every ISA path."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlprune_fx.runtime import int8, ops

pytestmark = pytest.mark.usefixtures("native_library")

PATHS = ["avx512vnni", "avx512", "avx2", "scalar"]


@pytest.fixture(params=PATHS)
def isa(request):
    active = ops.kernel_isa(request.param)
    if active != request.param:
        ops.kernel_isa("auto")
        pytest.skip(f"this CPU has no {request.param} path (it runs {active})")
    yield active
    ops.kernel_isa("auto")


def _case(rows, rb, cb, b, density, seed, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rb * b, cb * b, generator=g)
    mask = (torch.rand(rb, cb, generator=g) < density).int()
    x = torch.randn(rows, cb * b, generator=g) * spread + torch.randn(rows, 1, generator=g)
    return int8.pack_blocks_int8(weight, mask, b), x


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.one_of(st.integers(1, 200), st.sampled_from([1024, 1300])),
    rb=st.integers(1, 12),
    cb=st.integers(1, 6),
    b=st.sampled_from([16, 32]),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    threads=st.sampled_from([1, 2]),
)
def test_integer_parts_equal_the_reference_bit_for_bit(isa, rows, rb, cb, b, density, seed, threads):
    packed, x = _case(rows, rb, cb, b, density, seed)
    q, scale, zp = torch.ops.mlprune.quantize_rows_u8(x)
    q_ref, scale_ref, zp_ref = int8.quantize_rows_reference(x)
    assert torch.equal(q, q_ref) and torch.equal(scale, scale_ref) and torch.equal(zp, zp_ref)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        acc = torch.ops.mlprune.block_sparse_matmul_u8s8(q, packed.values, packed.row_ptr, packed.col_idx, rb * b)
    finally:
        torch.set_num_threads(before)
    ref = int8.block_sparse_matmul_u8s8_reference(q, packed.values, packed.row_ptr, packed.col_idx, rb * b)
    assert acc.dtype == torch.int32 and torch.equal(acc, ref)


def test_row_quantizer_rounds_ties_to_even_and_clamps_like_the_reference(isa):
    """Scale 1 (a row spanning [0, 255]) puts k + 0.5 exactly on a tie; widths 70 and 96 take the vector body and
    its scalar tail."""
    for width in (70, 96):
        x = (torch.arange(width, dtype=torch.float32) % 255 + 0.5).repeat(3, 1)
        x[:, 0], x[:, -1] = 0.0, 255.0
        x[1] *= -1
        x[2] /= 2
        q, scale, zp = torch.ops.mlprune.quantize_rows_u8(x)
        q_ref, scale_ref, zp_ref = int8.quantize_rows_reference(x)
        assert torch.equal(scale, scale_ref) and torch.equal(zp, zp_ref)
        assert torch.equal(q, q_ref), (q - q_ref.to(q.dtype)).nonzero()


def test_extreme_values_do_not_saturate(isa):
    """Every product at its largest: 255 x +-64 in every lane, where vpmaddubsw would saturate with 8-bit weights."""
    b, cb = 32, 8
    values = torch.full((4, b // 4, b, 4), int8.INT8_WEIGHT_MAX, dtype=torch.int8)
    values[1::2] = -int8.INT8_WEIGHT_MAX
    row_ptr = torch.tensor([0, 2, 4])
    col_idx = torch.tensor([0, 7, 3, 5])
    q = torch.full((5, cb * b), 255, dtype=torch.uint8)
    acc = torch.ops.mlprune.block_sparse_matmul_u8s8(q, values, row_ptr, col_idx, 2 * b)
    assert torch.equal(acc, int8.block_sparse_matmul_u8s8_reference(q, values, row_ptr, col_idx, 2 * b))
    assert int(acc.abs().max()) == 0  # +64 and -64 blocks cancel exactly


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.integers(1, 150), rb=st.integers(1, 8), cb=st.integers(1, 4), b=st.sampled_from([16, 32]),
    density=st.floats(0.2, 1.0), bias=st.booleans(), activation=st.sampled_from(["none", "gelu"]),
    residual=st.booleans(), seed=st.integers(0, 2**16),
)
def test_dequantized_op_matches_the_reference(isa, rows, rb, cb, b, density, bias, activation, residual, seed):
    packed, x = _case(rows, rb, cb, b, density, seed)
    g = torch.Generator().manual_seed(seed + 1)
    bvec = torch.randn(rb * b, generator=g) if bias else None
    res = torch.randn(rows, rb * b, generator=g) if residual else None
    y = int8.block_sparse_linear_int8(x, packed, bvec, activation, res)
    ref = int8.block_sparse_linear_int8_reference(x, packed.values, packed.row_ptr, packed.col_idx, packed.w_scale,
                                                  packed.w_sum, bvec, rb * b, activation, res)
    scale = max(1.0, float(ref.abs().max()))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=2e-6 * scale)


@pytest.mark.parametrize("rows", [24, 50, 128])
def test_rows_split_between_threads_give_the_same_bits(isa, rows):
    """Few rows: parts take rows, not row-blocks (each quantizes only its own); every thread count agrees."""
    packed, x = _case(rows, 6, 4, 32, 0.3, seed=rows)
    bias = torch.randn(6 * 32, generator=torch.Generator().manual_seed(3))
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(int8.block_sparse_linear_int8(x, packed, bias, "gelu"))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(outs[0], y) for y in outs[1:])
    ref = int8.block_sparse_linear_int8_reference(x, packed.values, packed.row_ptr, packed.col_idx, packed.w_scale,
                                                  packed.w_sum, bias, 6 * 32, "gelu")
    torch.testing.assert_close(outs[0], ref, rtol=1e-5, atol=2e-6 * max(1.0, float(ref.abs().max())))


@pytest.mark.parametrize("residual", [False, True])
def test_cold_outputs_streamed_and_row_ordered_match_the_reference(isa, residual):
    """An output over 1 MB is written with streaming stores, and with a residual in row-ordered tasks."""
    rows, rb, cb, b = 1100, 12, 6, 32
    packed, x = _case(rows, rb, cb, b, 0.5, seed=7)
    g = torch.Generator().manual_seed(8)
    bias, res = torch.randn(rb * b, generator=g), torch.randn(rows, rb * b, generator=g) if residual else None
    assert rows * rb * b * 4 > 2**20
    y = int8.block_sparse_linear_int8(x, packed, bias, "gelu", res)
    ref = int8.block_sparse_linear_int8_reference(x, packed.values, packed.row_ptr, packed.col_idx, packed.w_scale,
                                                  packed.w_sum, bias, rb * b, "gelu", res)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=2e-6 * max(1.0, float(ref.abs().max())))


def test_int8_is_close_to_float(isa):
    """Quantization error of the whole op against the float linear it stands for: a few tenths of a percent."""
    weight = torch.randn(256, 384, generator=torch.Generator().manual_seed(0)) * 0.05
    mask = torch.ones(256 // 32, 384 // 32)
    packed = int8.pack_blocks_int8(weight, mask, 32)
    x = torch.randn(64, 384, generator=torch.Generator().manual_seed(1))
    y = int8.block_sparse_linear_int8(x, packed)
    exact = x @ weight.T
    assert float((y - exact).norm() / exact.norm()) < 0.02


def test_weights_outside_the_seven_bit_range_are_refused():
    packed, x = _case(4, 2, 2, 16, 1.0, 0)
    values = packed.values.clone()
    values.view(-1)[7] = -100
    with pytest.raises(RuntimeError, match=r"int8 weights must lie in \[-64, 64\]"):
        torch.ops.mlprune.block_sparse_linear_int8(x, values, packed.row_ptr, packed.col_idx, packed.w_scale,
                                                   packed.w_sum, None, 32)


def test_bad_shapes_raise_clear_errors():
    packed, x = _case(4, 2, 2, 16, 1.0, 0)
    with pytest.raises(RuntimeError, match="values must have shape"):
        torch.ops.mlprune.block_sparse_linear_int8(x, packed.values.reshape(-1, 16, 16), packed.row_ptr,
                                                   packed.col_idx, packed.w_scale, packed.w_sum, None, 32)
    with pytest.raises(RuntimeError, match="w_scale and w_sum need one entry per output"):
        torch.ops.mlprune.block_sparse_linear_int8(x, packed.values, packed.row_ptr, packed.col_idx,
                                                   packed.w_scale[:3], packed.w_sum, None, 32)
    with pytest.raises(RuntimeError, match="x must be float32"):
        torch.ops.mlprune.block_sparse_linear_int8(x.double(), packed.values, packed.row_ptr, packed.col_idx,
                                                   packed.w_scale, packed.w_sum, None, 32)


def test_quantized_blocks_stand_for_the_weights():
    weight = torch.randn(64, 96)
    mask = (torch.rand(4, 6, generator=torch.Generator().manual_seed(2)) < 0.6).float()
    packed = int8.pack_blocks_int8(weight, mask, 16)
    kept = weight * mask.repeat_interleave(16, 0).repeat_interleave(16, 1)
    dense = int8.unpack_blocks_int8(packed.values, packed.row_ptr, packed.col_idx, 64, 96)
    assert int(dense.abs().max()) <= int8.INT8_WEIGHT_MAX
    assert torch.equal(packed.w_sum, dense.to(torch.int32).sum(1))
    torch.testing.assert_close(dense.float() * packed.w_scale[:, None], kept, rtol=0, atol=float(packed.w_scale.max()) / 2)


def test_zero_rows_and_all_zero_inputs():
    packed, _ = _case(1, 2, 2, 16, 1.0, 0)
    assert int8.block_sparse_linear_int8(torch.zeros(0, 32), packed).shape == (0, 32)
    q, scale, zp = torch.ops.mlprune.quantize_rows_u8(torch.zeros(3, 32))
    assert int(q.max()) == 0 and torch.equal(scale, torch.ones(3)) and int(zp.max()) == 0
    torch.testing.assert_close(int8.block_sparse_linear_int8(torch.zeros(3, 32), packed), torch.zeros(3, 32))


def test_fake_impl_under_torch_export():
    packed, x = _case(6, 2, 2, 16, 1.0, 0)

    class M(torch.nn.Module):
        def forward(self, x):
            return torch.ops.mlprune.block_sparse_linear_int8(x, packed.values, packed.row_ptr, packed.col_idx,
                                                              packed.w_scale, packed.w_sum, None, 32)

    program = torch.export.export(M(), (x,), dynamic_shapes={"x": {0: torch.export.Dim("n")}})
    torch.testing.assert_close(program.module()(x), M()(x))


def test_int8_linear_is_dynamic_quantize_matmul():
    """The dense int8 op: per-tensor quantization as ONNX Runtime's DynamicQuantizeLinear defines it."""
    x = torch.randn(3, 5, 40) * 4
    q = int8.quantize_weight(torch.randn(24, 40))
    y = int8.int8_linear(x, q.values.T.contiguous(), q.scale, None)
    qx, scale, zp = int8.quantize_tensor_reference(x)
    exact = (qx.double() - float(zp)) @ q.values.double().T
    torch.testing.assert_close(y, (exact.float() * (scale * q.scale)))
    assert float((y - x @ (q.values.float() * q.scale[:, None]).T).abs().max()) < 0.05 * float(y.abs().max())
