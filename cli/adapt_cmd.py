"""`stvm adapt`: adapt a source model to a folder of target frames."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import typer
from stvm_sdk.cli.common import IGNORE_OUT_OF_RANGE, TRUST_PICKLE, console, print_json, user_errors
from stvm_sdk.cli.options import ConfigOption, with_config_options

from stvm_sdk.config import VALIDATORS, AdaptConfig  # class defaults: no torch imported
from stvm_sdk.methods import method_names  # names only: read from the package folder, no torch

# The flags that set config fields; every other field is KEY=VALUE (cli/options.py).
ADAPT_OPTIONS = (
    ConfigOption(
        "--method", "method", AdaptConfig, f": {' | '.join(method_names())}; `stvm methods` describes them."
    ),
    ConfigOption("--iters", "run.iters", AdaptConfig),
    ConfigOption("--batch-size", "data.batch_size", AdaptConfig),
    ConfigOption("--crop", "data.crop", AdaptConfig, " (HxW, or none for whole frames)."),
    ConfigOption(
        "--resize", "data.resize", AdaptConfig, " (HxW before cropping; none keeps each frame's size)."
    ),
    ConfigOption("--device", "run.device", AdaptConfig),
    ConfigOption("--seed", "run.seed", AdaptConfig),
    ConfigOption(
        "--eval-every", "run.eval_every", AdaptConfig, ". Needs --labels; the curve: figures/curves.png."
    ),
    ConfigOption("--deliver", "run.deliver", AdaptConfig),
    ConfigOption(
        "--validator",
        "run.validator",
        AdaptConfig,
        f": {' | '.join(VALIDATORS)} (docs/method.md, decision 15).",
    ),
    ConfigOption("--holdout", "run.holdout", AdaptConfig),
)
STRICT_EXIT = 3  # `--strict` and the gate did not pass: nothing is wrong with the command itself


@user_errors
@with_config_options(*ADAPT_OPTIONS)
def adapt_command(
    ctx: typer.Context,
    source: Path = typer.Option(
        ...,
        "--source",
        "-s",
        help="Source model: .safetensors or checkpoint dict (.pt), an smp/Hugging Face save_pretrained "
        "folder, TorchScript, or pickle.",
    ),
    target: Path = typer.Option(
        ..., "--target", "-t", help="Folder of unlabeled target frames (any image tree)."
    ),
    labels: Path | None = typer.Option(
        None, "--labels", help="Labels mirroring --target: evaluate before/after (and draw figures)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="TOML/YAML/JSON config (`stvm config` writes one); options override it."
    ),
    preset: str | None = typer.Option(
        None,
        "--preset",
        help="A named config instead of --config: stvm_paper (the paper as first reconstructed).",
    ),
    out: Path | None = typer.Option(None, "--out", help="Run directory (default runs/<method>-<time>)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last checkpoint."
    ),
    num_classes: int | None = typer.Option(
        None, "--num-classes", help="Check the model has this many classes."
    ),
    classifier: str | None = typer.Option(None, "--classifier", help="Module path of the classifier head."),
    trust_pickle: bool = TRUST_PICKLE,
    ignore_out_of_range: bool = IGNORE_OUT_OF_RANGE,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    strict: bool = typer.Option(
        False,
        "--strict",
        help=f"Exit with status {STRICT_EXIT} when the deploy gate does not pass (the delivered model "
        "looks worse than the source model, or collapsed, on the held-out frames); the run is kept.",
    ),
    nproc_per_node: int = typer.Option(
        1,
        "--nproc-per-node",
        min=1,
        help="Data-parallel processes on this machine (one per GPU); --batch-size is per process. "
        "Several machines: run torchrun (README, 'Scaling out').",
    ),
    overrides: dict[str, Any] | None = None,
) -> None:
    """Adapt SOURCE to the frames in TARGET without source data (STvM by default)."""
    from stvm_sdk import adapt
    from stvm_sdk.distributed import LAUNCHED_ENV, PeerLostError, RankZeroError, env_world
    from stvm_sdk.errors import ConfigError
    from stvm_sdk.methods import resolve
    from stvm_sdk.methods.registry import read_options

    rank, world, _ = env_world()  # set by torchrun (or by --nproc-per-node's launcher) in workers
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    if config is not None and preset is not None:
        raise ConfigError("--config and --preset both give a whole config: pass one of them")
    cfg = AdaptConfig.from_file(config) if config else AdaptConfig.preset(preset) if preset else AdaptConfig()
    over = dict(overrides or {})
    # optim.lr reaches the rate the method reads; an optimiser key it never reads is one line
    over = read_options(str(over.get("method") or cfg.method), over)
    cfg, _ = resolve(cfg.with_overrides(over, skip_none=False))  # a bad key: one line, now
    if resume and out is None:
        raise typer.BadParameter("--resume needs --out (the run directory to continue)")
    if nproc_per_node > 1 and world == 1:  # this process launches the workers and waits
        from stvm_sdk.launch import launch

        out = out or Path("runs") / time.strftime(f"{cfg.method}-%Y%m%d-%H%M%S")  # one dir for all
        raise typer.Exit(launch(nproc_per_node, worker_args(ctx, out), out))
    try:
        result = adapt(
            source, target, config=cfg, labels_dir=labels, out_dir=out, resume=resume,
            progress=not json_out, trust_pickle=trust_pickle, num_classes=num_classes, classifier=classifier,
            ignore_out_of_range=ignore_out_of_range,
        )  # fmt: skip
    except (RankZeroError, PeerLostError) as exc:  # reported once: by rank 0, or by our launcher
        if isinstance(exc, RankZeroError) or os.environ.get(LAUNCHED_ENV):
            raise typer.Exit(exc.exit_code) from None
        raise
    if rank != 0:  # every process returns the same networks; rank 0 reports
        return
    if json_out:
        print_json(result.metrics)
    else:
        print_summary(result.metrics, result.model.class_names)
    gate = (result.metrics.get("label_free") or {}).get("gate", "pass")
    if strict and gate != "pass":
        from stvm_sdk.selection import gate_line

        typer.echo(f"error: --strict: gate {gate}: {gate_line(result.metrics['label_free'])}", err=True)
        raise typer.Exit(STRICT_EXIT)


def worker_args(ctx: typer.Context, out: Path) -> list[str]:
    """This command line again for the worker processes, rebuilt from the parsed options."""
    args = [ctx.info_name or "adapt"]
    for param in ctx.command.params:
        value = out if param.name == "out" else ctx.params.get(param.name or "")
        if param.name == "nproc_per_node" or value is None or value is False:
            continue
        if param.param_type_name == "argument":  # KEY=VALUE overrides
            args += [str(v) for v in ctx.params.get(param.name or "") or ()]
            continue
        args += [param.opts[0]] if value is True else [param.opts[0], str(value)]
    return args


def print_summary(metrics: dict[str, Any], class_names: list[str]) -> None:
    """A summary table, plus per-class IoU before/after when labels were given."""
    from rich.table import Table

    table = Table(title="stvm adapt", show_header=False)
    for key in (
        "method",
        "steps",
        "frames_found",
        "frames_used",
        "images_skipped",
        "images_seen",
        "seconds",
        "frames_labelled",
        "images_evaluated",
        "miou_before",
        "miou_after",
        "run_dir",
        "figures_dir",
        "model_path",
        "teacher_path",
        "student_path",
        "torchscript_path",
        "native_path",
    ):
        value = metrics.get(key)
        if value is not None:
            table.add_row(key, format_value(key, value))
    label_free = metrics.get("label_free")
    if label_free:
        table.add_row("delivered_step", f"{label_free['delivered_step']} ({label_free['delivered_because']})")
        gate = label_free["gate"]
        table.add_row(
            "gate", gate if gate == "pass" else f"[bold red]{gate}[/]: {'; '.join(label_free['reasons'])}"
        )
    console.print(table)
    per_class = metrics.get("per_class_iou")
    if per_class:
        t = Table(title="per-class IoU (%)")
        t.add_column("class")
        t.add_column("before", justify="right")
        t.add_column("after", justify="right")
        for name in class_names:
            b, a = per_class["before"].get(name), per_class["after"].get(name)
            t.add_row(name, "-" if b is None else f"{b:.1f}", "-" if a is None else f"{a:.1f}")
        console.print(t)


def format_value(key: str, value: Any) -> str:
    """Human form of a summary value: rounded figures, skipped frames by reason with an example."""
    if key == "images_skipped" and isinstance(value, dict):
        if not value.get("total"):
            return "0"
        reasons = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in value.get("by_reason", {}).items())
        example = (value.get("examples") or [{}])[0]
        return f"{value['total']} ({reasons}; e.g. {example.get('path')}: {example.get('detail')})"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def register(app: typer.Typer) -> None:
    app.command("adapt")(adapt_command)
