"""Register the ONNX Runtime custom-op library that runs the ai.mlprune ops."""

from __future__ import annotations

from ..core.errors import OrtLibraryLoadError, OrtLibraryMissing
from .library import BUILD_COMMAND, ort_library_path


def library_path() -> str:
    """Path of the built libmlprune_ort.so; raises OrtLibraryMissing naming the build command if absent."""
    path = ort_library_path()
    if not path.is_file():
        raise OrtLibraryMissing(
            f"ONNX Runtime custom-op library not built ({path} is missing). Build it with: {BUILD_COMMAND}"
        )
    return str(path)


def register_library(sess_options=None):
    """Register the ai.mlprune ops on `sess_options` (a new onnxruntime.SessionOptions if None) and return it."""
    import onnxruntime as ort

    if sess_options is None:
        sess_options = ort.SessionOptions()
    path = library_path()
    try:
        sess_options.register_custom_ops_library(path)
    except Exception as exc:  # ORT raises a bare Fail with the loader's message
        raise OrtLibraryLoadError(
            f"ONNX Runtime {ort.__version__} could not load {path}: {exc}. Rebuild with: {BUILD_COMMAND} --force"
        ) from exc
    return sess_options
