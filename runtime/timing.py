"""Timing ONNX Runtime sessions and naming the machine: what calibration and the benchmarks measure with."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable


def cpu_description() -> dict[str, str]:
    """CPU name with its family and model (VMs that share a name can be different cores), cores, ISA flags."""
    model, flags, ids = platform.processor() or "unknown", set(), {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("unknown", "", platform.processor()):
                    model = value.strip()
                elif key in ("cpu family", "model"):
                    ids.setdefault(key, value.strip())
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    if len(ids) == 2:
        model += f" (family {ids['cpu family']} model {ids['model']})"
    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "amx_tile"]
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "flags": " ".join(f for f in wanted if f in flags) or "n/a",
    }


def time_side_by_side(fns: dict[str, Callable[[], object]], repeats: int = 10, warmup: int = 2) -> dict[str, float]:
    """Median milliseconds of each callable, measured in interleaved rounds so drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def time_sessions(
    make: dict[str, Callable[[], Callable[[], object]]], rounds: int = 5, runs: int = 10, warmup: int = 3
) -> dict[str, float]:
    """Median ms per run of each model with only its own session alive, the way it is deployed.

    `make[name]()` opens a session and returns its run call. Rounds alternate the models;
    each round opens a fresh session, warms it, times `runs` calls, and closes it, so no other
    session's idle pool threads are around (they would spin on the same cores otherwise).
    """
    samples: dict[str, list[float]] = {k: [] for k in make}
    for _ in range(rounds):
        for name, opener in make.items():
            call = opener()
            for _ in range(warmup):
                call()
            start = time.perf_counter()
            for _ in range(runs):
                call()
            samples[name].append((time.perf_counter() - start) * 1e3 / runs)
            del call
            gc.collect()
            time.sleep(0.1)
    return {k: statistics.median(v) for k, v in samples.items()}


def session_opener(path, feeds: dict, threads: int | None = None, **session_kwargs) -> Callable[[], Callable[[], object]]:
    """For `time_sessions`: opens an mlprune InferenceSession on `path` and returns its run on the `feeds`
    it takes (a model may take fewer inputs than `feeds` holds)."""

    def open_session():
        from . import InferenceSession

        session = InferenceSession(path, num_threads=threads, **session_kwargs)
        inputs = {i.name: feeds[i.name] for i in session.get_inputs()}
        return lambda: session.run(None, inputs)

    return open_session
