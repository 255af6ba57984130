"""Native kernel reliability: one ONNX Runtime session (and two) used from several threads, the torch op from
threads, and no memory growth over many calls. `make sanitize` runs this file too, under ASan + UBSan."""

import gc
import os
import resource
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

import mlprune_fx.runtime
from mlprune_fx.runtime import library, ops
from mlprune_fx.runtime.library import ORT_DOMAIN
from mlprune_fx.runtime.onnx_translation import translation_table

from conftest import packed_initializers

THREADS = 4
RSS_BOUND = 5 * 2**20


pytestmark = pytest.mark.usefixtures("native_library")  # conftest: build if stale, then load


@pytest.fixture(autouse=True)
def _slow_only_when_asked(request):
    """Slow tests stay out of the default run unless `-m slow` (or any marker expression naming it) is given."""
    if request.node.get_closest_marker("slow") and "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("slow: run with -m slow")


def _maps() -> str:
    return Path("/proc/self/maps").read_text()


def _under_asan() -> bool:
    return "libasan" in _maps()


def _rss() -> int:
    gc.collect()
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def _session(path, threads):
    """Under ASan, ORT's CPU arena is off so each tensor is its own heap block and an overrun past it is caught."""
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = not _under_asan()
    return mlprune_fx.runtime.InferenceSession(path, options, num_threads=threads)


class SparseFFN(torch.nn.Module):
    """Two block-sparse layers (b = 32 with bias and an empty row-block, b = 16 without bias) around a GELU."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w1, w2 = torch.randn(128, 64, generator=g), torch.randn(64, 128, generator=g)
        m1 = torch.tensor([[1, 1], [0, 0], [0, 1], [1, 0]])
        m2 = (torch.rand(4, 8, generator=g) < 0.5).int()
        self.fc1 = ops.BlockSparseLinear.from_dense(w1, torch.randn(128, generator=g), m1, 32)
        self.fc2 = ops.BlockSparseLinear.from_dense(w2, None, m2, 16)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x))) + x

    def reference(self, x):
        """The same function on dense masked weights, without the native kernel."""
        w1, w2 = ops.unpack_blocks(self.fc1.packed), ops.unpack_blocks(self.fc2.packed)
        return F.linear(F.gelu(F.linear(x, w1, self.fc1.bias)), w2) + x


@pytest.fixture(scope="module")
def ffn():
    return SparseFFN().eval()


@pytest.fixture(scope="module")
def ffn_path(ffn, tmp_path_factory):
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")},)
    program = torch.onnx.export(
        ffn, (torch.randn(2, 5, 64),), dynamo=True, dynamic_shapes=dims, custom_translation_table=translation_table(), verbose=False
    )
    assert any(n.domain == ORT_DOMAIN for n in program.model_proto.graph.node)
    path = tmp_path_factory.mktemp("onnx") / "sparse_ffn.onnx"
    onnx.save(program.model_proto, str(path))
    return path


def _single_node_model(path, seed=1, b=16, rb=3, cb=5):
    """One raw BlockSparseLinear node with bias; returns (path, packed, bias) for the reference."""
    g = torch.Generator().manual_seed(seed)
    packed = ops.pack_blocks(torch.randn(rb * b, cb * b, generator=g), (torch.rand(rb, cb, generator=g) < 0.6).int(), b)
    bias = torch.randn(rb * b, generator=g)
    inits = packed_initializers(packed) + [helper.make_tensor("bias", TensorProto.FLOAT, [rb * b], bias.tolist())]
    node = helper.make_node(
        "BlockSparseLinear", ["X", "values", "row_ptr", "col_idx", "bias"], ["Y"], domain=ORT_DOMAIN, out_features=rb * b
    )
    graph = helper.make_graph(
        [node], "single", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", cb * b])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n", rb * b])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(ORT_DOMAIN, 1)], ir_version=10)
    onnx.save(model, str(path))
    return path, packed, bias


def _run_in_threads(jobs):
    """Start every job at once (a barrier) and re-raise the first failure, naming its thread."""
    barrier = threading.Barrier(len(jobs))
    errors = []

    def body(i, job):
        try:
            barrier.wait()
            job()
        except BaseException as exc:  # noqa: BLE001 - reported below with the thread's index
            errors.append((i, exc))

    threads = [threading.Thread(target=body, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        i, exc = errors[0]
        raise AssertionError(f"thread {i} of {len(jobs)} failed ({len(errors)} failed in all): {exc!r}") from exc


def _ffn_cases(ffn, seed, count=12):
    g = torch.Generator().manual_seed(seed)
    cases = []
    for _ in range(count):
        batch, seq = int(torch.randint(1, 4, (), generator=g)), int(torch.randint(1, 50, (), generator=g))
        x = torch.randn(batch, seq, 64, generator=g)
        with torch.no_grad():
            cases.append((x.numpy(), ffn.reference(x).numpy()))
    return cases


def _session_job(session, input_name, cases, repeats=3):
    def job():
        for _ in range(repeats):
            for x, expected in cases:
                y = next(iter(session(**{input_name: x}).values()))
                np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)

    return job


def test_libraries_come_from_native_dir(ffn_path):
    """The libraries in use are the ones MLPRUNE_NATIVE_DIR names (so `make sanitize` really tests sanitized code)."""
    session = _session(ffn_path, 1)  # holds the ORT library while alive
    maps = _maps()
    del session
    for lib in (library.torch_library_path(), library.ort_library_path()):
        assert str(Path(lib).resolve()) in maps, f"{lib} is not loaded in this process"
    if os.environ.get("MLPRUNE_EXPECT_SANITIZED"):
        assert _under_asan(), "MLPRUNE_EXPECT_SANITIZED is set but the ASan runtime is not loaded"
        assert library.native_dir().name == "sanitize", library.native_dir()


def test_one_ort_session_shared_by_threads(ffn, ffn_path):
    session = _session(ffn_path, 2)
    name = session.get_inputs()[0].name
    _run_in_threads([_session_job(session, name, _ffn_cases(ffn, seed)) for seed in range(THREADS)])


def test_two_ort_sessions_in_one_process(ffn, ffn_path, tmp_path):
    """Two models, each session registering the library, used at the same time from two threads each."""
    path, packed, bias = _single_node_model(tmp_path / "single.onnx")
    ffn_session = _session(ffn_path, 2)
    single_session = _session(path, 1)
    g = torch.Generator().manual_seed(7)
    single_cases = []
    for n in (1, 3, 17, 64, 0):
        x = torch.randn(n, packed.in_features, generator=g)
        ref = ops.block_sparse_linear_reference(x, packed.values, packed.row_ptr, packed.col_idx, bias, packed.out_features)
        single_cases.append((x.numpy(), ref.numpy()))
    ffn_name = ffn_session.get_inputs()[0].name
    jobs = [
        _session_job(ffn_session, ffn_name, _ffn_cases(ffn, 10)),
        _session_job(single_session, "X", single_cases, repeats=10),
        _session_job(ffn_session, ffn_name, _ffn_cases(ffn, 11)),
        _session_job(single_session, "X", single_cases[::-1], repeats=10),
    ]
    _run_in_threads(jobs)


def test_sessions_created_concurrently(ffn, ffn_path):
    """Each creation registers the custom-op library again; doing that from several threads at once must work."""
    x = torch.randn(2, 3, 64)
    with torch.no_grad():
        expected = ffn.reference(x).numpy()

    def job():
        session = _session(ffn_path, 1)
        y = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)

    _run_in_threads([job] * THREADS)


def test_torch_op_from_threads():
    """Threads share one packed weight or use their own (b = 16 and 32), each result against the pure-torch reference."""
    layers = []
    for i, (b, rb, cb, density) in enumerate([(32, 4, 3, 0.5), (16, 6, 4, 0.3), (32, 2, 5, 1.0), (16, 3, 3, 0.0)]):
        g = torch.Generator().manual_seed(100 + i)
        packed = ops.pack_blocks(torch.randn(rb * b, cb * b, generator=g), (torch.rand(rb, cb, generator=g) < density).int(), b)
        layers.append((packed, torch.randn(rb * b, generator=g) if i % 2 == 0 else None))
    shared = layers[0]
    assignments = [shared, shared, *layers[1:]]

    def job_for(seed, packed, bias):
        g = torch.Generator().manual_seed(seed)
        cases = []
        for _ in range(10):
            x = torch.randn(int(torch.randint(1, 3, (), generator=g)), int(torch.randint(1, 80, (), generator=g)), packed.in_features, generator=g)
            ref = ops.block_sparse_linear_reference(x, packed.values, packed.row_ptr, packed.col_idx, bias, packed.out_features)
            cases.append((x, ref))

        def job():
            for _ in range(5):
                for x, ref in cases:
                    torch.testing.assert_close(ops.block_sparse_linear(x, packed, bias), ref, rtol=1e-4, atol=1e-4)

        return job

    _run_in_threads([job_for(200 + i, packed, bias) for i, (packed, bias) in enumerate(assignments)])


def _growth(call, calls, warmup=500):
    for _ in range(warmup):
        call()
    before = _rss()
    for _ in range(calls):
        call()
    return _rss() - before


def _skip_under_asan():
    if _under_asan():
        pytest.skip("ASan quarantines freed memory, so RSS grows by design; the sanitize run's kernel_driver checks leaks")


# One intra-op thread in the default run: with two, every tiny call waits for a second core, which on a busy
# machine costs milliseconds; the threaded path gets its own, slow, run.
MEMORY_RUNS = [(10_000, 1), pytest.param(100_000, 1, marks=pytest.mark.slow), pytest.param(20_000, 2, marks=pytest.mark.slow)]


@pytest.mark.parametrize(("calls", "threads"), MEMORY_RUNS)
def test_ort_session_memory_is_flat(ffn_path, calls, threads):
    _skip_under_asan()
    session = _session(ffn_path, threads)
    name = session.get_inputs()[0].name
    feeds = {name: np.random.default_rng(0).standard_normal((1, 2, 64)).astype(np.float32)}
    growth = _growth(lambda: session.run(None, feeds), calls)
    assert growth < RSS_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB over {calls} ORT runs"


@pytest.mark.parametrize(("calls", "threads"), MEMORY_RUNS)
def test_torch_op_memory_is_flat(calls, threads):
    _skip_under_asan()
    g = torch.Generator().manual_seed(3)
    packed = ops.pack_blocks(torch.randn(64, 32, generator=g), torch.tensor([[1, 0], [1, 1], [0, 0], [0, 1]]), 16)
    bias, x = torch.randn(64, generator=g), torch.randn(2, 32, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        growth = _growth(lambda: ops.block_sparse_linear(x, packed, bias), calls)
    finally:
        torch.set_num_threads(before)
    assert growth < RSS_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB over {calls} torch op calls"


@pytest.mark.slow
def test_session_creation_memory_is_bounded(ffn_path):
    """Each session registers the custom-op library again; creating and dropping many must not pile up memory."""
    _skip_under_asan()
    x = np.ones((1, 1, 64), np.float32)

    def create_and_run():
        session = _session(ffn_path, 1)
        session.run(None, {session.get_inputs()[0].name: x})

    growth = _growth(create_and_run, 500, warmup=50)
    assert growth < 4 * RSS_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB over 500 session creations"
