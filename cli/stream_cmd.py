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
from stvm_sdk.cli.options import ConfigOption, with_config_options

from stvm_sdk.config import AdaptConfig  # class defaults: no torch imported
from stvm_sdk.methods import method_names  # names only: no torch
from stvm_sdk.stream.settings import StreamConfig  # torch-free

STREAM_OPTIONS = (
    ConfigOption("--method", "method", AdaptConfig, f": {' | '.join(method_names())}."),
    ConfigOption("--every", "every", StreamConfig, prefix="stream."),
    ConfigOption("--batch-size", "batch_size", StreamConfig, prefix="stream."),
    ConfigOption("--buffer", "buffer", StreamConfig, prefix="stream."),
    ConfigOption("--window", "window", StreamConfig, prefix="stream."),
    ConfigOption("--restore-prob", "restore_prob", StreamConfig, prefix="stream."),
    ConfigOption("--bn-predict", "bn_predict", StreamConfig, prefix="stream."),
    ConfigOption("--bn-momentum", "bn_momentum", StreamConfig, prefix="stream."),
    ConfigOption("--on-collapse", "health.restore", StreamConfig, prefix="stream."),
    ConfigOption("--reset-every", "reset_every", StreamConfig, prefix="stream."),
    ConfigOption("--lr", "optim.lr", AdaptConfig, " (constant on a stream)."),
    ConfigOption("--device", "run.device", AdaptConfig),
    ConfigOption("--seed", "run.seed", AdaptConfig, " (and of the buffer's draws)."),
)


@user_errors
@with_config_options(*STREAM_OPTIONS)
def stream_command(
    source: Path = typer.Option(..., "--source", "-s", help="Source model (as for `stvm adapt`)."),
    input: Path = typer.Option(
        ..., "--input", "-i", help="Frames in stream order: a folder (sorted by path) or a video file."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Stream directory (default runs/stream-<method>-<time>)."
    ),
    size: str | None = typer.Option(
        None, "--size", help="Resize frames to HxW (default: the first frame's)."
    ),
    labels: Path | None = typer.Option(
        None, "--labels", help="Labels mirroring --input: score the online predictions (mIoU per window)."
    ),
    save_pred: bool = typer.Option(False, "--save-pred", help="Write each prediction as a class-id PNG."),
    config: Path | None = typer.Option(None, "--config", help="Method config (TOML/YAML/JSON)."),
    checkpoint_every: int = typer.Option(
        200, "--checkpoint-every", min=1, help="Frames between checkpoints (and model.safetensors updates)."
    ),
    max_frames: int | None = typer.Option(None, "--max-frames", help="Stop after this many frames."),
    resume: bool = typer.Option(False, "--resume", help="Continue the stream in --out from its checkpoint."),
    asynchronous: bool = typer.Option(
        False, "--async", help="Adapt in a worker thread: prediction never waits for a training step."
    ),
    fps: float | None = typer.Option(
        None, "--fps", help="Replay the input at this frame rate: frames not served in time are dropped."
    ),
    num_classes: int | None = typer.Option(
        None, "--num-classes", help="Check the model has this many classes."
    ),
    classifier: str | None = typer.Option(None, "--classifier", help="Module path of the classifier head."),
    trust_pickle: bool = TRUST_PICKLE,
    ignore_out_of_range: bool = IGNORE_OUT_OF_RANGE,
    json_out: bool = JSON_OUT,
    overrides: dict[str, Any] | None = None,
) -> None:
    """Adapt SOURCE online on a stream: predict each frame first, then learn from it, safely.

    KEY=VALUE sets any config field (``optim.lr=1e-4``) or stream setting (``stream.window=30``)."""
    from stvm_sdk.boundary.args import check_int, parse_hw
    from stvm_sdk.config import build_section
    from stvm_sdk.methods.registry import read_options
    from stvm_sdk.stream.online import online_config
    from stvm_sdk.stream.run import adapt_stream

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if resume and out is None:
        raise typer.BadParameter("--resume needs --out (the stream directory to continue)")
    over = dict(overrides or {})
    check_int(max_frames, "--max-frames", 1)
    stream_keys = {k[len("stream.") :]: over.pop(k) for k in list(over) if k.startswith("stream.")}
    cfg = online_config(over.pop("method", None), AdaptConfig.from_file(config) if config else None)
    check_settings_read(cfg.method, stream_keys)
    over = read_options(cfg.method, over, lr_flag="--lr")  # --lr reaches the rate the method reads
    cfg = online_config(None, cfg.with_overrides(over, skip_none=False))
    scfg = build_section(StreamConfig, _nested(stream_keys), "stream.")
    live = None if json_out else _Live()
    try:
        result = adapt_stream(
            source, input, config=cfg, stream_config=scfg, out_dir=out, labels_dir=labels,
            size=parse_hw(size, "--size") if size else None, save_pred=save_pred, resume=resume,
            checkpoint_every=checkpoint_every, max_frames=max_frames, device=cfg.run.device,
            seed=cfg.run.seed, trust_pickle=trust_pickle, num_classes=num_classes, classifier=classifier,
            on_window=live.update if live else None, ignore_out_of_range=ignore_out_of_range,
            asynchronous=asynchronous, fps=fps,
        )  # fmt: skip
    finally:
        if live is not None:
            live.stop()
    if json_out:
        print_json(result.summary)
    else:
        _print_summary(result.summary)


def check_settings_read(method: str, given: dict[str, Any]) -> None:
    """Refuse, in one line, a stream setting given on the command line that ``method`` never reads."""
    from stvm_sdk.errors import ConfigError
    from stvm_sdk.stream.online import unread_settings

    unread = unread_settings(method)
    flags = {o.key: o.flag for o in STREAM_OPTIONS if o.prefix == "stream."}
    for key in given:
        if key in unread:
            name = flags.get(key, f"stream.{key}")
            raise ConfigError(
                f"{name}: --method {method} {unread[key]} on a stream, so it does not read {name}; drop it"
            )


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"health.restore": "off"}`` -> ``{"health": {"restore": "off"}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


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
        "method", "mode", "deliverable", "frames", "adapted_frames", "steps", "frames_skipped",
        "frames_expected", "frames_missing", "fps_target", "frames_dropped", "fps", "predict_ms_p50",
        "predict_ms_p99", "predict_ms_p99_adapting", "latency_ms_p99", "adapt_ms_p50", "adapt_ms_p99",
        "adapt_ms_per_frame", "version", "miou_online", "restores",
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
