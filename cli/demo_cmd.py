"""`stvm demo`: the main job on the built-in synthetic benchmark (README's first command)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from stvm_sdk.cli.common import console, print_json, user_errors


@user_errors
def demo_command(
    quick: bool = typer.Option(False, "--quick", help="A ~3-minute version (smaller data, fewer steps)."),
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where the adapted model, export and logs go."),
    cache: Path = typer.Option(
        Path(".stvm_cache"), "--cache", help="Generated data and trained source models."
    ),
    fresh: bool = typer.Option(False, "--fresh", help="Start the adaptation over instead of resuming it."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Generate data, train a source model, adapt it with STvM, evaluate, export and benchmark."""
    from stvm_sdk.demo import DemoSettings, run_demo

    logging.basicConfig(level=logging.INFO if not json_out else logging.WARNING, format="%(message)s")
    settings = DemoSettings.quick() if quick else DemoSettings()
    out = out / ("quick" if quick else "full")
    say = (lambda _m: None) if json_out else (lambda m: console.print(f"[bold]stvm demo[/bold] {m}"))
    summary = run_demo(settings, cache=cache, out_dir=out, progress=not json_out, say=say, fresh=fresh)
    if json_out:
        print_json(summary)
    else:
        _print(summary)


STAGES = {"data_s": "data", "source_model_s": "source model", "adapt_s": "adapt", "eval_s": "eval",
          "export_s": "export", "bench_s": "bench"}  # fmt: skip


def _print(s: dict[str, Any], out: Console | None = None) -> None:
    """The demo summary for a person: rounded figures, one row per benchmarked file, full paths."""
    from rich.table import Table

    out = out or console
    t = Table(title="stvm demo: synthetic source -> target, STvM", show_header=False)
    t.add_column(no_wrap=True)
    t.add_column(overflow="fold")
    t.add_row("mIoU before (source model)", f"{s['miou_before']:.2f} %")
    t.add_row("mIoU after (STvM)", f"{s['miou_after']:.2f} %")
    t.add_row("held-out labelled frames", str(s["val_frames"]))
    lf = s.get("label_free")
    if lf:  # what the run knew without labels: the candidate it delivered and the gate's verdict
        t.add_row("without labels: gate", lf["gate"])
        t.add_row(
            "without labels: delivered",
            f"step {lf['delivered_step']} of {len(lf['snapshots'])} candidates ({lf['validator']} on "
            f"{lf['frames']} held-out frames)",
        )
    v = s["verification"]
    t.add_row(
        "exported ONNX vs PyTorch",
        f"max |logit diff| {v['max_abs_diff']:.2e}, same argmax on {v['argmax_agreement']:.2f} % of pixels",
    )
    for row in s["bench"]:  # each row's label says what tells it from the others (stvm_sdk.bench.timing)
        what = "PyTorch eager" if row["backend"] == "torch" else "ONNX Runtime"
        label = row.get("label") or f"{Path(str(row['model'])).name} ({what}, {row['precision']})"
        t.add_row(f"latency {label}", f"{row['mean_ms']:.1f} ms mean, p90 {row['p90_ms']:.1f} ms")
    stages = ", ".join(f"{STAGES.get(k, k)} {v:.0f} s" for k, v in s["timings_s"].items())
    t.add_row("time", f"{s['seconds']:.0f} s ({stages})")
    out.print(t)
    for key in ("source_model", "run_dir", "figures_dir", "model_path", "onnx_path", "sidecar_path"):
        out.print(f"{key}: {s[key]}", soft_wrap=True, highlight=False)
    pc = Table(title="per-class IoU (%) on held-out target frames")
    for col in ("class", "before", "after"):
        pc.add_column(col, justify="left" if col == "class" else "right")
    for name, b in s["per_class_iou"]["before"].items():
        a = s["per_class_iou"]["after"][name]
        pc.add_row(name, "-" if b is None else f"{b:.1f}", "-" if a is None else f"{a:.1f}")
    out.print(pc)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
