"""Native block-sparse kernel (torch op) against the pure-torch reference."""

from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlprune_fx.runtime import ops

pytestmark = pytest.mark.usefixtures("native_library")


@pytest.fixture(params=["avx512", "avx2", "scalar"])
def isa(request):
    active = ops.kernel_isa(request.param)
    yield active
    ops.kernel_isa("auto")


def _case(n_shape, rb, cb, b, density, bias, seed):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rb * b, cb * b, generator=g)
    mask = (torch.rand(rb, cb, generator=g) < density).int()
    x = torch.randn(*n_shape, cb * b, generator=g)
    bvec = torch.randn(rb * b, generator=g) if bias else None
    return weight, mask, x, bvec


@contextmanager
def _torch_threads(n):
    """torch's (and so the kernel's) thread count set to n for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check(x, packed, bias, activation="none", residual=None):
    if activation == "none" and residual is None:
        y = ops.block_sparse_linear(x, packed, bias)
    else:
        y = torch.ops.mlprune.block_sparse_linear(
            x, packed.values, packed.row_ptr, packed.col_idx, bias, packed.out_features, activation, residual)
    ref = ops.block_sparse_linear_reference(
        x, packed.values, packed.row_ptr, packed.col_idx, bias, packed.out_features, activation, residual)
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4 * scale)
    return y


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.one_of(st.integers(1, 300), st.sampled_from([1024, 1500])),
    lead=st.integers(1, 3),
    rb=st.integers(1, 20),
    cb=st.integers(1, 6),
    b=st.sampled_from([16, 32]),
    density=st.floats(0.0, 1.0),
    bias=st.booleans(),
    activation=st.sampled_from(["none", "gelu"]),
    residual=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_reference_fuzzed(isa, rows, lead, rb, cb, b, density, bias, activation, residual, seed):
    n_shape = {1: (rows,), 2: (2, (rows + 1) // 2), 3: (1, 3, (rows + 2) // 3)}[lead]
    weight, mask, x, bvec = _case(n_shape, rb, cb, b, density, bias, seed)
    packed = ops.pack_blocks(weight, mask, b)
    res = torch.randn(*n_shape, rb * b) if residual else None
    y = _check(x, packed, bvec, activation, res)
    assert y.shape == (*n_shape, rb * b)


@pytest.mark.parametrize("b", [16, 32])
def test_gelu_epilogue_over_the_whole_float_range(isa, b):
    # Outputs from -1e4 to 1e4 (and exact zeros): the vectorised erf must saturate and keep signs.
    weight = torch.eye(b)
    x = torch.cat([torch.linspace(-12, 12, 997), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e4, -1e4, 87.0, -87.0])])
    x = torch.nn.functional.pad(x, (0, (-x.numel()) % b)).reshape(-1, b)
    packed = ops.pack_blocks(weight, torch.ones(1, 1), b)
    y = torch.ops.mlprune.block_sparse_linear(x, packed.values, packed.row_ptr, packed.col_idx, None, b, "gelu", None)
    torch.testing.assert_close(y, F.gelu(x), rtol=0, atol=2e-6)
    assert not y.isnan().any()


def test_bad_activation_and_residual_shape_are_refused():
    weight, mask, x, _ = _case((5,), 2, 2, 16, 1.0, False, 3)
    packed = ops.pack_blocks(weight, mask, 16)
    args = (x, packed.values, packed.row_ptr, packed.col_idx, None, 32)
    with pytest.raises(RuntimeError, match="unknown activation 'relu'"):
        torch.ops.mlprune.block_sparse_linear(*args, "relu", None)
    with pytest.raises(RuntimeError, match="residual must be float32 with the output's shape"):
        torch.ops.mlprune.block_sparse_linear(*args, "none", torch.zeros(5, 16))


@pytest.mark.parametrize("b, rb, cb", [(32, 32, 32), (16, 64, 32)])
@pytest.mark.parametrize("n_shape", [(300,), (2, 77), (5,)])
@pytest.mark.parametrize("threads", [1, 2])
def test_packed_x_path(isa, b, rb, cb, n_shape, threads):
    """Enough kept blocks per input column that the AVX-512 path copies X into tile order first
    (each part's kept blocks * b * b >= 256 * in_features, with one or two parts); with in = 1024 / 512
    a task holds 128 / 256 rows, so 300 rows span several tasks and end in a partial tile."""
    weight, mask, x, bvec = _case(n_shape, rb, cb, b, 0.6, True, 7)
    packed = ops.pack_blocks(weight, mask, b)
    assert packed.nnzb * b * b >= 2 * 256 * cb * b
    with _torch_threads(threads):
        _check(x, packed, bvec)
        _check(x, packed, None, "gelu", torch.randn(*n_shape, rb * b))


@pytest.mark.parametrize("b, rb", [(32, 16), (16, 40)])
@pytest.mark.parametrize("threads", [1, 2])
def test_streaming_store_path(isa, b, rb, threads):
    """An output larger than a core's L2 (here 8 MB: 4100 x 512 / 640 floats) is written with
    streaming stores on the vector paths, and with a residual and this small a W (67 / 189 kept
    blocks) a task is one row tile across all row-blocks; 4100 rows end in a partial tile."""
    weight, mask, x, bvec = _case((4100,), rb, 12, b, 0.4, True, 11)
    packed = ops.pack_blocks(weight, mask, b)
    with _torch_threads(threads):
        _check(x, packed, bvec)
        _check(x, packed, bvec, "gelu", torch.randn(4100, rb * b))


@pytest.mark.parametrize("b", [16, 32])
@pytest.mark.parametrize("bias", [False, True])
def test_empty_full_and_empty_row_blocks(isa, b, bias):
    weight, _, x, bvec = _case((37,), 4, 3, b, 0.5, bias, 0)
    empty = ops.pack_blocks(weight, torch.zeros(4, 3), b)
    y = _check(x, empty, bvec)
    torch.testing.assert_close(y, (bvec if bias else torch.zeros(b * 4)).expand(37, -1))

    full = ops.pack_blocks(weight, torch.ones(4, 3), b)
    torch.testing.assert_close(_check(x, full, bvec), F.linear(x, weight, bvec), rtol=1e-4, atol=1e-4)

    mask = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 1], [0, 0, 0]])
    gaps = ops.pack_blocks(weight, mask, b)
    assert gaps.row_ptr.tolist() == [0, 2, 2, 4, 4]
    y = _check(x, gaps, bvec)
    dense_masked = weight * mask.repeat_interleave(b, 0).repeat_interleave(b, 1)
    torch.testing.assert_close(y, F.linear(x, dense_masked, bvec), rtol=1e-4, atol=1e-4)


def test_zero_rows():
    weight, mask, _, _ = _case((1,), 2, 2, 16, 1.0, False, 1)
    y = ops.block_sparse_linear(torch.empty(0, 32), ops.pack_blocks(weight, mask, 16))
    assert y.shape == (0, 32)


@pytest.mark.parametrize("b", [16, 32])
def test_pack_unpack_round_trip(b):
    weight, mask, _, _ = _case((1,), 5, 4, b, 0.4, False, 3)
    packed = ops.pack_blocks(weight, mask, b)
    assert packed.nnzb == int(mask.sum())
    assert packed.values.shape == (packed.nnzb, b, b)
    expected = weight * mask.repeat_interleave(b, 0).repeat_interleave(b, 1)
    torch.testing.assert_close(ops.unpack_blocks(packed), expected, rtol=0, atol=0)
    # values hold each block transposed: values[k][i][j] = W[r*b + j, c*b + i]
    r, c = torch.nonzero(mask)[0].tolist()
    torch.testing.assert_close(packed.values[0], weight[r * b : (r + 1) * b, c * b : (c + 1) * b].T)


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\[48, 64\].*32x32"):
        ops.pack_blocks(torch.randn(48, 64), torch.ones(2, 2), 32)
    with pytest.raises(ValueError, match="block size 8"):
        ops.pack_blocks(torch.randn(64, 64), torch.ones(8, 8), 8)
    with pytest.raises(ValueError, match="block_mask must have shape"):
        ops.pack_blocks(torch.randn(64, 64), torch.ones(3, 2), 32)
    packed = ops.pack_blocks(torch.randn(64, 64), torch.ones(2, 2), 32)
    with pytest.raises(RuntimeError, match="not a whole number of 32x32 blocks"):
        torch.ops.mlprune.block_sparse_linear(torch.randn(3, 64), packed.values, packed.row_ptr, packed.col_idx, None, 48)
    with pytest.raises(RuntimeError, match="row_ptr has"):
        torch.ops.mlprune.block_sparse_linear(torch.randn(3, 64), packed.values, packed.row_ptr, packed.col_idx, None, 96)
    with pytest.raises(RuntimeError, match="col_idx"):
        bad = packed.col_idx.clone()
        bad[0] = 7
        torch.ops.mlprune.block_sparse_linear(torch.randn(3, 64), packed.values, packed.row_ptr, bad, None, 64)


def test_thread_count_does_not_change_result():
    weight, mask, x, bvec = _case((2, 300), 6, 5, 32, 0.5, True, 4)
    packed = ops.pack_blocks(weight, mask, 32)
    with _torch_threads(1):
        y1 = ops.block_sparse_linear(x, packed, bvec)
    with _torch_threads(2):
        y2 = ops.block_sparse_linear(x, packed, bvec)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)


def test_module_matches_masked_linear():
    weight, mask, x, bvec = _case((4, 9), 3, 4, 16, 0.5, True, 5)
    layer = ops.BlockSparseLinear.from_dense(weight, bvec, mask, 16)
    dense_masked = weight * mask.repeat_interleave(16, 0).repeat_interleave(16, 1)
    torch.testing.assert_close(layer(x), F.linear(x, dense_masked, bvec), rtol=1e-4, atol=1e-4)
    assert set(dict(layer.named_buffers())) == {"values", "row_ptr", "col_idx", "bias"}
    assert "density=" in repr(layer)


def test_fake_impl_under_torch_export():
    weight, mask, x, bvec = _case((2, 7), 2, 3, 32, 0.6, True, 6)
    model = torch.nn.Sequential(ops.BlockSparseLinear.from_dense(weight, bvec, mask, 32), torch.nn.GELU()).eval()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch, 1: seq},))
    targets = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert torch.ops.mlprune.block_sparse_linear.default in targets
    x2 = torch.randn(3, 11, 96)
    torch.testing.assert_close(exported.module()(x2), model(x2))


def test_missing_library_names_build_command(monkeypatch, tmp_path):
    monkeypatch.setenv("MLPRUNE_NATIVE_DIR", str(tmp_path))
    monkeypatch.setattr(ops, "_loaded", False)
    with pytest.raises(ops.NativeLibraryMissing, match="python -m mlprune_fx.runtime.build"):
        ops.load_library()
