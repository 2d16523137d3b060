"""`stvm stream`: adapt online on a camera stream (a folder of frames in order, or a video)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer
from stvm_sdk.cli.common import (
    IGNORE_OUT_OF_RANGE,
    JSON_OUT,
    TRUST_PICKLE,
    err_console,
    print_json,
    user_errors,
)

from stvm_sdk.methods import method_names  # names only: no torch

ONLINE_HELP = "source_only | adabn | tent | mean_teacher | stvm, or any other registered method"


@user_errors
def stream_command(
    source: Path = typer.Option(..., "--source", "-s", help="Source model (as for `stvm adapt`)."),
    input: Path = typer.Option(
        ..., "--input", "-i", help="Frames in stream order: a folder (sorted by path) or a video file."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Stream directory (default runs/stream-<method>-<time>)."
    ),
    method: str = typer.Option("stvm", "--method", help=f"Method: {ONLINE_HELP}."),
    every: int = typer.Option(1, "--every", min=1, help="Adapt on every N-th frame (all are predicted)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Frames per adaptation step."),
    buffer: int = typer.Option(16, "--buffer", min=1, help="Ring buffer of recent frames (batches, MOCM)."),
    window: int = typer.Option(20, "--window", min=1, help="Frames per health window / metrics line."),
    restore_prob: float = typer.Option(
        0.01, "--restore-prob", help="Share of trained weights reset to the source's per step (0: off)."
    ),
    bn_predict: str = typer.Option(
        "frame", "--bn-predict", help="BatchNorm when predicting: frame (its own statistics) | running."
    ),
    bn_momentum: float = typer.Option(
        0.1, "--bn-momentum", help="Running BatchNorm statistics follow the stream at this momentum."
    ),
    on_collapse: str = typer.Option(
        "last_healthy",
        "--on-collapse",
        help="What a collapse restores: last_healthy | source | off (log the verdict, restore nothing).",
    ),
    size: str | None = typer.Option(
        None, "--size", help="Resize frames to HxW (default: the first frame's)."
    ),
    labels: Path | None = typer.Option(
        None, "--labels", help="Labels mirroring --input: score the online predictions (mIoU per window)."
    ),
    save_pred: bool = typer.Option(False, "--save-pred", help="Write each prediction as a class-id PNG."),
    config: Path | None = typer.Option(None, "--config", help="Method config (TOML/YAML/JSON)."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (constant on a stream)."),
    checkpoint_every: int = typer.Option(
        200, "--checkpoint-every", min=1, help="Frames between checkpoints (and model.safetensors updates)."
    ),
    max_frames: int | None = typer.Option(None, "--max-frames", help="Stop after this many frames."),
    resume: bool = typer.Option(False, "--resume", help="Continue the stream in --out from its checkpoint."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    seed: int = typer.Option(0, "--seed", help="Seed of buffer draws and augmentation."),
    num_classes: int | None = typer.Option(
        None, "--num-classes", help="Check the model has this many classes."
    ),
    classifier: str | None = typer.Option(None, "--classifier", help="Module path of the classifier head."),
    trust_pickle: bool = TRUST_PICKLE,
    ignore_out_of_range: bool = IGNORE_OUT_OF_RANGE,
    json_out: bool = JSON_OUT,
) -> None:
    """Adapt SOURCE online on a stream: predict each frame first, then learn from it, safely."""
    from stvm_sdk.boundary.args import check_choice, parse_hw
    from stvm_sdk.config import AdaptConfig
    from stvm_sdk.stream import HealthRule, StreamConfig
    from stvm_sdk.stream.online import online_config
    from stvm_sdk.stream.run import adapt_stream

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_choice(method, method_names(), "--method")
    check_choice(on_collapse, ("last_healthy", "source", "off"), "--on-collapse")
    check_choice(bn_predict, ("frame", "running"), "--bn-predict")
    if resume and out is None:
        raise typer.BadParameter("--resume needs --out (the stream directory to continue)")
    cfg = online_config(method, AdaptConfig.from_file(config) if config else None)
    if lr is not None:
        cfg = cfg.with_overrides({"optim.lr": lr})
    scfg = StreamConfig(
        every=every, batch_size=batch_size, buffer=buffer, window=window, restore_prob=restore_prob,
        bn_predict=bn_predict, bn_momentum=bn_momentum, health=HealthRule(restore=on_collapse),
    )  # fmt: skip
    live = None if json_out else _Live()
    try:
        result = adapt_stream(
            source, input, method=method, config=cfg, stream_config=scfg, out_dir=out, labels_dir=labels,
            size=parse_hw(size, "--size") if size else None, save_pred=save_pred, resume=resume,
            checkpoint_every=checkpoint_every, max_frames=max_frames, device=device, seed=seed,
            trust_pickle=trust_pickle, num_classes=num_classes, classifier=classifier,
            on_window=live.update if live else None, ignore_out_of_range=ignore_out_of_range,
        )  # fmt: skip
    finally:
        if live is not None:
            live.stop()
    if json_out:
        print_json(result.summary)
    else:
        _print_summary(result.summary)


class _Live:
    """A Rich live table on stderr: the latest windows' health and costs."""

    COLUMNS = (
        ("frame", "step"), ("fps", "fps"), ("predict ms", "predict_ms_p50"), ("adapt ms", "adapt_ms_p50"),
        ("conf", "confidence"), ("reliab.", "reliability"), ("agree", "agreement"), ("JS", "hist_js"),
        ("classes", "classes"), ("mIoU", "miou_online"), ("health", None),
    )  # fmt: skip

    def __init__(self, rows: int = 12) -> None:
        self.rows: list[dict[str, Any]] = []
        self.keep = rows
        self.live: Any = None  # started by the first window: an error before it prints one line only

    def update(self, record: dict[str, Any]) -> None:
        from rich.live import Live

        self.rows = [*self.rows, record][-self.keep :]
        if self.live is None:
            self.live = Live(self._table(), console=err_console, refresh_per_second=4)
            self.live.start()
        self.live.update(self._table())

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title="stvm stream", title_justify="left")
        for name, _ in self.COLUMNS:
            table.add_column(name, justify="right")
        for r in self.rows:
            cells = [_fmt(r.get(key)) for _, key in self.COLUMNS if key is not None]
            if r.get("restored_to"):
                health = f"[red]restored {r.get('restored_to')}[/red]"
            else:
                health = "[green]ok[/green]" if r.get("healthy") else "[yellow]unhealthy[/yellow]"
            table.add_row(*cells, health)
        return table


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table
    from stvm_sdk.cli.common import console

    table = Table(title="stvm stream", show_header=False)
    for key in (
        "method", "deliverable", "frames", "adapted_frames", "frames_skipped", "fps", "predict_ms_p50",
        "predict_ms_p99", "adapt_ms_p50", "adapt_ms_p99", "adapt_ms_per_frame", "miou_online", "restores",
        "memory_mib", "seconds", "run_dir", "model_path", "metrics_path",
    ):  # fmt: skip
        value = summary.get(key)
        if value is None:
            continue
        if key == "restores":
            value = f"{len(value)}" + (
                f" (last at frame {value[-1]['frame']}: {value[-1]['to']})" if value else ""
            )
        elif key == "memory_mib":
            value = ", ".join(f"{k} {v:.1f}" for k, v in value.items()) + " MiB"
        table.add_row(key, _fmt(value))
    console.print(table)
    console.print(f"export the current model at any time: stvm export {summary.get('model_path')}")


def register(app: typer.Typer) -> None:
    app.command("stream")(stream_command)
