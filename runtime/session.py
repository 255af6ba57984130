"""ONNX Runtime sessions that know about mlprune_fx's custom-op library."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from ..core.errors import MissingFileError, OrtLibraryMissing
from .library import BLOCK_SPARSE_INT8_OP_TYPE, ORT_DOMAIN


def model_ops(path: str | os.PathLike) -> tuple[set[str], set[str]]:
    """(the model's opset domains, the op types of its nodes)."""
    model = onnx.load(str(path), load_external_data=False)
    return {o.domain for o in model.opset_import}, {n.op_type for n in model.graph.node}


class InferenceSession(ort.InferenceSession):
    """`onnxruntime.InferenceSession` with the mlprune custom ops registered when needed.

    num_threads sets intra-op threads (ONNX Runtime's default is every core).
    spinning=False stops idle pool threads from spinning: needed when several
    sessions (or torch) share few cores, as in side-by-side benchmarks.
    fuse_skip_layernorm: let ONNX Runtime fuse residual Add + LayerNormalization into
    SkipLayerNormalization. Off by default: on CPU (ORT 1.31) that fused kernel measured
    ~0.2 ms per call at 128 x 768 against ~0.04 ms for the two ops it replaces (docs/experiments.md).
    Calling the session with keyword arrays returns a dict of named outputs.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sess_options: ort.SessionOptions | None = None,
        providers: Sequence[str] | None = None,
        num_threads: int | None = None,
        spinning: bool | None = None,
        fuse_skip_layernorm: bool = False,
        **kwargs,
    ) -> None:
        if not os.path.exists(path):
            raise MissingFileError(f"no ONNX model at {path}: write one with mlprune_fx.export_onnx")
        options = sess_options or ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = int(num_threads)
        if spinning is not None:
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        domains, op_types = model_ops(path)
        if ORT_DOMAIN in domains:
            from .ort_library import register_library

            try:
                register_library(options)
            except OrtLibraryMissing as exc:
                raise OrtLibraryMissing(
                    f"{path} uses mlprune's custom ops ({ORT_DOMAIN}) and {exc} Or export without custom ops: "
                    "mlprune_fx.export_onnx(..., standard_ops=True)"
                ) from exc
            if BLOCK_SPARSE_INT8_OP_TYPE in op_types:
                from .int8 import note_kernel_path

                note_kernel_path()
        if not fuse_skip_layernorm:
            kwargs["disabled_optimizers"] = sorted({*kwargs.get("disabled_optimizers", ()), "SkipLayerNormFusion"})
        super().__init__(str(path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"]), **kwargs)

    def __call__(self, **feeds) -> dict[str, np.ndarray]:
        arrays = {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in feeds.items()}
        names = [o.name for o in self.get_outputs()]
        return dict(zip(names, self.run(names, arrays)))
