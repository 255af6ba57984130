"""Run the native kernel under sanitizers (`make sanitize`); exits non-zero on any finding.

1. builds ASan + UBSan variants of both libraries (python -m mlprune_fx.runtime.build --sanitize);
2. builds tests/sanitize/kernel_driver.cpp twice, with ASan + UBSan and with TSan, straight on the kernel sources,
   checks that ASan catches a planted out-of-bounds read (--canary), then fuzzes shapes, ISAs and part counts;
3. runs the kernel test files under pytest with the sanitized libraries (MLPRUNE_NATIVE_DIR) and the ASan
   runtime preloaded (with libstdc++, so ASan can intercept C++ throws); leak checks are off there since the
   interpreter itself never frees everything, and the driver covers the kernel's leaks.

Usage: .venv/bin/python tests/sanitize/run.py [--cases N] [--seed S] [-- extra pytest args]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlprune_fx.runtime import build

REPO = Path(__file__).resolve().parents[2]
DRIVER_SRC = Path(__file__).resolve().parent / "kernel_driver.cpp"
TEST_FILES = ["tests/runtime/test_block_sparse_kernel.py", "tests/runtime/test_ort_block_sparse.py",
              "tests/runtime/test_native_reliability.py", "tests/runtime/test_int8_kernel.py", "tests/runtime/test_ort_int8.py"]
UBSAN_OPTIONS = "print_stacktrace=1:halt_on_error=1"


class SanitizeFailure(RuntimeError):
    """A sanitizer reported a problem, or the set-up needed to look for one is broken."""


def _step(msg: str) -> None:
    print(f"[sanitize] {msg}", flush=True)


def _runtime(cxx: str, name: str) -> str:
    path = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True, check=True).stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        raise SanitizeFailure(f"{cxx} has no {name}; install the sanitizer runtime (e.g. apt-get install libasan8 libtsan2)")
    return path


def build_drivers(cxx: str) -> dict[str, Path]:
    """The driver with ASan + UBSan and with TSan (the two cannot share a binary); rebuilt when a source changed."""
    out = build.SANITIZE_DIR
    out.mkdir(parents=True, exist_ok=True)
    variants = {
        "asan": (out / "kernel_driver", build.SANITIZE_FLAGS),
        "tsan": (out / "kernel_driver_tsan", ["-O1", "-g", "-fsanitize=thread"]),
    }
    sources = [str(src) for src in build.KERNEL_SOURCES]
    newest = max(p.stat().st_mtime for p in (DRIVER_SRC, *build.KERNEL_SOURCES, *build.CSRC.glob("*.h")))
    jobs = [
        (f"compiling kernel_driver ({name})", [cxx, "-std=c++17", "-Wall", *flags, f"-I{build.CSRC}", str(DRIVER_SRC), *sources, "-o", str(exe), "-pthread"])
        for name, (exe, flags) in variants.items()
        if not exe.is_file() or exe.stat().st_mtime < newest
    ]
    if jobs:
        build._run_parallel(jobs, quiet=False)
    return {name: exe for name, (exe, _) in variants.items()}


def run_drivers(drivers: dict[str, Path], cases: int, seed: int) -> None:
    env = {**os.environ, "UBSAN_OPTIONS": UBSAN_OPTIONS, "ASAN_OPTIONS": "detect_leaks=1", "TSAN_OPTIONS": "halt_on_error=1"}
    canary = subprocess.run([str(drivers["asan"]), "--canary"], capture_output=True, text=True, env=env)
    if canary.returncode == 0 or "AddressSanitizer: heap-buffer-overflow" not in canary.stderr:
        raise SanitizeFailure(f"ASan missed the planted out-of-bounds read, so its results cannot be trusted:\n{canary.stderr[-2000:]}")
    _step("canary: ASan reports the planted out-of-bounds read")
    for name, n in (("asan", cases), ("tsan", max(1, cases // 4))):
        _step(f"kernel_driver ({name}): {n} fuzzed cases, seed {seed}")
        if subprocess.run([str(drivers[name]), str(n), str(seed)], env=env).returncode != 0:
            raise SanitizeFailure(f"kernel_driver under {name} failed (report above)")


def run_pytest(cxx: str, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="mlprune-sanitize-") as logs:
        env = {
            **os.environ,
            "LD_PRELOAD": f"{_runtime(cxx, 'libasan.so')} {_runtime(cxx, 'libstdc++.so')}",
            "ASAN_OPTIONS": f"detect_leaks=0:log_path={logs}/asan",
            "UBSAN_OPTIONS": f"{UBSAN_OPTIONS}:log_path={logs}/ubsan",
            "MLPRUNE_NATIVE_DIR": str(build.SANITIZE_DIR),
            "MLPRUNE_EXPECT_SANITIZED": "1",
        }
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TEST_FILES, *extra]
        _step(f"pytest with sanitized libraries: {' '.join(cmd[1:])}")
        rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
        reports = sorted(Path(logs).iterdir())
        for report in reports:
            print(f"----- {report.name} -----\n{report.read_text(errors='replace')[-8000:]}", file=sys.stderr)
        if rc != 0 or reports:
            raise SanitizeFailure(f"pytest under ASan + UBSan failed (exit {rc}, {len(reports)} sanitizer report(s) above)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=400, help="fuzzed driver cases (TSan runs a quarter)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        cxx = build._compiler()
        build.build(sanitize=True)
        run_drivers(build_drivers(cxx), args.cases, args.seed)
        run_pytest(cxx, args.pytest_args)
    except (build.BuildError, SanitizeFailure) as exc:
        print(f"[sanitize] FAILED: {exc}", file=sys.stderr)
        return 1
    _step(f"all clean ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
