"""Kernel benchmark: Triton vs eager PyTorch reference vs torch.compile of the reference, side by side.

On a CUDA GPU: forward / backward / forward+backward median times from CUDA events, achieved bytes/s
against a measured device-to-device copy, peak extra memory, the kernel targets (``TARGETS``), and
(``--step``) one STvM adaptation step with and without the fused kernels, fp32 and bf16 autocast.
Without a GPU: a tiny-shape correctness-only run of the Triton kernels under ``TRITON_INTERPRET=1``;
timings stay empty and the report says why.

Bytes model (same for every implementation, so GB/s compare like for like): every input and output
tensor of the phase touched exactly once (CE fwd: logits, labels, weights; CE bwd and fwd+bwd: those
plus the logits-sized gradient; reliability: embeddings, labels, proxies, both outputs; MOCM: every
input once, every output once).

Usage: ``python benchmarks/kernels.py [--out DIR] [--reps N] [--no-compile] [--step]``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:  # must precede the first Triton dispatch (read when @triton.jit decorates)
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from stvm_sdk.kernels import mocm_blend, proxy_reliability, weighted_cross_entropy  # noqa: E402
from stvm_sdk.kernels.mocm_ref import mocm_blend_ref  # noqa: E402
from stvm_sdk.kernels.reliability_ref import proxy_reliability_ref  # noqa: E402
from stvm_sdk.kernels.weighted_ce_ref import weighted_cross_entropy_ref  # noqa: E402

GPU_SHAPES = {
    "ce": [(8, 19, 512, 1024), (2, 19, 1024, 2048)],
    # reliability at feature resolution (output stride 8) of the same two inputs, D=128
    "proxy_reliability": [(8, 128, 64, 128, 19), (2, 128, 128, 256, 19)],
    "mocm_blend": [(8, 3, 512, 1024, 19), (2, 3, 1024, 2048, 19)],
}
CPU_SHAPES = {
    "ce": [(2, 19, 33, 47)],
    "proxy_reliability": [(2, 128, 9, 13, 19)],
    "mocm_blend": [(2, 3, 33, 47, 19)],
}


@dataclass
class Row:
    op: str
    shape: str
    dtype: str
    phase: str
    impl: str
    median_ms: float | None = None
    gbps: float | None = None
    pct_copy: float | None = None
    peak_extra_mib: float | None = None
    logits_buffers: float | None = None  # weighted CE: peak extra memory / logits size
    speedup_vs_eager: float | None = None
    max_err_vs_eager: float | None = None
    note: str = ""


def _nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def _median_ms(fn: Callable[[Any], Any], setup: Callable[[], Any], reps: int, warmup: int = 3) -> float:
    """Median of ``fn(setup())`` over ``reps``; setup is untimed. CUDA events on GPU, else wall clock."""
    for _ in range(warmup):
        fn(setup())
    times = []
    for _ in range(reps):
        state = setup()
        if HAS_CUDA:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn(state)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(state)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _peak_extra_mib(fn: Callable[[Any], Any], setup: Callable[[], Any]) -> float | None:
    """Memory allocated above what existed after ``setup()``, at the peak of ``fn`` (GPU only)."""
    if not HAS_CUDA:
        return None
    state = setup()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn(state)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_bandwidth_gbps(reps: int) -> float | None:
    """Device-to-device copy of 1 GiB: the practical bandwidth ceiling on this GPU."""
    if not HAS_CUDA:
        return None
    src = torch.empty(2**28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = _median_ms(lambda _: dst.copy_(src), lambda: None, reps)
    return 2 * _nbytes(src) / ms / 1e6


def _impls(
    public: Callable[..., Any], ref: Callable[..., Any], compile_: bool
) -> dict[str, Callable[..., Any]]:
    """Eager first: it is the baseline the others are checked and timed against."""
    impls: dict[str, Callable[..., Any]] = {
        "eager": functools.partial(public, backend="torch"),
        "triton": functools.partial(public, backend="triton"),
    }
    if compile_:
        impls["compile"] = torch.compile(ref, dynamic=False)
    return impls


Phases = dict[str, tuple[Callable[[Any], Any], Callable[[], Any], int]]  # phase -> (timed fn, setup, bytes)


def bench(
    op: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    impls: dict[str, Callable[..., Any]],
    check: Callable[[Callable[..., Any]], list[torch.Tensor]],
    phases: Callable[[Callable[..., Any]], Phases],
    copy_bw: float | None,
) -> list[Row]:
    """Check each implementation against eager, then time each phase of it."""
    rows, base = [], []
    key = (op, str(tuple(shape)), str(dtype).replace("torch.", ""))
    for impl, fn in impls.items():
        try:
            out = check(fn)
        except Exception as exc:  # a compile failure must not hide the other rows
            rows.append(Row(*key, "all", impl, note=f"failed: {type(exc).__name__}: {exc}"[:160]))
            continue
        base = out if impl == "eager" else base
        err = (
            None
            if impl == "eager"
            else max(float((a - b).abs().max()) for a, b in zip(out, base, strict=True))
        )
        for phase, (run, setup, nbytes) in phases(fn).items():
            row = Row(*key, phase, impl, max_err_vs_eager=err)
            if HAS_CUDA or ARGS.cpu_timing:
                row.median_ms = _median_ms(run, setup, ARGS.reps)
                row.gbps = nbytes / row.median_ms / 1e6
                row.pct_copy = None if copy_bw is None else 100 * row.gbps / copy_bw
                row.peak_extra_mib = _peak_extra_mib(run, setup)
            else:
                row.note = "no GPU: correctness only"
            rows.append(row)
    return rows


def bench_ce(
    shape: tuple[int, ...], dtype: torch.dtype, dev: str, compile_: bool, copy_bw: float | None
) -> list[Row]:
    b, k, h, w = shape
    x = torch.randn(b, k, h, w, device=dev).to(dtype).requires_grad_(True)
    labels = torch.randint(0, k, (b, h, w), device=dev)
    labels[torch.rand(b, h, w, device=dev) < 0.1] = 255
    weights = torch.rand(b, h, w, device=dev)
    fwd_bytes = _nbytes(x, labels, weights)
    grad_bytes = fwd_bytes + _nbytes(x)  # + the logits-sized gradient written

    def fresh() -> torch.Tensor:
        x.grad = None
        return x

    def check(fn: Callable[..., Any]) -> list[torch.Tensor]:
        loss = fn(fresh(), labels, weights)
        loss.backward()
        return [loss.detach().float(), x.grad.float()]

    def phases(fn: Callable[..., Any]) -> Phases:
        f = functools.partial(fn, labels=labels, weights=weights)
        return {
            "fwd": (f, fresh, fwd_bytes),  # a training forward: logits require grad
            "bwd": (lambda loss: loss.backward(), lambda: f(fresh()), grad_bytes),
            "fwd+bwd": (lambda xx: f(xx).backward(), fresh, grad_bytes),
        }

    impls = _impls(weighted_cross_entropy, weighted_cross_entropy_ref, compile_)
    rows = bench("weighted_ce", shape, dtype, impls, check, phases, copy_bw)
    for r in rows:
        r.logits_buffers = None if r.peak_extra_mib is None else r.peak_extra_mib * 2**20 / _nbytes(x)
    return rows


def bench_forward_only(
    op: str, shape: tuple[int, ...], dtype: torch.dtype, compile_: bool, copy_bw: float | None
) -> list[Row]:
    """Reliability and MOCM: forward only (no gradients by design)."""
    public, ref, make_args = FORWARD_OPS[op]
    args, out_bytes = make_args(shape, dtype, "cuda" if HAS_CUDA else "cpu")
    tensors = [v for v in args.values() if isinstance(v, torch.Tensor)]
    kwargs = {k: v for k, v in args.items() if not isinstance(v, torch.Tensor)}
    nbytes = _nbytes(*tensors) + out_bytes

    def check(fn: Callable[..., Any]) -> list[torch.Tensor]:
        return [o.float() for o in fn(*tensors, **kwargs)]

    def phases(fn: Callable[..., Any]) -> Phases:
        return {"fwd": (lambda _: fn(*tensors, **kwargs), lambda: None, nbytes)}

    return bench(op, shape, dtype, _impls(public, ref, compile_), check, phases, copy_bw)


def reliability_args(shape: tuple[int, ...], dtype: torch.dtype, dev: str) -> tuple[dict[str, Any], int]:
    b, d, h, w, k = shape
    args = {
        "embeddings": torch.randn(b, d, h, w, device=dev).to(dtype),
        "proxies": torch.randn(k, d, device=dev),
        "labels": torch.randint(0, k, (b, h, w), device=dev),
        "scale": 16.0,
    }
    return args, b * h * w * (4 + 8)  # outputs: fp32 reliability + int64 nearest


def mocm_args(shape: tuple[int, ...], dtype: torch.dtype, dev: str) -> tuple[dict[str, Any], int]:
    b, c, h, w, k = shape
    p = 32
    args = {
        "images": torch.rand(b, c, h, w, device=dev).to(dtype),
        "labels": torch.randint(0, k, (b, h, w), device=dev),
        "weights": torch.rand(b, h, w, device=dev),
        "partner": torch.roll(torch.arange(b, device=dev), -1),
        "class_mask": torch.rand(b, k, device=dev) < 0.5,
        "patch_keep": torch.rand(b, -(-h // p), -(-w // p), device=dev) < 0.7,
        "patch_size": p,
    }
    return args, _nbytes(args["images"], args["labels"], args["weights"]) + b * h * w  # + bool mask


FORWARD_OPS: dict[str, tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]] = {
    "proxy_reliability": (proxy_reliability, proxy_reliability_ref, reliability_args),
    "mocm_blend": (mocm_blend, mocm_blend_ref, mocm_args),
}


def step_rows(reps: int, dev: str, shape: tuple[int, int, int, int]) -> list[Row]:
    """One STvM step (deeplabv3-mbv3) per backend, fp32 and bf16 autocast, built as ``adapt()`` does."""
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    from stvm_sdk.config import AdaptConfig
    from stvm_sdk.methods import get_method
    from stvm_sdk.models import SegModel

    rows = []
    images = torch.rand(*shape, device=dev)
    backends = ("torch", "triton") if HAS_CUDA else ("torch",)
    for backend in backends:
        for amp in (False, True) if HAS_CUDA else (False,):
            net = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=19).to(dev)
            cfg = AdaptConfig().with_overrides(
                {"run.kernel_backend": backend, "run.amp": amp, "methods.stvm.metric.warmup": 0}
            )
            g = torch.Generator().manual_seed(0)
            adapter = get_method("stvm").build(SegModel(net, 19, "classifier"), cfg, g).to(dev)
            counter = iter(range(10**6))

            def run(_: Any, adapter: Any = adapter, counter: Any = counter, g: Any = g) -> Any:
                return adapter.step(images, next(counter), g)

            ms = _median_ms(run, lambda: None, reps, warmup=2)
            row = Row("stvm_step", str(tuple(shape)), "bf16-autocast" if amp else "fp32", "step", backend, ms)
            row.peak_extra_mib = _peak_extra_mib(run, lambda: None)
            rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e3 else f"{v:.0f}"
    return str(v)


TARGETS = [  # (target, op, phase, Row attribute, goal); worst case over shapes and dtypes
    ("weighted CE fwd+bwd >= 3x eager", "weighted_ce", "fwd+bwd", "speedup_vs_eager", 3.0),
    ("weighted CE fwd+bwd >= 70% of copy bandwidth", "weighted_ce", "fwd+bwd", "pct_copy", 70.0),
    ("weighted CE peak extra memory <= 1 logits buffer", "weighted_ce", "fwd+bwd", "logits_buffers", 1.0),
    ("MOCM blend >= 70% of copy bandwidth", "mocm_blend", "fwd", "pct_copy", 70.0),
    ("reliability >= 2x eager", "proxy_reliability", "fwd", "speedup_vs_eager", 2.0),
]


def targets(rows: list[Row]) -> list[tuple[str, str, str]]:
    """Kernel targets: (target, worst value reached, ratio to the target; > 1 means met)."""
    out = []
    for name, op, phase, attr, goal in TARGETS:
        vals = [getattr(r, attr) for r in rows if (r.op, r.phase, r.impl) == (op, phase, "triton")]
        vals = [v for v in vals if v is not None]
        if not vals:
            out.append((name, "—", "n/a (no GPU)"))
            continue
        lower_is_better = attr == "logits_buffers"
        worst = max(vals) if lower_is_better else min(vals)
        out.append((name, _fmt(worst), f"{(goal / worst if lower_is_better else worst / goal):.2f}"))
    return out


def write_report(
    rows: list[Row], tgt: list[tuple[str, str, str]], copy_bw: float | None, out: Path, mode: str
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in fields(Row)]
    with open(out / "kernels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*MACHINE, *names])
        writer.writeheader()
        for r in rows:
            writer.writerow({**MACHINE, **asdict(r)})
    lines = [
        "# Kernel benchmark (`benchmarks/kernels.py`)",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        *[f"- {k}: {v}" for k, v in MACHINE.items()],
        f"- mode: {mode}",
        *([f"- note: {ARGS.note}"] if ARGS.note else []),
        f"- device-to-device copy bandwidth: {_fmt(copy_bw)} GB/s",
        "- bytes model: each input and output tensor of the phase touched once (see the script docstring)",
        "",
        "| " + " | ".join(names) + " |",
        "|" + "---|" * len(names),
        *["| " + " | ".join(_fmt(v) for v in asdict(r).values()) + " |" for r in rows],
        "",
        "## Kernel targets (Triton, worst case over shapes and dtypes)",
        "",
        "| target | reached | ratio to target |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in tgt],
        "",
    ]
    (out / "kernels.md").write_text("\n".join(lines))


def _machine() -> dict[str, str]:
    try:
        import triton

        tv = triton.__version__
    except Exception as exc:  # report, do not fail: the reference rows still mean something
        tv = f"not importable ({type(exc).__name__})"
    dev = torch.cuda.get_device_name() if HAS_CUDA else f"CPU only ({platform.machine()})"
    py, cuda = platform.python_version(), str(torch.version.cuda)
    return {"machine": platform.node(), "device": dev, "torch": torch.__version__, "triton": tv, "python": py,
            "cuda": cuda}  # fmt: skip


def main() -> None:
    torch.manual_seed(0)
    dev = "cuda" if HAS_CUDA else "cpu"
    shapes = GPU_SHAPES if HAS_CUDA else CPU_SHAPES
    dtypes = [torch.float32, torch.bfloat16]
    compile_ = HAS_CUDA and not ARGS.no_compile
    copy_bw = copy_bandwidth_gbps(ARGS.reps)
    rows: list[Row] = []
    for shape in shapes["ce"]:
        for dt in dtypes:
            rows += bench_ce(shape, dt, dev, compile_, copy_bw)
    for op, dts in (("proxy_reliability", dtypes), ("mocm_blend", [torch.float32])):
        for shape in shapes[op]:
            for dt in dts:
                rows += bench_forward_only(op, shape, dt, compile_, copy_bw)
    eager = {(r.op, r.shape, r.dtype, r.phase): r.median_ms for r in rows if r.impl == "eager"}
    for r in rows:
        base = eager.get((r.op, r.shape, r.dtype, r.phase))
        r.speedup_vs_eager = base / r.median_ms if base and r.median_ms else None
    if ARGS.step and (HAS_CUDA or ARGS.cpu_timing):  # a CPU step time says nothing; only wire-check it
        rows += step_rows(ARGS.reps, dev, (8, 3, 512, 1024) if HAS_CUDA else (2, 3, 64, 128))
    mode = "GPU timing (CUDA events)"
    if not HAS_CUDA:
        mode = (
            "no GPU on this machine: Triton interpreter correctness only; timings and torch.compile skipped"
        )
        mode = (
            "CPU self-test of the timing code (wall clock): numbers mean nothing" if ARGS.cpu_timing else mode
        )
    write_report(rows, targets(rows), copy_bw, ARGS.out, mode)
    bad = [r for r in rows if r.note.startswith("failed") or (r.max_err_vs_eager or 0) > 5e-2]
    print((ARGS.out / "kernels.md").read_text())
    if bad:
        sys.exit(f"{len(bad)} rows failed or disagree with the eager reference")


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile column (saves minutes)")
    ap.add_argument("--step", action="store_true", help="also time one whole STvM step per backend")
    ap.add_argument("--note", default="", help="a line for the report header (e.g. why GPU rows are empty)")
    ap.add_argument("--cpu-timing", action="store_true", help="CPU self-test of the timing/report code")
    return ap.parse_args()


ARGS = argparse.Namespace(out=Path("."), reps=1, no_compile=True, step=False, cpu_timing=False, note="")
MACHINE = _machine()

if __name__ == "__main__":
    ARGS = _parse()
    main()
