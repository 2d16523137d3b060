"""`stvm export` as one SDK call: export, quantize, verify, check for TensorRT, publish, build engines.

Every precision asked for is a row of :mod:`stvm_sdk.export.precisions`; its exporter function writes
the graph, and this module verifies, checks, publishes and builds engines the same way for all rows.
Everything is built and verified in a staging folder first; artifacts are renamed into ``out_dir``
only when every requested precision passed its checks, so a failed run leaves no new file under a
final name. Engines are built last: when TensorRT or a GPU is missing the verified ONNX files stay
and :attr:`ExportReport.trt_error` says what is missing (the CLI then exits non-zero).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stvm_sdk.boundary.outputs import claim_dir, write_json_atomic
from stvm_sdk.errors import ConfigError, DataError, VerificationError
from stvm_sdk.export import sidecar as sc
from stvm_sdk.export.artifacts import publish, staging_dir
from stvm_sdk.export.frames import VerifyFrame, load_frames
from stvm_sdk.export.options import ExportOptions
from stvm_sdk.export.precisions import Precision, engine_precisions, requested
from stvm_sdk.export.report import Artifact, ExportReport
from stvm_sdk.export.stages import ExportJob, StagedGraph
from stvm_sdk.export.tensorrt import (
    build_engine,
    parse_profile,
    trt_unavailable_reason,
    trtexec_command,
)
from stvm_sdk.export.trt_ops import check_file
from stvm_sdk.export.verify import Verification, require_pass, verify_onnx
from stvm_sdk.models.io import SegModel, require_finite
from stvm_sdk.runners.base import read_sidecar, sidecar_path
from stvm_sdk.runners.trt import Profile

Log = Callable[[str], None]


@dataclass
class _Staged:
    """A row's graph in the staging folder and the checks it went through."""

    row: Precision
    graph: StagedGraph
    verification: Verification
    problems: list[str]


def export_model(
    model: SegModel,
    opts: ExportOptions,
    *,
    source: Path | None = None,
    log: Log | None = None,
    show: Callable[[list[Verification]], None] | None = None,
) -> ExportReport:
    """Export ``model`` as asked in ``opts``; see the module docstring for the order of steps.

    Raises:
        ConfigError: bad options. DataError: unusable calibration folder (checked before any export).
        VerificationError: an artifact differs from the model or TensorRT could not parse it.
    """
    say = log or (lambda _msg: None)
    rows, profile = _check_options(opts)
    require_finite(model, "export it")
    claim_dir(opts.out_dir, "export", inputs=(source, opts.calib, opts.labels))
    size = (profile.opt[2], profile.opt[3])
    verify, calib, source_desc = _frames(opts, size, model.num_classes)
    disjoint = _disjoint(verify, calib, rows, opts, say)
    final = opts.out_dir / f"{opts.name}.onnx"
    report = ExportReport([], source_desc, calibration_disjoint=disjoint)
    with staging_dir(final) as stage:
        job = ExportJob(
            model, opts, stage, verify, calib, _comparer(model, opts), say, calib_disjoint=disjoint
        )
        staged = [_stage(job, row, report) for row in rows]
        if show:
            show([s.verification for s in staged])
        for s in staged:
            require_pass(s.verification, opts.out_dir / s.graph.path.name)
            if opts.trt and s.problems:
                raise VerificationError(
                    f"{s.graph.path.name} would not parse in TensorRT: {'; '.join(s.problems[:3])}"
                )
        for s in staged:
            report.artifacts.append(_publish(model, s, opts, profile, source))
    if opts.trt:
        _build_engines(report, profile, opts, say)
    return report


def _check_options(opts: ExportOptions) -> tuple[list[Precision], Profile]:
    from typing import get_args

    from stvm_sdk.boundary.args import check_choice
    from stvm_sdk.export.options import Exporter

    check_choice(opts.exporter, get_args(Exporter), "--exporter")  # before the output folder is claimed
    rows = requested(opts.precisions)
    for row in rows:
        if row.needs_calibration and opts.calib is None:
            raise ConfigError(
                f"{row.flag or row.name} needs --calib DIR: a folder of target frames to calibrate "
                f"the {row.name} ranges on"
            )
    if opts.verify_frames < 1:
        raise ConfigError("--verify-frames must be at least 1")
    return rows, parse_profile(opts.shape, opts.batch)


def _frames(
    opts: ExportOptions, size: tuple[int, int], num_classes: int
) -> tuple[list[VerifyFrame], list[VerifyFrame], str]:
    """Verification and calibration frames (disjoint when the folder has enough of them)."""
    if opts.calib is None:
        frames, desc = load_frames(None, size=size, n=opts.verify_frames, num_classes=num_classes)
        return frames, [], desc
    try:
        frames, desc = load_frames(
            opts.calib, size=size, n=opts.verify_frames + opts.calib_frames, labels=opts.labels,
            num_classes=num_classes, ignore_out_of_range=opts.ignore_out_of_range,
        )  # fmt: skip
    except DataError as exc:
        raise DataError(f"--calib: {exc}") from None
    if len(frames) <= opts.verify_frames:
        return frames, frames, desc  # too few to split: the caller says so
    verify = frames[:: max(1, len(frames) // opts.verify_frames)][: opts.verify_frames]
    calib = [f for f in frames if not any(f is v for v in verify)]
    return verify, calib, desc


def _disjoint(
    verify: list[VerifyFrame], calib: list[VerifyFrame], rows: list[Precision], opts: ExportOptions, say: Log
) -> bool:
    """Whether calibration and verification frames are apart; says so when a calibrated row lacks it."""
    disjoint = not any(f is v for f in calib for v in verify)
    if not disjoint and (calibrated := [r.name for r in rows if r.needs_calibration]):
        say(
            f"--calib has {len(calib)} frame(s), too few to split from the {opts.verify_frames} "
            f"verification frames: {', '.join(calibrated)} is calibrated and verified on the same "
            "frames, so its check is optimistic (give the folder more frames than --verify-frames)"
        )
    return disjoint


def _comparer(
    model: SegModel, opts: ExportOptions
) -> Callable[[Path, Sequence[VerifyFrame], str], Verification]:
    """How exporters compare a candidate graph with the eager model (e.g. to choose a calibration)."""

    def compare(path: Path, frames: Sequence[VerifyFrame], precision: str) -> Verification:
        return verify_onnx(path, model, frames, precision=precision, baked_normalize=opts.bake_normalize)

    return compare


def _stage(job: ExportJob, row: Precision, report: ExportReport) -> _Staged:
    """Write ``row``'s graph with its exporter, then verify it with the row's thresholds."""
    t0 = time.perf_counter()
    graph = row.exporter(job, row)
    job.base = job.base or graph  # the first row is the base graph later rows may start from
    if graph.calibration is not None:
        report.calibration = graph.calibration
    v = verify_onnx(
        graph.path,
        job.model,
        job.verify,
        precision=row.name,
        baked_normalize=job.opts.bake_normalize,
        source=report.frames,
    )
    report.seconds[row.name] = time.perf_counter() - t0
    return _Staged(row, graph, v, check_file(str(graph.path)))


def _publish(
    model: SegModel, s: _Staged, opts: ExportOptions, profile: Profile, source: Path | None
) -> Artifact:
    staged, name = s.graph.path, s.row.name
    final = opts.out_dir / staged.name
    data = staged.with_name(staged.name + ".data")
    if data.is_file():
        publish(data, final.with_name(data.name))  # weights before the graph that points at them
    else:
        final.with_name(final.name + ".data").unlink(missing_ok=True)
    publish(staged, final)
    engine = final.with_suffix(".engine")
    cmd = trtexec_command(final, engine, profile, name, workspace_mib=opts.workspace_mib)
    io = sc.io_contract(
        model,
        baked_normalize=opts.bake_normalize,
        argmax=opts.argmax,
        dynamic=opts.dynamic,
        size=(profile.opt[2], profile.opt[3]),
    )
    meta = sc.onnx_sidecar(
        model,
        final,
        precision=name,
        opset=s.graph.opset,
        exporter=s.graph.exporter,
        io=io,
        verification=s.verification.to_dict(),
        trt_problems=s.problems,
        trtexec=cmd,
        profile=profile.to_dict(),
        source=source,
        extra=s.graph.sidecar,
    )
    side = write_json_atomic(meta, sidecar_path(final))
    return Artifact(name, final, side, s.verification, s.problems, cmd)


def _build_engines(report: ExportReport, profile: Profile, opts: ExportOptions, say: Log) -> None:
    reason = trt_unavailable_reason()
    if reason:
        report.trt_error = reason
        return
    wanted = engine_precisions(a.precision for a in report.artifacts)
    for a in (a for a in report.artifacts if a.precision in wanted):
        engine = a.onnx_path.with_suffix(".engine")
        t0 = time.perf_counter()
        build = build_engine(a.onnx_path, engine, profile, a.precision, workspace_mib=opts.workspace_mib)
        meta = read_sidecar(a.onnx_path) or {}
        write_json_atomic(sc.engine_sidecar(meta, engine, build), sidecar_path(engine))
        a.engine_path = engine
        say(
            f"built {engine.name} (TensorRT {build['tensorrt']}, {build.get('gpu')}) "
            f"in {time.perf_counter() - t0:.0f} s"
        )
