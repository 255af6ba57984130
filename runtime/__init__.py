"""Runtime: ONNX Runtime sessions and the native block-sparse kernel."""
