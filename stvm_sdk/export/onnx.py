"""Export a :class:`~stvm_sdk.models.SegModel` to ONNX for deployment.

The exported graph wraps the model in :class:`DeployModule`, so what runs in the car is exactly:
``image [B,3,H,W] float32 RGB in [0,1]`` -> (optional) ``(x - mean) / std`` -> model -> logits
``[B,K,H,W] float32`` or, with ``argmax=True``, ``classes [B,H,W] uint8`` (K/4 bytes per pixel
instead of 4K: far less output bandwidth on the vehicle bus and no host-side argmax).

Exporter choice (what each exporter can do on CPU: docs/environment.md):

* ``legacy`` (TorchScript-based, ``dynamo=False``) is the default: it is fast and it can emit
  **opset 17**, the newest opset TensorRT 8.5/8.6 parse (JetPack 5 and DRIVE OS 6 ship those), so
  one file builds on every car we target. It is deprecated upstream but works in torch <= 2.14.
* ``dynamo`` (``torch.export``-based) is an order of magnitude slower and needs opset >= 18 (TensorRT
  >= 10). It is the future-proof path, used by ``exporter="auto"`` where the legacy exporter is gone,
  and as ``auto``'s fallback: when the legacy exporter fails on a model (e.g. smp's PSPNet, whose
  adaptive pooling it cannot translate with dynamic sizes), the dynamo exporter exports it at a fixed
  input size and opset >= 18, said in one line (:func:`fallback_note`). An exporter the user named
  is kept: its failure is the error, with what to try instead.

The graph carries how to feed it and read it (precision, classes, input normalisation and mean/std,
output kind) in its ``metadata_props`` (:func:`stvm_sdk.export.sidecar.graph_facts`), and is checked
with ``onnx.checker`` (full check, with shape inference) before it is renamed into place; large models
keep their weights in ``<name>.onnx.data`` (protobuf caps a file at 2 GiB).
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stvm_sdk.errors import ConfigError, ModelLoadError
from stvm_sdk.export.artifacts import publish, staging_dir
from stvm_sdk.export.options import DEFAULT_OPSET, Exporter
from stvm_sdk.export.sidecar import graph_facts, set_graph_facts
from stvm_sdk.models.contract import forward_logits
from stvm_sdk.models.io import SegModel

INPUT_NAME = "image"
LOGITS_NAME = "logits"
CLASSES_NAME = "classes"
IN_AXES = {0: "batch", 2: "height", 3: "width"}
# Weights above this size go to an external-data file; protobuf refuses messages over 2 GiB.
EXTERNAL_DATA_THRESHOLD = 1 << 30
DYNAMO_MIN_OPSET = 18  # the dynamo exporter emits opset >= 18


class ExporterFailed(ModelLoadError):
    """One exporter could not export the model: ``kind`` names it, ``gist`` is its error's first line.

    The message says what to try instead; ``auto`` exports fall back on it (:func:`fallback_note`)."""

    def __init__(self, kind: str, gist: str) -> None:
        self.kind, self.gist = kind, gist
        other = f"dynamo --opset {DYNAMO_MIN_OPSET}" if kind == "legacy" else "legacy"
        super().__init__(f"ONNX export ({kind}) failed: {gist[:300]}; try --exporter {other}")

    @property
    def short(self) -> str:
        """What failed, in a few words: the error's first sentence, cut at 120 characters."""
        first = self.gist.split(". ", 1)[0].strip().rstrip(".")
        return first if len(first) <= 120 else first[:117].rstrip() + "..."


def fallback_note(failed: ExporterFailed, opset: int, hw: tuple[int, int]) -> str:
    """The one line said when ``auto`` falls back from the legacy to the dynamo exporter."""
    return (
        f"the legacy ONNX exporter failed ({failed.short}): exporting with the dynamo exporter at opset "
        f"{opset} instead; the graph has a fixed input size {hw[0]}x{hw[1]} and batch 1"
    )


def both_failed(first: ExporterFailed, second: ExporterFailed, opset: int, hw: tuple[int, int]) -> str:
    """The one error line when the legacy exporter and the dynamo fallback both failed."""
    return (
        f"ONNX export failed with both exporters: legacy: {first.short}; dynamo (opset {opset}, fixed "
        f"input size {hw[0]}x{hw[1]}): {second.short}"
    )


def resolve_exporter(exporter: str, opset: int) -> str:
    """The exporter ``exporter`` runs first: ``auto`` is ``legacy`` where this torch still has it.

    Raises:
        ConfigError: an unknown exporter, or the dynamo exporter below opset 18.
    """
    return _pick_exporter(exporter, opset)


class DeployModule(nn.Module):
    """The deployed computation: [0,1] RGB in, logits or a uint8 class map out.

    Normalisation runs in float32 even for an fp16 model (the image statistics need the range);
    the model body runs in the model's dtype and logits leave as float32 (fp32 I/O contract).
    """

    mean: Tensor
    std: Tensor

    def __init__(self, model: SegModel, *, bake_normalize: bool, argmax: bool, half: bool) -> None:
        super().__init__()
        self.net = model.module
        self.bake_normalize, self.argmax, self.use_half = bake_normalize, argmax, half
        self.register_buffer("mean", torch.tensor(model.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(model.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: Tensor) -> Tensor:
        x = (image - self.mean) / self.std if self.bake_normalize else image
        if self.use_half:
            x = x.half()
        logits = forward_logits(self.net, x)
        if self.argmax:
            return logits.argmax(1).to(torch.uint8)
        return logits.float()


@dataclass
class OnnxExport:
    """Where an export went and what it holds."""

    path: Path
    exporter: str
    opset: int
    precision: str
    seconds: float
    external_data: Path | None
    output_name: str
    op_counts: dict[str, int] = field(default_factory=dict)
    dynamic: bool = True  # False: a fixed input size (asked for, or the dynamo fallback's)
    fallback: str | None = None  # the line said when ``auto`` fell back to the dynamo exporter

    @property
    def size_bytes(self) -> int:
        extra = self.external_data.stat().st_size if self.external_data else 0
        return self.path.stat().st_size + extra


def export_onnx(
    model: SegModel,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: Exporter = "auto",
    dynamic: bool = True,
    bake_normalize: bool = True,
    argmax: bool = False,
    fp16: bool = False,
    example_hw: tuple[int, int] = (64, 128),
    external_data: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> OnnxExport:
    """Export ``model`` to ``path`` (atomically) and check the graph.

    With ``exporter="auto"``, a model the legacy exporter fails on is exported by the dynamo exporter
    at the fixed size ``example_hw`` (batch 1) and opset >= 18: ``log`` gets one line saying so, and
    the result's ``dynamic``, ``exporter``, ``opset`` and ``fallback`` say what was written.

    Args:
        model: the model; never modified (a copy is exported).
        path: destination ``.onnx`` file.
        opset: ONNX opset; the dynamo exporter needs >= 18.
        exporter: ``legacy``, ``dynamo`` or ``auto`` (legacy where available).
        dynamic: dynamic batch/height/width axes (else fixed to ``example_hw`` and batch 1).
        bake_normalize: input is [0,1] RGB and the graph normalises; else the input is normalised.
        argmax: output ``classes [B,H,W] uint8`` instead of ``logits [B,K,H,W] float32``.
        fp16: half-precision weights and compute with float32 input/output (for GPUs).
        example_hw: the trace input size (any size the model accepts); the input size of a static graph.
        external_data: force (True) or forbid (False) ``<name>.onnx.data``; None decides by size.
        log: where the fallback line goes (None: only in the result's ``fallback``).

    Raises:
        ConfigError: bad option combination. ModelLoadError: the model cannot be exported
            (:class:`ExporterFailed` when the exporter itself failed).
    """
    final = Path(path)
    kind = _pick_exporter(exporter, opset)
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.module.modules()):
        # Neither exporter takes TorchScript inside the deploy wrapper (scripted dict outputs and
        # control flow do not translate); say so up front instead of failing deep in the exporter.
        raise ModelLoadError(
            "TorchScript models cannot be exported to ONNX: export from a checkpoint dict "
            "(stvm_sdk.models.save_model of the nn.Module) instead"
        )
    if argmax and model.num_classes > 255:
        raise ConfigError(
            f"--argmax writes uint8 class ids; the model has {model.num_classes} classes (> 255)"
        )
    wrapper = _deploy_module(model, bake_normalize=bake_normalize, argmax=argmax, half=fp16)
    out_name = CLASSES_NAME if argmax else LOGITS_NAME
    start = time.perf_counter()
    note = None
    with staging_dir(final) as stage:
        raw = stage / "raw" / final.name
        raw.parent.mkdir()
        try:
            _run_exporter(kind, wrapper, raw, opset, dynamic, out_name, example_hw)
        except ExporterFailed as first:
            if exporter != "auto" or kind != "legacy":
                raise
            kind, opset, dynamic = "dynamo", max(opset, DYNAMO_MIN_OPSET), False
            note = fallback_note(first, opset, example_hw)
            if log is not None:
                log(note)
            try:
                _run_exporter(kind, wrapper, raw, opset, dynamic, out_name, example_hw)
            except ExporterFailed as second:
                raise ModelLoadError(both_failed(first, second, opset, example_hw)) from second
        facts = graph_facts(
            model, precision="fp16" if fp16 else "fp32", baked_normalize=bake_normalize, argmax=argmax,
            dynamic=dynamic, size=example_hw,
        )  # fmt: skip
        staged, data = _finalise(raw, stage / final.name, external_data, facts)
        counts = _check(staged)
        data_final = final.with_name(data.name) if data is not None else None
        if data is not None and data_final is not None:
            publish(data, data_final)  # the weights first, so model.onnx never points at a missing file
        publish(staged, final)
        if data is None:
            # A weights file left by an earlier external-data export of the same name is now stale.
            final.with_name(final.name + ".data").unlink(missing_ok=True)
    return OnnxExport(
        final,
        kind,
        opset,
        "fp16" if fp16 else "fp32",
        time.perf_counter() - start,
        data_final,
        out_name,
        counts,
        dynamic,
        note,
    )


def fit_to_model(
    model: SegModel, *, dynamic: bool, exporter: str, opset: int, hw: tuple[int, int]
) -> tuple[bool, str, int, list[str]]:
    """``(dynamic, exporter, opset)`` with what the model's family says its export needs (a fixed input
    size ``hw``, the dynamo exporter at opset 18), and one line per change. An exporter named is kept."""
    from stvm_sdk.models.families import get_family

    notes: list[str] = []
    needs = get_family(model.family).export_needs(model.arch) if model.family and model.arch else None
    if needs is None:
        return dynamic, exporter, opset, notes
    if needs.static and dynamic:
        notes.append(
            f"{model.arch}: {needs.reason}: the graph has a fixed input size {hw[0]}x{hw[1]} and batch 1"
        )
        dynamic = False
    if needs.exporter is not None and exporter == "auto":
        exporter, opset = needs.exporter, max(opset, needs.opset or 0)
        notes.append(f"{model.arch}: exported with the {exporter} exporter at opset {opset}")
    return dynamic, exporter, opset, notes


def _pick_exporter(exporter: str, opset: int) -> str:
    if exporter not in ("auto", "legacy", "dynamo"):
        raise ConfigError(f"exporter must be auto, legacy or dynamo, got {exporter!r}")
    if exporter == "dynamo" and opset < 18:
        raise ConfigError(
            f"the dynamo exporter emits opset >= 18 (asked for {opset}): use --opset 18 or --exporter legacy"
        )
    if exporter == "auto":
        # Quiet fallback: only where this torch has no legacy exporter left.
        has_legacy = hasattr(torch.onnx, "utils") and hasattr(torch.onnx.utils, "export")
        return "legacy" if has_legacy or opset < 18 else "dynamo"
    return exporter


def _deploy_module(model: SegModel, *, bake_normalize: bool, argmax: bool, half: bool) -> DeployModule:
    net = _copy_module(model.module).cpu().eval()
    clone = replace(model, module=net.half() if half else net)
    return DeployModule(clone, bake_normalize=bake_normalize, argmax=argmax, half=half).eval()


def _copy_module(module: nn.Module) -> nn.Module:
    """An independent copy (the caller's model is never touched, e.g. by ``.half()``)."""
    return copy.deepcopy(module)


def _run_exporter(
    kind: str,
    module: nn.Module,
    out: Path,
    opset: int,
    dynamic: bool,
    out_name: str,
    example_hw: tuple[int, int],
) -> None:
    from stvm_sdk.kernels import exporting  # reference kernels only: the graph must hold plain ONNX ops

    example = torch.rand(1, 3, *example_hw, generator=torch.Generator().manual_seed(0))
    out_axes = {0: "batch", 1: "height", 2: "width"} if out_name == CLASSES_NAME else IN_AXES
    try:
        with exporting(), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation + tracer warnings on every export
            if kind == "legacy":
                with _native_output_quiet():
                    torch.onnx.export(
                        module, (example,), str(out), dynamo=False, opset_version=opset,
                        input_names=[INPUT_NAME], output_names=[out_name], do_constant_folding=True,
                        dynamic_axes={INPUT_NAME: IN_AXES, out_name: out_axes} if dynamic else None,
                    )  # fmt: skip
            else:
                _export_dynamo(module, example, out, opset, dynamic, out_name)
    except Exception as exc:  # exporter failures are long; the user needs the gist and what to try
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExporterFailed(kind, first) from exc


@contextlib.contextmanager
def _native_output_quiet() -> Iterator[None]:
    """Drop what native code writes to the process's stdout and stderr meanwhile.

    When the legacy exporter fails, torch's C++ side prints the whole TorchScript graph (hundreds of
    lines) on stdout first (``_jit_onnx_log``, always on in torch 2.x): noise for the user, and it
    would break ``--json``, whose stdout holds one JSON object. The error raised after it says what failed.
    """
    with contextlib.ExitStack() as stack:
        for stream in (sys.__stdout__, sys.__stderr__):
            stack.enter_context(_fd_to_sink(stream))
        yield


@contextlib.contextmanager
def _fd_to_sink(stream: Any) -> Iterator[None]:
    """Point ``stream``'s file descriptor at a scratch file until the block ends (nothing without one)."""
    try:
        fd = stream.fileno()
        saved = os.dup(fd)
    except (AttributeError, OSError, ValueError):  # no real descriptor (embedded interpreter)
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            for s in (sys.stdout, sys.stderr, stream):
                with contextlib.suppress(Exception):
                    s.flush()
            os.dup2(sink.fileno(), fd)
            try:
                yield
            finally:
                os.dup2(saved, fd)
    finally:
        os.close(saved)


def _export_dynamo(
    module: nn.Module, example: Tensor, out: Path, opset: int, dynamic: bool, out_name: str
) -> None:
    dim = torch.export.Dim
    dims = {0: dim("batch", max=64), 2: dim("height", min=32, max=4096), 3: dim("width", min=32, max=4096)}
    # The dynamo exporter prints its progress on stdout, which holds only the JSON object under --json.
    with contextlib.redirect_stdout(sys.stderr):
        program = torch.onnx.export(
            module, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=[out_name], dynamic_shapes={INPUT_NAME: dims} if dynamic else None,
            external_data=False, verbose=False,
        )  # fmt: skip
    assert program is not None
    program.save(str(out), external_data=True)


def _finalise(
    raw: Path, staged: Path, external_data: bool | None, facts: dict[str, Any]
) -> tuple[Path, Path | None]:
    """Re-save the exported graph in the layout we publish (one file, or one file + one data file),
    with ``facts`` (how to feed it and read it) in its ``metadata_props``."""
    import onnx

    proto = onnx.load(str(raw))  # pulls in any external tensors the exporter wrote
    set_graph_facts(proto, facts, staged.name)
    out = proto.graph.output[0].type.tensor_type.shape
    if facts["output"]["kind"] == "logits" and len(out.dim) == 4:
        out.dim[1].dim_value = facts["num_classes"]  # the exporter may leave K symbolic: say it
    weight_bytes = sum(t.ByteSize() for t in proto.graph.initializer)
    use_external = external_data if external_data is not None else weight_bytes > EXTERNAL_DATA_THRESHOLD
    if not use_external:
        onnx.save_model(proto, str(staged))
        return staged, None
    data_name = staged.name + ".data"
    onnx.save_model(
        proto,
        str(staged),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_name,
        size_threshold=1024,
    )
    return staged, staged.with_name(data_name)


def _check(path: Path) -> dict[str, int]:
    """``onnx.checker`` (by path, so external data works) and the graph's operator counts."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ModelLoadError(
            f"the exported graph fails onnx.checker: {str(exc).splitlines()[0][:300]}"
        ) from exc
    proto = onnx.load(str(path), load_external_data=False)
    return dict(Counter(n.op_type for n in proto.graph.node))


def graph_opset(proto: object) -> int:
    """The default-domain opset of a loaded ``onnx.ModelProto``."""
    for entry in proto.opset_import:  # type: ignore[attr-defined]
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0
