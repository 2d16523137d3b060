"""INT8 by explicit quantization: a Q/DQ ONNX graph calibrated on target frames.

TensorRT's implicit INT8 calibrators are deprecated; it now takes the scales from QuantizeLinear /
DequantizeLinear nodes in the graph ("explicit quantization"). We make those nodes with ONNX
Runtime's static quantization, set up the way TensorRT needs them:

* **symmetric** int8 activations and weights, so every zero point is 0 (TensorRT rejects others);
* **per-channel** weight scales (the accuracy of depthwise convolutions depends on it);
* Q/DQ only around **Conv/ConvTranspose/Gemm/MatMul** inputs, where TensorRT fuses them into int8
  kernels; element-wise ops stay in float and TensorRT fuses them into the neighbouring kernels.

The calibration method (min-max, percentile, entropy) is chosen by measured accuracy: every
candidate graph is scored by the caller (mIoU on labelled frames, else class agreement with the
float model) and the best one is kept. The fp16 graph needs no calibration and is made by the
exporter itself (``export_onnx(..., fp16=True)``), which keeps shape and Resize-scale tensors in
their required types without hand-written graph surgery.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stvm_sdk.errors import ConfigError, DataError

if TYPE_CHECKING:  # only in annotations: the export options (and the CLI) import this module
    import numpy as np

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
QUANTIZED_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul"]


@dataclass
class Int8Result:
    """The chosen Q/DQ graph and the score of every calibration method tried."""

    path: Path
    method: str
    scores: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class _Reader:
    """ONNX Runtime calibration data reader over in-memory ``[1,3,H,W]`` float32 inputs."""

    def __init__(self, input_name: str, inputs: Sequence[np.ndarray]) -> None:
        self._items = iter([{input_name: x} for x in inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)

    def rewind(self) -> None:  # part of the reader protocol; each candidate gets a fresh reader
        pass


def quantize_qdq(
    fp32: Path,
    out: Path,
    inputs: Sequence[np.ndarray],
    method: str,
    *,
    input_name: str = "image",
    exclude: Sequence[str] = (),
) -> Path:
    """Write a symmetric per-channel Q/DQ int8 graph of ``fp32`` to ``out``, calibrated on ``inputs``."""
    from onnxruntime.quantization import CalibrationMethod

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise ConfigError(
            f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}"
        )
    if not inputs:
        raise DataError(
            "INT8 calibration needs at least one frame: point --calib at a folder of target frames"
        )
    # ORT's calibrators print progress to stdout (which `--json` reserves for one JSON object) and
    # log advice about its pre-processing step to the root logger: keep both out of the user's way.
    with contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger():
        _quantize_static(fp32, out, inputs, methods[method], input_name, exclude)
    return out


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quantize_static(fp32: Path, out: Path, inputs: Sequence[np.ndarray], method: Any, input_name: str,
                     exclude: Sequence[str]) -> None:  # fmt: skip
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(fp32), str(out), _Reader(input_name, inputs), quant_format=QuantFormat.QDQ,  # type: ignore[arg-type]
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
        op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=list(exclude), calibrate_method=method,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                       # 99.99th percentile: clips the rare outliers that waste the int8 range.
                       "CalibPercentile": 99.99},
    )  # fmt: skip


def quantize_int8(
    fp32: Path,
    out: Path,
    inputs: Sequence[np.ndarray],
    score: Callable[[Path], float],
    *,
    methods: Sequence[str] = CALIBRATION_METHODS,
    input_name: str = "image",
    log: Callable[[str], None] | None = None,
    score_name: str = "score",
) -> Int8Result:
    """Quantize with each calibration method, keep the best-scoring graph at ``out``.

    Args:
        fp32: the float graph (already checked).
        out: where the chosen graph goes (the caller stages and publishes it).
        inputs: calibration inputs ``[1,3,H,W]`` float32, in the graph's input space.
        score: higher is better (e.g. mIoU of the quantized graph on labelled frames).
        methods: calibration methods to try, in order; ties keep the earlier one.
        score_name: what ``score`` measures, as the log line names it (e.g. ``"mIoU (%) on 4 frames"``).
    """
    work = out.parent / f".{out.stem}-candidates"
    work.mkdir(parents=True, exist_ok=True)
    best: tuple[float, str] | None = None
    result = Int8Result(out, "")
    try:
        for method in methods:
            start = time.perf_counter()
            cand = quantize_qdq(fp32, work / f"{method}.onnx", inputs, method, input_name=input_name)
            s = float(score(cand))
            result.scores[method], result.seconds[method] = s, time.perf_counter() - start
            if log:
                log(f"int8 calibration {method}: {score_name} {s:.2f} ({result.seconds[method]:.1f} s)")
            if best is None or s > best[0]:
                best = (s, method)
                shutil.copyfile(cand, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert best is not None
    result.method = best[1]
    return result
