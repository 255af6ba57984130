"""Runtime: ONNX Runtime sessions and the native block-sparse kernel."""

from .session import InferenceSession

__all__ = ["InferenceSession"]
