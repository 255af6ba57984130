"""The lowering benchmark at toy size: every variant equals numpy (checked inside) and each table prints."""

from benchmarks import bench_lowerings


def test_every_lowering_computes_the_same_and_is_timed(capsys):
    bench_lowerings.main(["--tokens", "16", "--hidden", "32", "--kept", "0.25", "--threads", "1",
                          "--rounds", "1", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "| 8 of 32 |" in out
    assert out.count("| fp32 |") == 1 and out.count("| int8 |") == 1


def test_the_gather_lowering_puts_each_kept_output_in_its_column_and_leaves_the_rest():
    import numpy as np
    import onnxruntime as ort

    kept = np.array([1, 3])
    model = bench_lowerings.scatter_model("gather_add", 4, 6, kept)
    residual, y = np.zeros((4, 6), np.float32), np.ones((4, 2), np.float32)
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"residual": residual, "y": y})[0]
    assert out[:, kept].tolist() == [[1, 1]] * 4 and out.sum() == 8
