"""ONNX Runtime: sessions (also used by export verification) and the ``.onnx`` runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stvm_sdk.errors import ModelLoadError
from stvm_sdk.runners.base import Runner, read_sidecar


def ort_session(path: Path, *, providers: list[str] | None = None, threads: int | None = None) -> Any:
    """An ONNX Runtime session with full graph optimisation; a bad file is a one-line error."""
    import onnxruntime as ort

    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # warnings about unused initialisers etc. are noise for users
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(
            f"cannot load {path} in ONNX Runtime: {first[:240]}; re-export it with stvm export"
        ) from None


class OrtRunner(Runner):
    """ONNX Runtime; normalisation is applied here only when the graph does not bake it in."""

    backend = "ort"

    def __init__(self, path: Path, device: str = "cpu", *, threads: int | None = None) -> None:
        super().__init__(path)
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.device = "cuda" if providers[0].startswith("CUDA") else "cpu"
        self.session = ort_session(path, providers=providers, threads=threads)
        self.input_name = self.session.get_inputs()[0].name
        hw = self.session.get_inputs()[0].shape[2:4]
        self.fixed_size = (hw[0], hw[1]) if all(isinstance(d, int) for d in hw) else None
        meta = read_sidecar(path) or {}
        self.precision = str(meta.get("precision") or guess_precision(path))
        self.output = "classes" if self.session.get_outputs()[0].type == "tensor(uint8)" else "logits"
        inp = meta.get("input", {})
        self.baked = bool(inp.get("normalization_baked", True))
        self.mean = np.asarray(meta.get("mean", (0.485, 0.456, 0.406)), np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(meta.get("std", (0.229, 0.224, 0.225)), np.float32).reshape(1, 3, 1, 1)
        self.class_names = meta.get("classes")
        self.num_classes = len(self.class_names) if self.class_names else None

    def prepare(self, x: np.ndarray) -> np.ndarray:
        x = x if self.baked else (x - self.mean) / self.std
        return np.ascontiguousarray(x, dtype=np.float32)

    def run(self, prepared: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: prepared})[0]


def guess_precision(path: Path) -> str:
    """``int8`` (Q/DQ nodes), ``fp16`` (half weights) or ``fp32`` for an ONNX file without a sidecar.

    A fallback for graphs exported elsewhere: files from `stvm export` carry their precision in the
    sidecar, whatever rows the export precision table holds.
    """
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer):
        return "fp16"
    return "fp32"
