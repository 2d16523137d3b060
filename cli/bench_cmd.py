"""`stvm bench`: latency/throughput of .pt/.onnx/.engine side by side, plus an edge roofline estimate."""

from __future__ import annotations

from pathlib import Path

import typer
from stvm_sdk.cli.common import TRUST_PICKLE, console, print_json, user_errors


@user_errors
def bench_command(
    models: list[Path] = typer.Argument(
        ...,
        help="Model files: .safetensors/.pt models or save_pretrained folders, .onnx graphs, .engine files.",
    ),
    backend: str = typer.Option("auto", "--backend", help="auto, or a comma list of torch,ort,trt."),
    batch: int = typer.Option(1, "--batch", help="Images per timed call."),
    shape: str = typer.Option("512x1024", "--shape", help="Input HxW."),
    warmup: int = typer.Option(20, "--warmup", help="Untimed calls per backend."),
    iters: int = typer.Option(200, "--iters", help="Timed calls per backend (interleaved)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch and ONNX Runtime."),
    edge: bool = typer.Option(True, "--edge/--no-edge", help="Add the in-vehicle GPU roofline estimate."),
    trust_pickle: bool = TRUST_PICKLE,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Benchmark MODELS on the same images: mean/p50/p90/p99 latency, throughput, peak memory."""

    from stvm_sdk.bench.run import bench_models
    from stvm_sdk.export.tensorrt import parse_profile

    prof = parse_profile(shape, batch)
    if prof.min != prof.max:
        from stvm_sdk.errors import ConfigError

        raise ConfigError("--shape for bench is one HxW (the images are timed at that size)")
    report = bench_models(
        models,
        backends=backend,
        batch=batch,
        shape=(prof.opt[2], prof.opt[3]),
        warmup=warmup,
        iters=iters,
        threads=threads,
        trust_pickle=trust_pickle,
        edge=edge,
    )
    if json_out:
        print_json(report.to_dict())
        return
    _print(report)


def _print(report) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    m = report.machine
    title = f"batch {report.shape[0]} at {report.shape[2]}x{report.shape[3]} on {m['gpu'] or m['cpu']}"
    t = Table(title=title)
    # What tells rows of one backend apart (static/dynamic graph, exporter, exported on the fly), when any.
    variant = any(r.variant for r in report.rows)
    for col in (
        "model",
        "backend",
        "precision",
        *(["graph"] if variant else []),
        "mean ms",
        "p50",
        "p90",
        "p99",
        "img/s",
        "peak MB",
        "x torch",
    ):
        t.add_column(col, justify="right")
    for r in report.rows:
        ratio = "-" if r.ratio_to_torch is None else f"{r.ratio_to_torch:.2f}"
        peak = "-" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.0f}"
        t.add_row(
            r.model,
            r.backend,
            r.precision,
            *([r.variant or "-"] if variant else []),
            f"{r.mean_ms:.1f}",
            f"{r.p50_ms:.1f}",
            f"{r.p90_ms:.1f}",
            f"{r.p99_ms:.1f}",
            f"{r.throughput:.1f}",
            peak,
            ratio,
        )
    console.print(t)
    if report.edge:
        e = report.edge
        et = Table(title=f"Edge estimate for {e['model']} ({e['gflops']:.1f} GFLOP): {e['label']}")
        for col in ("device", "precision", "peak TFLOPS", "GB/s", "lower bound ms", "unfused-memory ms"):
            et.add_column(col, justify="right")
        for r in e["rows"]:
            et.add_row(
                r["device"],
                r["precision"],
                f"{r['peak_tflops']:.1f}",
                f"{r['bandwidth_gbs']:.0f}",
                f"{r['lower_bound_ms']:.2f}",
                f"{r['unfused_memory_ms']:.2f}",
            )
        console.print(et)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
