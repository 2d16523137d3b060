"""`stvm bench` as one SDK call: open every (model, backend) pair, time them side by side, add the
edge estimate.

Backends per file: a ``.pt`` checkpoint runs in eager ``torch`` and, exported on the fly to a
temporary ONNX, in ``ort``; an ``.onnx`` runs in ``ort``; an ``.engine`` in ``trt``. With
``backends="auto"`` every file gets all the backends it can serve here (TensorRT only where a GPU
and TensorRT exist; an engine that cannot run here is an error, since it was given explicitly); a
backend named in ``backends`` must apply to some file, or the call fails saying why.

Each row says what its artifact is where rows differ (static or dynamic input, exporter, exported on
the fly: :func:`stvm_sdk.bench.timing.label_rows`). ONNX Runtime sessions opened here stop spinning
when a run returns (:func:`stvm_sdk.runners.ort.no_spinning_after_run`): its idle pool would otherwise
take the cores the next backend is being timed on.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stvm_sdk.bench.timing import Stats, label_rows, measure_interleaved, open_and_warm
from stvm_sdk.boundary.args import suggest
from stvm_sdk.errors import ConfigError, ModelLoadError
from stvm_sdk.runners.base import Runner
from stvm_sdk.runners.dispatch import BACKENDS, backend_of, open_runner
from stvm_sdk.runners.ort import no_spinning_after_run
from stvm_sdk.runners.trt import TrtRunner

ON_THE_FLY = "exported on the fly"


@dataclass
class BenchReport:
    """Rows (one per backend/precision/model), the edge estimate and where it ran."""

    rows: list[Stats]
    shape: tuple[int, int, int, int]
    edge: dict[str, Any] | None = None
    machine: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [r.to_dict() for r in self.rows],
            "shape": list(self.shape),
            "edge_estimate": self.edge,
            "machine": self.machine,
        }


def parse_backends(spec: str) -> list[str] | None:
    """``"auto"`` -> None; ``"torch,ort"`` -> ``["torch", "ort"]`` (validated)."""
    if spec.strip() == "auto":
        return None
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in BACKENDS]
    if bad or not names:
        hint = suggest(bad[0], BACKENDS) if bad else ""
        raise ConfigError(f"--backend {spec!r}: use auto or a comma list of {', '.join(BACKENDS)}{hint}")
    return names


def machine_info() -> dict[str, Any]:
    """CPU model, core count, GPU (if any) and library versions, for result tables."""
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        # Other processes compete for the cores on shared machines: absolute times depend on it.
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "int8_dot_product": _has_vnni(),
        "threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def _has_vnni() -> bool | None:
    """Whether the CPU has int8 dot-product instructions (AVX-VNNI/AVX512-VNNI/AMX); None if unknown."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln for ln in fh if ln.startswith("flags")), "")
    except OSError:
        return None
    return any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _pairs(paths: Sequence[Path], wanted: list[str] | None) -> list[tuple[Path, str]]:
    pairs = []
    for p in paths:
        own = backend_of(p)
        for b in [own, "ort"] if own == "torch" else [own]:  # a checkpoint also runs exported on the fly
            if wanted is None or b in wanted:
                pairs.append((p, b))
    for b in wanted or []:
        if not any(pb == b for _, pb in pairs):
            need = {
                "torch": "a .pt checkpoint",
                "ort": "a .pt or .onnx file",
                "trt": "an .engine (stvm export --trt)",
            }
            raise ConfigError(f"--backend {b} needs {need[b]} among the models given")
    return pairs


def _open(
    path: Path,
    backend: str,
    shape: tuple[int, ...],
    tmp: Path,
    threads: int | None,
    trust_pickle: bool,
    made: dict[Path, Any] | None = None,
) -> Runner:
    """Open ``path`` in ``backend``; a checkpoint timed in ``ort`` is exported first (``made[path]``
    gets that :class:`~stvm_sdk.export.onnx.OnnxExport`)."""
    if backend == "ort" and path.suffix.lower() not in (".onnx",):
        from stvm_sdk.export.onnx import export_onnx, fit_to_model
        from stvm_sdk.export.options import DEFAULT_OPSET
        from stvm_sdk.models import load_model

        model = load_model(path, trust_pickle=trust_pickle)
        hw = (int(shape[-2]), int(shape[-1]))
        # A model whose graph needs a fixed size (UperNet, BEiT, MobileViTV2) is traced at the bench shape.
        dynamic, exporter, opset, _ = fit_to_model(
            model, dynamic=True, exporter="auto", opset=DEFAULT_OPSET, hw=hw
        )
        # With "auto", a model the legacy exporter fails on is exported by the dynamo one at the bench shape.
        exp = export_onnx(
            model, tmp / f"{path.stem}.onnx", dynamic=dynamic, exporter=exporter,  # type: ignore[arg-type]
            opset=opset, example_hw=hw,
        )  # fmt: skip
        if made is not None:
            made[path] = exp
        runner = open_runner(exp.path, "ort", threads=threads)
        runner.path = path
        return runner
    if backend == "trt":
        TrtRunner.check_compatible(path, shape)  # profile and GPU/TensorRT match, before any TensorRT object
    runner = open_runner(path, backend, trust_pickle=trust_pickle, threads=threads)
    _check_static(runner, path, shape)
    return runner


def _check_static(runner: Runner, path: Path, shape: tuple[int, ...]) -> None:
    """A static graph runs at its own size only: another --shape or --batch is one line, not a traceback."""
    fixed = runner.fixed_size
    session = getattr(runner, "session", None)  # ONNX Runtime's
    inputs = session.get_inputs() if session is not None else []
    batch = inputs[0].shape[0] if inputs else None
    if fixed is not None and tuple(fixed) != tuple(shape[-2:]):
        raise ConfigError(
            f"{path.name} is a static graph for {fixed[0]}x{fixed[1]} images: bench it with --shape "
            f"{fixed[0]}x{fixed[1]}"
        )
    if isinstance(batch, int) and batch != shape[0]:
        raise ConfigError(f"{path.name} is a static graph for batch {batch}: bench it with --batch {batch}")


def bench_models(
    paths: Sequence[str | Path],
    *,
    backends: str = "auto",
    batch: int = 1,
    shape: tuple[int, int] = (512, 1024),
    warmup: int = 20,
    iters: int = 200,
    threads: int | None = None,
    trust_pickle: bool = False,
    edge: bool = True,
    seed: int = 0,
) -> BenchReport:
    """Time every applicable (model, backend) pair on the same random images, interleaved.

    Raises:
        ModelLoadError: a missing, unreadable or mismatching file. ConfigError: bad options or a shape
            outside an engine's profile. BackendUnavailableError: an engine without GPU/TensorRT here.
    """
    check_numbers(batch=batch, shape=shape, warmup=warmup, iters=iters, threads=threads)
    files = [Path(p) for p in paths]
    for p in files:
        if not (p.is_file() or p.is_dir()):  # a folder: a library's save_pretrained (torch backend)
            raise ModelLoadError(f"model file not found: {p}")
    full = (batch, 3, shape[0], shape[1])
    pairs = _pairs(files, parse_backends(backends))
    x = np.random.default_rng(seed).random(full, dtype=np.float32)
    import torch

    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)  # eager torch gets the same thread budget as ONNX Runtime
    made: dict[Path, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="stvm-bench-") as tmp,
        _restore_threads(saved_threads),
        no_spinning_after_run(),  # an idle ORT pool must not spin on the cores the next backend is timed on
    ):
        opened = [
            open_and_warm(
                functools.partial(_open, p, b, full, Path(tmp), threads, trust_pickle, made), x, warmup
            )
            for p, b in pairs
        ]
        runners, prepared, memory = (list(t) for t in zip(*opened, strict=True))
        rows = measure_interleaved(
            runners, prepared, iters=iters, batch=batch, names=_names([p for p, _ in pairs]), memory=memory
        )
        for row, r, (p, b) in zip(rows, runners, pairs, strict=True):
            row.shape, row.exporter, row.origin = artifact_facts(r, made.get(p) if b == "ort" else None)
        label_rows(rows)
        est = edge_estimate(runners, full, Path(tmp)) if edge else None
    return BenchReport(rows, full, est, machine_info())  # type: ignore[arg-type]


def _names(paths: Sequence[Path]) -> list[str]:
    """Each file's name, with its folder where two different files share a name (a/model.onnx)."""
    clash = {p.name for p in paths if len({q.resolve() for q in paths if q.name == p.name}) > 1}
    return [f"{p.parent.name}/{p.name}" if p.name in clash else p.name for p in paths]


def artifact_facts(runner: Runner, made: Any = None) -> tuple[str | None, str | None, str | None]:
    """``(shape, exporter, origin)`` of what ``runner`` runs, for its row: ``static HxW`` or ``dynamic``,
    the exporter and opset (from ``made``, the on-the-fly export, or the artifact's sidecar), and whether
    it was exported on the fly; all None for eager torch."""
    if runner.backend == "torch":
        return None, None, None
    meta: dict[str, Any] = getattr(runner, "sidecar", None) or getattr(runner, "meta", None) or {}
    profile = getattr(runner, "profile", None)  # a TensorRT engine's
    shape: str | None = None
    if runner.fixed_size is not None:
        shape = f"static {runner.fixed_size[0]}x{runner.fixed_size[1]}"
    elif profile is not None:
        lo, hi = profile.min, profile.max
        shape = f"static {lo[2]}x{lo[3]}" if lo == hi else f"{lo[2]}x{lo[3]} to {hi[2]}x{hi[3]}"
    elif runner.backend == "ort":
        shape = "dynamic"
    src = {"exporter": made.exporter, "opset": made.opset} if made is not None else meta
    kind, opset = src.get("exporter"), src.get("opset")
    if opset is None and runner.backend == "ort" and Path(str(runner.path)).suffix.lower() == ".onnx":
        opset = _file_opset(Path(str(runner.path)))  # a graph without a sidecar: its opset at least
    named = [f"{kind}" if kind else "", f"opset {opset}" if opset else ""]
    exporter = ", ".join(n for n in named if n) or None
    return shape, exporter, ON_THE_FLY if made is not None else None


def _file_opset(path: Path) -> int | None:
    import onnx

    from stvm_sdk.export.onnx import graph_opset

    try:
        return graph_opset(onnx.load(str(path), load_external_data=False)) or None
    except Exception:  # the session read it; a label is not worth an error
        return None


MAX_BATCH, MAX_CALLS = 1024, 1_000_000


def check_numbers(
    *, batch: int, shape: tuple[int, int], warmup: int, iters: int, threads: int | None
) -> None:
    """Every numeric bench option in the range it needs (one line naming the option otherwise)."""
    from stvm_sdk.boundary.args import check_int
    from stvm_sdk.boundary.frames import max_pixels
    from stvm_sdk.runners.dispatch import MAX_THREADS

    check_int(batch, "--batch", 1, MAX_BATCH)
    check_int(warmup, "--warmup", 0, MAX_CALLS)
    check_int(iters, "--iters", 1, MAX_CALLS)
    check_int(threads, "--threads", 1, MAX_THREADS, hint="leave it out for the default")
    check_int(shape[0], "--shape height", 1)
    check_int(shape[1], "--shape width", 1)
    if batch * shape[0] * shape[1] > max_pixels():
        raise ConfigError(
            f"--batch {batch} x --shape {shape[0]}x{shape[1]} is {batch * shape[0] * shape[1]:,} pixels per "
            f"call, over the {max_pixels():,}-pixel limit: lower --batch or --shape (or set STVM_MAX_PIXELS)"
        )


@contextlib.contextmanager
def _restore_threads(n: int) -> Iterator[None]:
    import torch

    try:
        yield
    finally:
        torch.set_num_threads(n)


def edge_estimate(runners: Sequence[Runner], shape: tuple[int, ...], tmp: Path) -> dict[str, Any] | None:
    """Roofline lower bounds for the first model that has (or can export) an ONNX graph."""
    import onnx

    from stvm_sdk.bench.roofline import edge_estimates, edge_precisions, model_cost

    for r in runners:
        path = r.path
        if r.backend == "ort" and Path(str(path)).suffix != ".onnx":
            path = tmp / f"{Path(path).stem}.onnx"
        if Path(path).suffix != ".onnx" or not Path(path).is_file():
            continue
        cost = model_cost(onnx.load(str(path), load_external_data=False), shape)
        rows = [row for prec in edge_precisions() for row in edge_estimates(cost, prec)]
        return {
            "model": Path(r.path).name,
            "gflops": cost.flops / 1e9,
            "params": cost.params,
            "label": "roofline LOWER BOUND from published peaks, not a measurement",
            "rows": rows,
        }
    return None
