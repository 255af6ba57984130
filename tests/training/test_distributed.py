"""LEAP training on two CPU processes (torchrun, gloo): ranks stay in lockstep and reach the target."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("ddp_worker.py")


def _torchrun(modes: str, out: Path, timeout: int = 240) -> dict:
    """torchrun in its own session, so that a hang kills the workers too, not only the launcher."""
    tests = str(Path(__file__).resolve().parents[1])  # conftest's folder
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), modes, str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{err[-4000:]}")
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Both modes from one launch of two ranks."""
    return _torchrun("loop,trainer", tmp_path_factory.mktemp("ddp") / "result.json")


@pytest.mark.parametrize("mode", ["loop", "trainer"])
def test_two_ranks_share_masks_and_reach_the_target(mode, results):
    result = results[mode]
    assert result["world"] == 2
    assert result["params_identical"] and result["masks_identical"]
    assert result["masks_moved"]
    if mode == "trainer":
        assert result["wrapped"] == "DistributedDataParallel"  # Accelerate wrapped the GraphModule
    # the regulariser brought the thresholds near the target itself; the hold then landed on it
    assert result["rho_first"] > 0.99 and result["before_hold"] == pytest.approx(result["target"], abs=0.1)
    assert result["remaining"] == pytest.approx(result["target"], abs=0.01)
