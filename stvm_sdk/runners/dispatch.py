"""Which runner serves a file: ``.pt`` eager torch, ``.onnx`` ONNX Runtime, ``.engine`` TensorRT."""

from __future__ import annotations

from pathlib import Path

import torch

from stvm_sdk.boundary.args import check_int
from stvm_sdk.errors import BackendUnavailableError, ConfigError, ModelLoadError
from stvm_sdk.runners.base import Runner
from stvm_sdk.runners.contract import unknown_input_line
from stvm_sdk.runners.ort import OrtRunner
from stvm_sdk.runners.torch import TorchRunner
from stvm_sdk.runners.trt import TrtRunner

BACKENDS = ("torch", "ort", "trt")
MAX_THREADS = 1024  # CPU threads a runner may be given (ONNX Runtime and torch)
_FILE_BACKENDS = {".onnx": "ort", ".engine": "trt", ".plan": "trt"}


def backend_of(path: Path) -> str:
    """The backend that runs ``path`` as it is: ``ort`` (.onnx), ``trt`` (.engine, .plan), else ``torch``."""
    return _FILE_BACKENDS.get(path.suffix.lower(), "torch")


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
        ModelLoadError: missing or unreadable file, a corrupt or invalid sidecar, or a graph that states
            nowhere whether it normalises its input. ConfigError: backend and file kind do not fit, or
            ``threads`` is out of range.
        BackendUnavailableError: TensorRT/CUDA missing for an engine.
    """
    p = Path(path)
    if not (p.is_file() or (p.is_dir() and backend_of(p) == "torch")):  # a save_pretrained folder
        raise ModelLoadError(f"model file not found: {p}")
    kind = backend_of(p)
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
    check_int(threads, "--threads", 1, MAX_THREADS, hint="leave it out for the default")
    runner: Runner
    if backend == "torch":
        runner = TorchRunner(p, dev, trust_pickle=trust_pickle)
    elif backend == "ort":
        runner = OrtRunner(p, dev, threads=threads)
    elif dev != "cuda":
        TrtRunner.check_compatible(p)  # says what the engine needs before saying this machine lacks it
        raise BackendUnavailableError("TensorRT engines need a CUDA GPU; none is visible here")
    else:
        runner = TrtRunner(p)
    if not runner.input_known:  # fed either way it runs, and answers differently: refused, never guessed
        raise ModelLoadError(unknown_input_line(p))
    return runner
