"""Locate and register the ONNX Runtime custom-op library that runs ai.mlprune::BlockSparseLinear."""

from __future__ import annotations

import os
from pathlib import Path

BUILD_COMMAND = "python -m mlprune_fx.runtime.build"
# MLPRUNE_NATIVE_DIR picks another build of the libraries, e.g. the sanitized one (runtime/_build/sanitize).
_LIB_PATH = Path(os.environ.get("MLPRUNE_NATIVE_DIR") or Path(__file__).resolve().parent / "_build") / "libmlprune_ort.so"


class OrtLibraryMissing(FileNotFoundError):
    """The ONNX Runtime custom-op library has not been built."""


def library_path() -> str:
    """Path of the built libmlprune_ort.so; raises OrtLibraryMissing naming the build command if absent."""
    if not _LIB_PATH.is_file():
        raise OrtLibraryMissing(
            f"ONNX Runtime custom-op library not built ({_LIB_PATH} is missing). Build it with: {BUILD_COMMAND}"
        )
    return str(_LIB_PATH)


def register_library(sess_options=None):
    """Register the ai.mlprune ops on `sess_options` (a new onnxruntime.SessionOptions if None) and return it."""
    import onnxruntime as ort

    if sess_options is None:
        sess_options = ort.SessionOptions()
    path = library_path()
    try:
        sess_options.register_custom_ops_library(path)
    except Exception as exc:  # ORT raises a bare Fail with the loader's message
        raise RuntimeError(
            f"ONNX Runtime {ort.__version__} could not load {path}: {exc}. Rebuild with: {BUILD_COMMAND} --force"
        ) from exc
    return sess_options
