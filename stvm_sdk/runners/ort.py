"""ONNX Runtime: sessions (also used by export verification) and the ``.onnx`` runner."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np

from stvm_sdk.errors import ModelLoadError
from stvm_sdk.runners.base import Runner
from stvm_sdk.runners.contract import (
    check_graph,
    check_output,
    merge,
    read_graph_metadata,
    read_sidecar,
    sidecar_path,
    unknown_input_line,
)

# ONNX Runtime's thread pools keep spinning (busy-waiting on their cores) for a while after each run,
# ready for the next one: ~30 ms of a core after a 5 ms lraspp run at 128x256 on the 2-core dev box.
# Beside another runtime, that spinning takes the cores the other one is timed on: `stvm bench`
# interleaves backends, and there eager torch's p50 rose from ~19 to 21-30 ms, and a second ORT
# session's from ~5.5 to 9-10 ms. So benchmark sessions (inside `no_spinning_after_run`) stop
# spinning as soon as a run returns ("session.force_spinning_stop"; they still spin within a run, so
# ORT's own latency is kept: "allow_spinning=0" instead made ORT alone ~35 % slower there).
# Predict, eval, stream and export verification keep ORT's default: they run ORT alone, back to back,
# which is what its spinning is tuned for (force_spinning_stop measured 0-10 % slower p50 there),
# and nothing else is timed beside it.
FORCE_SPINNING_STOP = "session.force_spinning_stop"
_SPIN_AFTER_RUN: ContextVar[bool] = ContextVar("stvm_ort_spin_after_run", default=True)


@contextlib.contextmanager
def no_spinning_after_run() -> Iterator[None]:
    """Sessions made meanwhile (:func:`ort_session`, :class:`OrtRunner`) stop spinning when a run returns."""
    token = _SPIN_AFTER_RUN.set(False)
    try:
        yield
    finally:
        _SPIN_AFTER_RUN.reset(token)


def ort_session(
    path: Path,
    *,
    providers: list[str] | None = None,
    threads: int | None = None,
    spin_after_run: bool | None = None,
) -> Any:
    """An ONNX Runtime session with full graph optimisation; a bad file is a one-line error.

    ``spin_after_run=False`` stops its thread pools spinning when a run returns (for timing it beside
    other runtimes); None: False inside :func:`no_spinning_after_run`, else ORT's default (spinning).
    """
    import onnxruntime as ort

    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # warnings about unused initialisers etc. are noise for users
    if threads:
        opts.intra_op_num_threads = threads
    if not (_SPIN_AFTER_RUN.get() if spin_after_run is None else spin_after_run):
        opts.add_session_config_entry(FORCE_SPINNING_STOP, "1")  # both pools (intra- and inter-op)
    try:
        return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(
            f"cannot load {path} in ONNX Runtime: {first[:240]}; re-export it with stvm export"
        ) from None


class OrtRunner(Runner):
    """ONNX Runtime; normalisation is applied here only when the graph does not bake it in.

    What the graph needs comes from its sidecar and its own metadata (:mod:`stvm_sdk.runners.contract`),
    both checked and checked against the graph; ``baked`` is None when neither states the normalisation.
    """

    backend = "ort"

    def __init__(self, path: Path, device: str = "cpu", *, threads: int | None = None) -> None:
        super().__init__(path)
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.device = "cuda" if providers[0].startswith("CUDA") else "cpu"
        self.session = ort_session(path, providers=providers, threads=threads)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = inputs[0].name if inputs else ""
        hw = inputs[0].shape[2:4] if inputs else []
        self.fixed_size = (hw[0], hw[1]) if len(hw) == 2 and all(isinstance(d, int) for d in hw) else None
        self.sidecar = read_sidecar(path)
        props = dict(self.session.get_modelmeta().custom_metadata_map or {})
        self.contract = merge(
            self.sidecar,
            sidecar_path(path),
            read_graph_metadata(props, path),
            f"{path.name}'s metadata_props",
        )
        channels = check_graph(
            self.contract,
            path,
            [(i.name, i.shape, i.type) for i in inputs],
            [(o.name, o.shape, o.type) for o in outputs],
        )
        c = self.contract
        self.precision = c.precision or guess_precision(path)
        self.output = "classes" if outputs[0].type == "tensor(uint8)" else "logits"
        self.baked = c.baked
        self.mean = np.asarray(c.mean or (0.0, 0.0, 0.0), np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(c.std or (1.0, 1.0, 1.0), np.float32).reshape(1, 3, 1, 1)
        self.class_names = c.class_names
        self.num_classes = c.num_classes or channels

    @property
    def input_known(self) -> bool:
        return self.baked is not None

    def prepare(self, x: np.ndarray) -> np.ndarray:
        if self.baked is None:
            raise ModelLoadError(unknown_input_line(self.path))
        x = x if self.baked else (x - self.mean) / self.std
        return np.ascontiguousarray(x, dtype=np.float32)

    def run(self, prepared: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: prepared})[0]

    def check(self, out: np.ndarray) -> None:
        check_output(out, self.contract, self.path)


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
