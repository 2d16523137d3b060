"""`stvm export` as one SDK call: export, quantize, verify, check for TensorRT, publish, build engines.

Everything is built and verified in a staging folder first; artifacts are renamed into ``out_dir``
only when every requested precision passed its checks, so a failed run leaves no new file under a
final name. Engines are built last: when TensorRT or a GPU is missing the verified ONNX files stay
and :attr:`ExportReport.trt_error` says what is missing (the CLI then exits non-zero).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stvm_sdk.boundary.outputs import claim_dir, write_json_atomic
from stvm_sdk.errors import ConfigError, DataError, VerificationError
from stvm_sdk.export import sidecar as sc
from stvm_sdk.export.artifacts import publish, staging_dir
from stvm_sdk.export.frames import VerifyFrame, load_frames, onnx_inputs
from stvm_sdk.export.onnx import OnnxExport, export_onnx
from stvm_sdk.export.quantize import quantize_int8
from stvm_sdk.export.report import Artifact, ExportOptions, ExportReport
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
    precision: str
    path: Path
    export: OnnxExport | None
    verification: Verification
    problems: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


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
    profile = _check_options(opts)
    require_finite(model, "export it")
    claim_dir(opts.out_dir, "export", inputs=(source, opts.calib, opts.labels))
    size = (profile.opt[2], profile.opt[3])
    verify, calib, source_desc = _frames(opts, size, model.num_classes)
    final = opts.out_dir / f"{opts.name}.onnx"
    report = ExportReport([], source_desc)
    with staging_dir(final) as stage:
        staged = _stage_all(model, opts, stage, verify, calib, report, say)
        if show:
            show([s.verification for s in staged])
        for s in staged:
            require_pass(s.verification, opts.out_dir / s.path.name)
            if opts.trt and s.problems:
                raise VerificationError(
                    f"{s.path.name} would not parse in TensorRT: {'; '.join(s.problems[:3])}"
                )
        for s in staged:
            report.artifacts.append(_publish(model, s, opts, profile, source))
    if opts.trt:
        _build_engines(report, profile, opts, say)
    return report


def _check_options(opts: ExportOptions) -> Profile:
    if opts.int8 and opts.calib is None:
        raise ConfigError(
            "--int8 needs --calib DIR: a folder of target frames to calibrate the int8 ranges on"
        )
    if opts.verify_frames < 1:
        raise ConfigError("--verify-frames must be at least 1")
    return parse_profile(opts.shape, opts.batch)


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
        return frames, frames, desc  # too few to split: calibrate and verify on the same frames
    verify = frames[:: max(1, len(frames) // opts.verify_frames)][: opts.verify_frames]
    calib = [f for f in frames if not any(f is v for v in verify)]
    return verify, calib, desc


def _stage_all(
    model: SegModel,
    opts: ExportOptions,
    stage: Path,
    verify: list[VerifyFrame],
    calib: list[VerifyFrame],
    report: ExportReport,
    say: Log,
) -> list[_Staged]:
    def export(precision: str, fp16: bool) -> _Staged:
        t0 = time.perf_counter()
        exp = export_onnx(
            model,
            stage / f"{opts.name}{'' if precision == 'fp32' else '_' + precision}.onnx",
            opset=opts.opset,
            exporter=opts.exporter,
            dynamic=opts.dynamic,
            argmax=opts.argmax,
            bake_normalize=opts.bake_normalize,
            fp16=fp16,
            # A static graph is fixed to the trace size: trace at the profile's OPT shape.
            example_hw=(64, 128) if opts.dynamic else (verify[0].image.shape[-2], verify[0].image.shape[-1]),
        )
        say(f"exported {exp.path.name} ({exp.exporter}, opset {exp.opset}) in {exp.seconds:.1f} s")
        v = verify_onnx(
            exp.path,
            model,
            verify,
            precision=precision,
            baked_normalize=opts.bake_normalize,
            source=report.frames,
        )
        report.seconds[precision] = time.perf_counter() - t0
        return _Staged(precision, exp.path, exp, v, check_file(str(exp.path)))

    staged = [export("fp32", False)]
    if opts.fp16:
        staged.append(export("fp16", True))
    if opts.int8:
        staged.append(_stage_int8(model, opts, stage, staged[0], verify, calib, report, say))
    return staged


def _stage_int8(
    model: SegModel,
    opts: ExportOptions,
    stage: Path,
    fp32: _Staged,
    verify: list[VerifyFrame],
    calib: list[VerifyFrame],
    report: ExportReport,
    say: Log,
) -> _Staged:
    t0 = time.perf_counter()
    labelled = any(f.label is not None for f in verify)

    def score(path: Path) -> float:  # mIoU when labels exist, else agreement with the float model
        v = verify_onnx(path, model, verify, precision="int8", baked_normalize=opts.bake_normalize)
        return float(v.miou_onnx) if labelled and v.miou_onnx is not None else v.argmax_agreement

    out = stage / f"{opts.name}_int8.onnx"
    inputs = onnx_inputs(calib, model, baked_normalize=opts.bake_normalize)
    res = quantize_int8(fp32.path, out, inputs, score, methods=opts.calib_methods, log=say)
    report.calibration = res
    v = verify_onnx(
        out, model, verify, precision="int8", baked_normalize=opts.bake_normalize, source=report.frames
    )
    report.seconds["int8"] = time.perf_counter() - t0
    extra = {
        "calibration": {
            "method": res.method,
            "scores": res.scores,
            "frames": len(calib),
            "score": "mIoU" if labelled else "argmax agreement %",
            "symmetric": True,
            "per_channel": True,
        }
    }
    assert fp32.export is not None
    return _Staged("int8", out, fp32.export, v, check_file(str(out)), extra)


def _publish(
    model: SegModel, s: _Staged, opts: ExportOptions, profile: Profile, source: Path | None
) -> Artifact:
    final = opts.out_dir / s.path.name
    data = s.path.with_name(s.path.name + ".data")
    if data.is_file():
        publish(data, final.with_name(data.name))  # weights before the graph that points at them
    else:
        final.with_name(final.name + ".data").unlink(missing_ok=True)
    publish(s.path, final)
    engine = final.with_suffix(".engine")
    cmd = trtexec_command(final, engine, profile, s.precision, workspace_mib=opts.workspace_mib)
    io = sc.io_contract(
        model,
        baked_normalize=opts.bake_normalize,
        argmax=opts.argmax,
        dynamic=opts.dynamic,
        size=(profile.opt[2], profile.opt[3]),
    )
    exp = s.export
    meta = sc.onnx_sidecar(
        model,
        final,
        precision=s.precision,
        opset=exp.opset if exp else opts.opset,
        exporter=(exp.exporter if exp else "?") + (" + ort.quantize_static" if s.precision == "int8" else ""),
        io=io,
        verification=s.verification.to_dict(),
        trt_problems=s.problems,
        trtexec=cmd,
        profile=profile.to_dict(),
        source=source,
        extra=s.extra,
    )
    side = write_json_atomic(meta, sidecar_path(final))
    return Artifact(s.precision, final, side, s.verification, s.problems, cmd)


def _build_engines(report: ExportReport, profile: Profile, opts: ExportOptions, say: Log) -> None:
    reason = trt_unavailable_reason()
    if reason:
        report.trt_error = reason
        return
    targets = [a for a in report.artifacts if a.precision != "fp32"] or report.artifacts
    for a in targets:
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
