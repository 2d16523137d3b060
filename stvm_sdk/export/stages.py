"""Exporter functions: how a row of the precision table writes its graph into the staging folder.

An exporter gets the :class:`ExportJob` and its row and returns the :class:`StagedGraph` it wrote;
`pipeline.export_model` then verifies that graph against eager PyTorch with the row's thresholds,
checks it against TensorRT's parser and publishes it. Heavy imports happen inside the functions, so
the precision table (and the CLI built from it) imports quickly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from stvm_sdk.export.frames import VerifyFrame
    from stvm_sdk.export.options import ExportOptions
    from stvm_sdk.export.quantize import Int8Result
    from stvm_sdk.models.io import SegModel


@dataclass
class StagedGraph:
    """A graph an exporter wrote, and how it was made (for its sidecar)."""

    path: Path
    exporter: str  # the tools, e.g. "legacy" or "legacy + ort.quantize_static"
    opset: int
    sidecar: dict[str, Any] = field(default_factory=dict)  # extra sidecar fields
    calibration: Int8Result | None = None


@dataclass
class ExportJob:
    """What every exporter function gets.

    ``compare`` runs a graph on frames against the eager model (``verify.verify_onnx``, passed in
    by the pipeline so that exporters stay below verification in the import graph).
    """

    model: SegModel
    opts: ExportOptions
    stage: Path
    verify: list[VerifyFrame]
    calib: list[VerifyFrame]
    compare: Callable[[Path, Sequence[VerifyFrame], str], Compared]
    say: Callable[[str], None]
    calib_disjoint: bool = True  # False: too few frames to split, calibration reuses verification's
    base: StagedGraph | None = None  # the base row's graph, once written

    def path(self, row: Precision) -> Path:
        return self.stage / f"{self.opts.name}{row.suffix}.onnx"


class Compared(Protocol):
    """What an exporter reads of a verification (:class:`stvm_sdk.export.verify.Verification`)."""

    @property
    def argmax_agreement(self) -> float: ...
    @property
    def miou_onnx(self) -> float | None: ...


class Precision(Protocol):
    """What an exporter reads of its row of the precision table (:class:`stvm_sdk.export.precisions.
    Precision`; a protocol here, so that the table sits above its exporters in the import graph)."""

    @property
    def name(self) -> str: ...
    @property
    def suffix(self) -> str: ...
    @property
    def exporter_options(self) -> Mapping[str, Any]: ...


def export_float(job: ExportJob, row: Precision) -> StagedGraph:
    """A float graph from the torch exporter, with the row's settings (e.g. ``fp16=True``)."""
    from stvm_sdk.export.onnx import export_onnx

    o = job.opts
    exp = export_onnx(
        job.model, job.path(row), opset=o.opset, exporter=o.exporter, dynamic=o.dynamic, argmax=o.argmax,
        bake_normalize=o.bake_normalize,
        # A static graph is fixed to the trace size: trace at the profile's OPT shape.
        example_hw=(64, 128) if o.dynamic else (job.verify[0].image.shape[-2], job.verify[0].image.shape[-1]),
        **row.exporter_options,
    )  # fmt: skip
    job.say(f"exported {exp.path.name} ({exp.exporter}, opset {exp.opset}) in {exp.seconds:.1f} s")
    return StagedGraph(exp.path, exp.exporter, exp.opset)


def export_int8(job: ExportJob, row: Precision) -> StagedGraph:
    """A Q/DQ graph quantized from the base graph. Ranges are calibrated, and the calibration method
    chosen (mIoU when labelled, else agreement with the float model), on the calibration frames: the
    verification frames judge the chosen graph, so they must not have picked it."""
    from stvm_sdk.export.frames import onnx_inputs
    from stvm_sdk.export.quantize import quantize_int8
    from stvm_sdk.export.sidecar import graph_facts, stamp_graph

    assert job.base is not None, "the base graph is written first"
    labelled = any(f.label is not None for f in job.calib)

    def score(path: Path) -> float:
        v = job.compare(path, job.calib, row.name)
        return float(v.miou_onnx) if labelled and v.miou_onnx is not None else v.argmax_agreement

    inputs = onnx_inputs(job.calib, job.model, baked_normalize=job.opts.bake_normalize)
    n = len(job.calib)
    score_name = (
        f"mIoU (%) of the INT8 graph on the {n} labelled calibration frames (highest kept):"
        if labelled
        else f"argmax agreement (%) with PyTorch on the {n} calibration frames (highest kept):"
    )
    res = quantize_int8(
        job.base.path, job.path(row), inputs, score, methods=job.opts.calib_methods, log=job.say,
        score_name=score_name,
    )  # fmt: skip
    calibration = {
        "method": res.method,
        "scores": res.scores,
        "frames": len(job.calib),
        "score": "mIoU" if labelled else "argmax agreement %",
        "disjoint_from_verification": job.calib_disjoint,
        "symmetric": True,
        "per_channel": True,
    }
    # The Q/DQ graph keeps the base graph's facts but is INT8: say so in its own metadata.
    o = job.opts
    facts = graph_facts(job.model, precision=row.name, baked_normalize=o.bake_normalize, argmax=o.argmax,
                        dynamic=o.dynamic, size=(64, 128))  # fmt: skip
    stamp_graph(res.path, facts)
    exporter = f"{job.base.exporter} + ort.quantize_static"
    return StagedGraph(res.path, exporter, job.base.opset, {"calibration": calibration}, res)
