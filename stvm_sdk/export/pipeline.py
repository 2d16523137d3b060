"""`stvm export` as one SDK call: export, quantize, verify, check for TensorRT, publish, build engines.

Every precision asked for is a row of :mod:`stvm_sdk.export.precisions`; its exporter function writes
the graph, and this module verifies, checks, publishes and builds engines the same way for all rows.
Everything is built and verified in a staging folder first; each artifact that passed its checks is
then renamed into ``out_dir`` with its sidecar, and one that failed is deleted with the staging folder
(never written under a final name). When any failed, :class:`VerificationError` names it, the
artifacts that were kept, and what to do (e.g. ``--min-agreement`` for an fp16 graph that flips
near-tied pixels); no engine is built then. Engines are built last: when TensorRT or a GPU is
missing the verified ONNX files stay and :attr:`ExportReport.trt_error` says what is missing (the
CLI then exits non-zero).

With ``--exporter auto`` (the default) the graphs are written by the legacy exporter; when it fails on
the model, every row is written again by the dynamo exporter at the verification size (``--shape``'s
OPT, batch 1) and opset >= 18, said in one line; an exporter the user named is never swapped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from stvm_sdk.boundary.outputs import claim_dir, write_json_atomic
from stvm_sdk.errors import ConfigError, DataError, ModelLoadError, VerificationError
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
from stvm_sdk.export.verify import Verification, judge, verify_onnx
from stvm_sdk.models.io import SegModel, require_finite
from stvm_sdk.runners.contract import check_sidecar, read_sidecar, sidecar_path
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
    opts = _fit_to_model(model, opts, profile, say)
    auto = opts.exporter == "auto"
    if auto:  # the exporter tried first; its failure is retried here, at the verification size
        from stvm_sdk.export.onnx import resolve_exporter

        opts = replace(opts, exporter=resolve_exporter(opts.exporter, opts.opset))  # type: ignore[arg-type]
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
        staged = _stage_rows(job, rows, report, size, fallback=auto)
        opts = job.opts  # after a fallback: the dynamo exporter and a fixed size, which the sidecars say
        if show:
            show([s.verification for s in staged])
        failed = [s for s in staged if not s.verification.passed or (opts.trt and s.problems)]
        for s in staged:
            if s not in failed:
                report.artifacts.append(_publish(model, s, opts, profile, source))
    if failed:
        raise VerificationError(_failure_line(failed, report, opts))
    if opts.trt:
        _build_engines(report, profile, opts, say)
    return report


def _stage_rows(
    job: ExportJob, rows: list[Precision], report: ExportReport, size: tuple[int, int], *, fallback: bool
) -> list[_Staged]:
    """Every row staged; with ``fallback``, a legacy exporter failure stages them all again with the
    dynamo exporter at the fixed size ``size`` (batch 1), said in one line (``job.opts`` then says so)."""
    from stvm_sdk.export.onnx import DYNAMO_MIN_OPSET, ExporterFailed, both_failed, fallback_note

    try:
        return [_stage(job, row, report) for row in rows]
    except ExporterFailed as exc:
        if not fallback or exc.kind != "legacy":
            raise
        first = exc
    o = job.opts
    job.opts = replace(o, exporter="dynamo", dynamic=False, opset=max(o.opset, DYNAMO_MIN_OPSET))
    job.base, report.calibration = None, None
    report.seconds.clear()
    job.say(fallback_note(first, job.opts.opset, size))
    try:
        return [_stage(job, row, report) for row in rows]
    except ExporterFailed as second:
        if second.kind != "dynamo":
            raise
        raise ModelLoadError(both_failed(first, second, job.opts.opset, size)) from second


def _failure_line(failed: list[_Staged], report: ExportReport, opts: ExportOptions) -> str:
    """One line: what failed and why, what was kept, and what to do."""
    s = failed[0]
    v, name = s.verification, s.graph.path.name
    if not v.passed:
        why = f"{name} ({v.precision}) does not match the PyTorch model on {v.n_frames} frames: "
        why += "; ".join(v.failures)
    else:
        why = f"{name} would not parse in TensorRT: {'; '.join(s.problems[:3])}"
    others = [f.graph.path.name for f in failed[1:]]
    why += f" (nor does {', '.join(others)})" if others else ""
    kept = [f"{a.onnx_path.name} ({a.precision})" for a in report.artifacts]
    where = (
        f"; not written. Kept in {opts.out_dir}, verified: {', '.join(kept)} with their .json sidecars"
        if kept
        else "; nothing was written"
    )
    return f"{why}{where}. {_advice(s, report)}"


def _advice(s: _Staged, report: ExportReport) -> str:
    """What the user can do about the first failed artifact."""
    v, row = s.verification, s.row
    if v.passed:  # only TensorRT's parser refused it
        return "Try another --opset or --exporter, or deploy it with ONNX Runtime instead of TensorRT"
    if row.flag is None:  # the fp32 graph itself differs: an export problem, not rounding
        return "The fp32 graph itself differs: try --exporter dynamo (or legacy) and another --opset"
    text = f"deploy {report.artifacts[0].onnx_path.name}, or " if report.artifacts else ""
    if v.non_finite:
        text += f"leave {row.flag} off: the {row.name} graph overflows"
    elif any("argmax agreement" in f for f in v.failures):
        text += (
            f"accept the pixels {row.name} flips (those whose two best logits are nearly tied, common with "
            f"random or barely trained weights) with --min-agreement {max(0, int(v.argmax_agreement) - 1)}"
        )
    else:
        text += "calibrate on more, or more typical, --calib frames"
    return text[0].upper() + text[1:]


def _fit_to_model(model: SegModel, opts: ExportOptions, profile: Profile, say: Log) -> ExportOptions:
    """The options with what the model's family says its export needs, each change said in one line."""
    from stvm_sdk.export.onnx import fit_to_model

    hw = (profile.opt[2], profile.opt[3])
    dynamic, exporter, opset, notes = fit_to_model(
        model, dynamic=opts.dynamic, exporter=opts.exporter, opset=opts.opset, hw=hw
    )
    for line in notes:
        say(line)
    return replace(opts, dynamic=dynamic, exporter=exporter, opset=opset)  # type: ignore[arg-type]


def _check_options(opts: ExportOptions) -> tuple[list[Precision], Profile]:
    from typing import get_args

    from stvm_sdk.boundary.args import check_choice, check_hw_pixels
    from stvm_sdk.boundary.frames import max_pixels
    from stvm_sdk.export.options import Exporter

    check_choice(opts.exporter, get_args(Exporter), "--exporter")  # before the output folder is claimed
    rows = requested(opts.precisions)
    for row in rows:
        if row.needs_calibration and opts.calib is None:
            raise ConfigError(
                f"{row.flag or row.name} needs --calib DIR: a folder of target frames to calibrate "
                f"the {row.name} ranges on"
            )
    _check_numbers(opts)
    profile = parse_profile(opts.shape, opts.batch)
    check_hw_pixels((profile.opt[2], profile.opt[3]), "--shape", max_pixels())  # verification frames
    return rows, profile


MAX_BATCH = 1024
MAX_FRAMES = 10_000  # verification or calibration frames (all held in memory at once)


def _check_numbers(opts: ExportOptions) -> None:
    """Every numeric export option in the range it needs, before anything is written."""
    import onnx

    from stvm_sdk.boundary.args import check_int

    check_int(opts.opset, "--opset", 7, onnx.defs.onnx_opset_version())
    check_int(opts.batch, "--batch", 1, MAX_BATCH)
    check_int(opts.workspace_mib, "--workspace", 1, 1 << 20, hint="MiB")
    check_int(opts.verify_frames, "--verify-frames", 1, MAX_FRAMES)
    check_int(opts.calib_frames, "--calib-frames", 1, MAX_FRAMES)
    agreement = opts.min_agreement
    if agreement is not None and (
        isinstance(agreement, bool) or not isinstance(agreement, (int, float)) or not 0 <= agreement <= 100
    ):
        raise ConfigError(f"--min-agreement is a percentage (0 to 100), got {agreement}")


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
    if job.opts.min_agreement is not None and row.flag is not None:  # the user's own bar, fp16/INT8
        v = judge(v, replace(row.thresholds, argmax_agreement=job.opts.min_agreement))
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
    check_sidecar(meta, sidecar_path(final))  # never write a sidecar the runners would refuse
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
