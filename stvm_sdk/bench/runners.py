"""One inference interface over the three artifact kinds: `.pt` (eager torch), `.onnx` (ONNX Runtime)
and `.engine` (TensorRT), shared by `stvm bench` and `stvm predict`.

Every runner takes images as ``float32 [B,3,H,W]`` RGB in [0,1] and returns either logits
``[B,K,H,W]`` or a class map ``[B,H,W]`` (graphs exported with ``--argmax``). ``prepare`` moves an
input to the backend once, so a timed ``run`` measures inference, not host-side conversion.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stvm_sdk.errors import BackendUnavailableError, ConfigError, ModelLoadError
from stvm_sdk.export.artifacts import read_sidecar

BACKENDS = ("torch", "ort", "trt")


class Runner(ABC):
    """Base class: ``prepare`` (untimed) then ``run``; ``device`` is ``cpu`` or ``cuda``."""

    backend = "?"
    precision = "fp32"
    device = "cpu"
    output = "logits"  # or "classes"
    num_classes: int | None = None
    class_names: list[str] | None = None

    def __init__(self, path: Path) -> None:
        self.path = path

    def prepare(self, x: np.ndarray) -> Any:
        return x

    @abstractmethod
    def run(self, prepared: Any) -> Any:
        """Inference on a prepared input (the timed part); each backend implements it."""

    def to_numpy(self, out: Any) -> np.ndarray:
        return out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.to_numpy(self.run(self.prepare(x)))

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.precision}"


class TorchRunner(Runner):
    """Eager PyTorch in float32 (the reference every other row is compared with)."""

    backend = "torch"

    def __init__(self, path: Path, device: str = "cpu", *, trust_pickle: bool = False) -> None:
        super().__init__(path)
        from stvm_sdk.models import load_model

        self.model = load_model(path, trust_pickle=trust_pickle)
        self.device = device
        self.module = self.model.module.eval().to(device)
        self.num_classes, self.class_names = self.model.num_classes, self.model.class_names

    def prepare(self, x: np.ndarray) -> torch.Tensor:
        from stvm_sdk.models import normalize

        return normalize(torch.from_numpy(x).to(self.device), self.model.mean, self.model.std)

    def run(self, prepared: torch.Tensor) -> torch.Tensor:
        from stvm_sdk.models import forward_logits

        with torch.inference_mode():
            return forward_logits(self.module, prepared)


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
    """``int8`` (Q/DQ nodes), ``fp16`` (half weights) or ``fp32`` for an ONNX file without a sidecar."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer):
        return "fp16"
    return "fp32"


def open_runner(
    path: str | Path,
    backend: str | None = None,
    *,
    device: str | None = None,
    trust_pickle: bool = False,
    threads: int | None = None,
) -> Runner:
    """A runner for ``path``; ``backend`` defaults to the file's own (.pt torch, .onnx ort, .engine trt).

    Raises:
        ModelLoadError: missing or unreadable file. ConfigError: backend and file kind do not fit.
        BackendUnavailableError: TensorRT/CUDA missing for an engine.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"model file not found: {p}")
    kind = {".onnx": "ort", ".engine": "trt", ".plan": "trt"}.get(p.suffix.lower(), "torch")
    backend = backend or kind
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if backend != kind:
        raise ConfigError(
            f"{p.name} is a {kind} artifact; backend {backend} needs "
            f"{ {'torch': 'a .pt checkpoint', 'ort': 'an .onnx file'}.get(backend, 'an .engine') }"
            f" (stvm export writes them)"
        )
    if backend == "torch":
        return TorchRunner(p, dev, trust_pickle=trust_pickle)
    if backend == "ort":
        return OrtRunner(p, dev, threads=threads)
    from stvm_sdk.export.tensorrt import TrtRunner

    if dev != "cuda":
        TrtRunner.check_compatible(p)  # says what the engine needs before saying this machine lacks it
        raise BackendUnavailableError("TensorRT engines need a CUDA GPU; none is visible here")
    return TrtRunner(p)
