"""The export precision table: one row per precision `stvm export` can write.

A row holds everything that differs between precisions: the function that writes the graph and its
settings, the verification thresholds, the TensorRT builder flags (trtexec takes the same names),
the bytes per element and tensor-core peak of the roofline estimate, the file-name suffix, and the
CLI flag with its help. Everything else looks a row up by name and reads it: adding a precision is
one :func:`register` call plus its exporter function (see :mod:`stvm_sdk.export.stages`).

The argmax output is not a row: ``--argmax`` changes the output of every precision's graph (an
fp16 graph with a uint8 class map out is one artifact), so it is an export option like ``--static``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from stvm_sdk.boundary.args import check_choice
from stvm_sdk.export.stages import export_float, export_int8

if TYPE_CHECKING:
    from stvm_sdk.export.stages import ExportJob, StagedGraph


@dataclass(frozen=True)
class Thresholds:
    """When a graph passes verification against eager PyTorch (None: not checked)."""

    argmax_agreement: float  # at least this % of pixels get the eager model's class
    rel_max_abs_diff: float | None = None  # max |logit diff| at most this x max(1, max |logit|)
    miou_drop: float | None = None  # mIoU at most this many points below eager (labelled frames)


@dataclass(frozen=True)
class Precision:
    """One row of the table; see the module docstring."""

    name: str  # in file names, sidecars, reports; also the CLI parameter name, so an identifier
    exporter: Callable[[ExportJob, Precision], StagedGraph]
    thresholds: Thresholds
    trt_flags: tuple[str, ...]  # tensorrt.BuilderFlag names; trtexec gets --<name in lower case>
    bytes_per_element: int  # weights and activations, for the roofline's memory traffic
    # Dense peak on the tensor cores as a share of the GPU's sparse-INT8 TOPS (roofline);
    # None: the precision runs on the CUDA cores at the FP32 peak (and is left out of the estimate).
    tensor_share: float | None
    suffix: str  # model{suffix}.onnx
    flag: str | None  # CLI flag that asks for it; None: the base graph, always written
    help: str = ""  # of the flag
    exporter_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    needs_calibration: bool = False  # needs --calib frames

    @property
    def trtexec_flags(self) -> list[str]:
        return [f"--{flag.lower()}" for flag in self.trt_flags]


PRECISIONS: dict[str, Precision] = {}


def register(row: Precision) -> Precision:
    """Add ``row`` to :data:`PRECISIONS`; rows keep their order (the order artifacts are written in)."""
    if not row.name.isidentifier() or row.name in PRECISIONS:
        raise ValueError(f"precision name {row.name!r} must be a new Python identifier")
    if (row.flag is None) != (not PRECISIONS):
        raise ValueError("the first row, and only it, is the base graph (flag None)")
    PRECISIONS[row.name] = row
    return row


def precision(name: str) -> Precision:
    """The row called ``name``.

    Raises:
        ConfigError: no such row (the message lists the known ones).
    """
    return PRECISIONS[check_choice(name, list(PRECISIONS), "precision")]


def base() -> Precision:
    """The row every export writes (the others are made beside it, some from it)."""
    return next(iter(PRECISIONS.values()))


def requested(names: Iterable[str]) -> list[Precision]:
    """The rows an export asking for ``names`` writes: the base one, then the named ones, in table order."""
    wanted = {precision(n).name for n in names}
    return [row for row in PRECISIONS.values() if row.flag is None or row.name in wanted]


def engine_precisions(written: Iterable[str]) -> list[str]:
    """Which written precisions get a TensorRT engine: those asked for, or the base one when alone."""
    names = list(written)
    return [n for n in names if precision(n).flag is not None] or names


register(
    Precision(
        "fp32",
        export_float,
        # Differs from eager only by kernel rounding.
        Thresholds(argmax_agreement=99.9, rel_max_abs_diff=1e-3),
        trt_flags=(),
        bytes_per_element=4,
        tensor_share=None,
        suffix="",
        flag=None,
    )
)
register(
    Precision(
        "fp16",
        export_float,
        # May flip pixels whose two best logits are nearly tied: judged on class agreement.
        Thresholds(argmax_agreement=99.5),
        trt_flags=("FP16",),
        bytes_per_element=2,
        tensor_share=0.25,
        suffix="_fp16",
        flag="--fp16",
        help="Also write a half-precision graph (float32 I/O).",
        exporter_options=MappingProxyType({"fp16": True}),
    )
)
register(
    Precision(
        "int8",
        export_int8,
        Thresholds(argmax_agreement=90.0, miou_drop=1.0),
        # Explicit quantization: the scales come from the Q/DQ nodes. FP16 too, so layers TensorRT
        # keeps in float may run in half precision.
        trt_flags=("INT8", "FP16"),
        bytes_per_element=1,
        tensor_share=0.5,
        suffix="_int8",
        flag="--int8",
        help="Also write an INT8 Q/DQ graph (needs --calib).",
        needs_calibration=True,
    )
)
