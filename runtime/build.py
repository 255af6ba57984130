"""Build the native block-sparse kernel: the PyTorch op library and the ONNX Runtime custom-op library.

Usage: python -m mlprune_fx.runtime.build [--ort-include DIR] [--force] [--sanitize]

--sanitize builds AddressSanitizer + UndefinedBehaviorSanitizer variants into runtime/_build/sanitize/ instead
(the normal libraries are left alone). To use them, point MLPRUNE_NATIVE_DIR at that folder and start Python with
LD_PRELOAD=$(g++ -print-file-name=libasan.so); `make sanitize` (tests/sanitize/run.py) does all of it.

ONNX Runtime C/C++ headers (API version >= 29) are looked up in: --ort-include, $MLPRUNE_ORT_INCLUDE,
the cache (~/.cache/mlprune_fx/onnxruntime-headers), and as a last resort fetched with npm from the
package com.github.asus4.onnxruntime@0.4.9 into that cache (never into the repository).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import BuildError
from .library import BUILD_COMMAND, BUILD_DIR, ORT_LIBRARY, TORCH_LIBRARY

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
# The kernel, shared by both front ends: fp32 and int8 paths, one object each.
KERNEL_SOURCES = (CSRC / "block_sparse_linear.cpp", CSRC / "block_sparse_int8.cpp")
TORCH_LIB = BUILD_DIR / TORCH_LIBRARY
ORT_LIB = BUILD_DIR / ORT_LIBRARY
SANITIZE_DIR = BUILD_DIR / "sanitize"

NPM_PACKAGE = "com.github.asus4.onnxruntime@0.4.9"
HEADERS_IN_TARBALL = re.compile(
    r"^package/Plugins/iOS~/onnxruntime\.xcframework/[^/]+/(?:.*/)?Headers/(onnxruntime_[a-z0-9_]+\.(?:h|inc))$"
)
REQUIRED_HEADERS = ("onnxruntime_c_api.h", "onnxruntime_cxx_api.h", "onnxruntime_cxx_inline.h")
MIN_ORT_API = 29
CXXFLAGS = ["-O3", "-std=c++17", "-fPIC", "-Wall", "-Wno-unused-function"]
# -O1 -g keeps reports readable; halting on the first UB report makes any finding fail the run.
SANITIZE_FLAGS = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]

MANUAL_HINT = (
    "Supply the ONNX Runtime C/C++ headers yourself: unpack an ONNX Runtime release archive (1.24 or "
    "newer, ORT API >= 29) and pass its include/ folder with --ort-include DIR or the environment "
    "variable MLPRUNE_ORT_INCLUDE."
)


@dataclass(frozen=True)
class BuildResult:
    torch_library: Path
    ort_library: Path
    rebuilt: bool


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[mlprune build] {msg}", flush=True)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlprune_fx" / "onnxruntime-headers"


def _api_version(include: Path) -> int | None:
    header = include / "onnxruntime_c_api.h"
    if not header.is_file():
        return None
    match = re.search(r"#define ORT_API_VERSION (\d+)", header.read_text(errors="replace"))
    return int(match.group(1)) if match else None


def _headers_ok(include: Path) -> bool:
    return all((include / h).is_file() for h in REQUIRED_HEADERS) and (_api_version(include) or 0) >= MIN_ORT_API


def fetch_headers(dest: Path, quiet: bool = False) -> Path:
    """Fetch the official headers from the npm package tarball into dest (a cache outside the repo)."""
    npm = shutil.which("npm")
    if npm is None:
        raise BuildError(f"ONNX Runtime headers not found and npm is not installed to fetch them. {MANUAL_HINT}")
    _log(f"fetching ONNX Runtime headers: npm pack {NPM_PACKAGE} (~150 MB, once)", quiet)
    with tempfile.TemporaryDirectory(prefix="mlprune-ort-") as tmp:
        proc = subprocess.run([npm, "pack", NPM_PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            raise BuildError(
                f"`npm pack {NPM_PACKAGE}` failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}. {MANUAL_HINT}"
            )
        staging = Path(tmp) / "headers"
        staging.mkdir()
        slice_dir = None
        with tarfile.open(tarballs[0], "r|gz") as tar:
            for member in tar:
                match = HEADERS_IN_TARBALL.match(member.name)
                if not match or not member.isfile():
                    continue
                parent = member.name.rsplit("/", 1)[0]
                slice_dir = slice_dir or parent
                if parent != slice_dir:
                    continue
                data = tar.extractfile(member)
                (staging / match.group(1)).write_bytes(data.read())
        if not _headers_ok(staging):
            raise BuildError(f"the npm package {NPM_PACKAGE} did not contain usable ONNX Runtime headers. {MANUAL_HINT}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(staging, dest)
    _log(f"headers cached in {dest}", quiet)
    return dest


def find_ort_include(explicit: str | None = None, quiet: bool = False, fetch: bool = True) -> Path:
    """Return a directory holding onnxruntime_cxx_api.h (ORT API >= 29), fetching it if allowed."""
    for source, value in (("--ort-include", explicit), ("MLPRUNE_ORT_INCLUDE", os.environ.get("MLPRUNE_ORT_INCLUDE"))):
        if value:
            path = Path(value).expanduser()
            if not _headers_ok(path):
                raise BuildError(
                    f"{source}={path} does not hold {', '.join(REQUIRED_HEADERS)} with ORT_API_VERSION >= {MIN_ORT_API} "
                    f"(found version {_api_version(path)}). {MANUAL_HINT}"
                )
            return path
    cached = cache_dir()
    if _headers_ok(cached):
        return cached
    if not fetch:
        raise BuildError(f"ONNX Runtime headers not found in {cached}. {MANUAL_HINT}")
    return fetch_headers(cached, quiet)


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        raise BuildError("no C++ compiler found (looked for $CXX, g++, c++, clang++). Install g++ (e.g. apt-get install g++).")
    return cxx


def _torch_flags() -> tuple[list[str], list[str]]:
    import torch
    from torch.utils import cpp_extension

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cflags = [f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-fopenmp"]
    cflags += [f"-isystem{p}" for p in cpp_extension.include_paths()]
    libdir = cpp_extension.library_paths()[0]
    ldflags = [f"-L{libdir}", f"-Wl,-rpath,{libdir}", "-lc10", "-ltorch_cpu", "-ltorch", "-fopenmp"]
    return cflags, ldflags


def _sources() -> list[Path]:
    return sorted(CSRC.glob("*.cpp")) + sorted(CSRC.glob("*.h")) + [Path(__file__).resolve()]


def output_dir(sanitize: bool = False) -> Path:
    return SANITIZE_DIR if sanitize else BUILD_DIR


def is_up_to_date(sanitize: bool = False) -> bool:
    out = output_dir(sanitize)
    libs = (out / TORCH_LIB.name, out / ORT_LIB.name)
    if not all(lib.is_file() for lib in libs):
        return False
    newest_source = max(p.stat().st_mtime for p in _sources())
    return min(lib.stat().st_mtime for lib in libs) > newest_source


def _run_parallel(jobs: list[tuple[str, list[str]]], quiet: bool) -> None:
    procs = []
    for name, cmd in jobs:
        _log(name, quiet)
        procs.append((name, cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    failures = []
    for name, cmd, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            failures.append(f"{name} failed:\n$ {' '.join(cmd)}\n{out[-4000:]}")
    if failures:
        raise BuildError("\n\n".join(failures))


def build(force: bool = False, ort_include: str | None = None, quiet: bool = False, sanitize: bool = False) -> BuildResult:
    """Build both libraries into runtime/_build (runtime/_build/sanitize with sanitize=True) unless they are
    newer than their sources."""
    if ort_include or os.environ.get("MLPRUNE_ORT_INCLUDE"):
        find_ort_include(ort_include, quiet)  # a wrong explicit path is an error even when nothing is rebuilt
    out = output_dir(sanitize)
    torch_lib, ort_lib = out / TORCH_LIB.name, out / ORT_LIB.name
    if not force and is_up_to_date(sanitize):
        _log(f"libraries in {out} up to date (use --force to rebuild)", quiet)
        return BuildResult(torch_lib, ort_lib, rebuilt=False)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers or ranks: one compiles, the rest wait
        if not force and is_up_to_date(sanitize):
            _log(f"libraries in {out} built meanwhile by another process", quiet)
            return BuildResult(torch_lib, ort_lib, rebuilt=False)
        return _compile_and_link(out, ort_include, quiet, sanitize)


def _compile_and_link(out: Path, ort_include: str | None, quiet: bool, sanitize: bool) -> BuildResult:
    torch_lib, ort_lib = out / TORCH_LIB.name, out / ORT_LIB.name
    start = time.perf_counter()
    cxx = _compiler()
    include = find_ort_include(ort_include, quiet)
    _log(f"ONNX Runtime headers: {include} (API {_api_version(include)})", quiet)
    torch_cflags, torch_ldflags = _torch_flags()
    kernels = [src.stem for src in KERNEL_SOURCES]
    obj = {name: out / f"{name}.o" for name in (*kernels, "torch_op", "ort_op")}
    flags = [*CXXFLAGS, *SANITIZE_FLAGS] if sanitize else CXXFLAGS  # later -O wins
    link_flags = SANITIZE_FLAGS if sanitize else []
    common = [cxx, *flags, f"-I{CSRC}", "-c"]
    _run_parallel(
        [
            ("compiling torch op", [*common, *torch_cflags, str(CSRC / "torch_op.cpp"), "-o", str(obj["torch_op"])]),
            *((f"compiling kernel {src.name}", [*common, str(src), "-o", str(obj[src.stem])]) for src in KERNEL_SOURCES),
            ("compiling ORT op", [*common, "-fvisibility=hidden", f"-isystem{include}", str(CSRC / "ort_op.cpp"), "-o", str(obj["ort_op"])]),
        ],
        quiet,
    )
    kernel_objs = [str(obj[name]) for name in kernels]
    tmp_torch, tmp_ort = torch_lib.with_suffix(".so.tmp"), ort_lib.with_suffix(".so.tmp")
    _run_parallel(
        [
            ("linking torch library", [cxx, "-shared", *link_flags, str(obj["torch_op"]), *kernel_objs, "-o", str(tmp_torch), *torch_ldflags]),
            ("linking ORT library", [cxx, "-shared", *link_flags, str(obj["ort_op"]), *kernel_objs, "-o", str(tmp_ort)]),
        ],
        quiet,
    )
    os.replace(tmp_torch, torch_lib)
    os.replace(tmp_ort, ort_lib)
    kind = "sanitized (ASan + UBSan) " if sanitize else ""
    _log(f"built {kind}{torch_lib.name} and {ort_lib.name} in {out} ({time.perf_counter() - start:.0f} s)", quiet)
    return BuildResult(torch_lib, ort_lib, rebuilt=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=BUILD_COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--ort-include", help="directory with onnxruntime_c_api.h / onnxruntime_cxx_api.h (ORT API >= 29)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the libraries are up to date")
    parser.add_argument(
        "--sanitize", action="store_true", help=f"build ASan + UBSan variants into {SANITIZE_DIR.relative_to(HERE.parent)}/"
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        build(force=args.force, ort_include=args.ort_include, quiet=args.quiet, sanitize=args.sanitize)
    except BuildError as exc:
        print(f"[mlprune build] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
