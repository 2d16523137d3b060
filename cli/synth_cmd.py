"""`stvm synth`: write frames of the synthetic driving-scene benchmark in Cityscapes layout."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from stvm_sdk.cli.common import console, print_json, user_errors


@user_errors
def synth_command(
    domain: str = typer.Option(
        "target", "--domain", help="Which domain to render: source | target | fog | night."
    ),
    n: int = typer.Option(500, "--n", min=1, help="Number of frames."),
    out: Path = typer.Option(..., "--out", help="Dataset root; leftImg8bit/ and gtFine/ are created in it."),
    seed: int = typer.Option(
        0, "--seed", help="Base seed; frames are determined by (seed, domain, split, index)."
    ),
    size: str = typer.Option("256x512", "--size", help="Frame size HxW."),
    split: str = typer.Option(
        "train", "--split", help="Split folder: train | val | test; splits never share frames."
    ),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Processes (default: all cores)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Render N labelled street scenes of DOMAIN (source | target | fog | night) into OUT."""
    from stvm_sdk.boundary.args import parse_hw
    from stvm_sdk.errors import ConfigError
    from stvm_sdk.synthetic.dataset import city_name, generate

    hw = parse_hw(size, "--size")
    if hw is None:
        raise ConfigError("--size must look like 256x512 (height x width), got 'none'")
    start = time.perf_counter()
    root = generate(out, domain, n, seed=seed, size=hw, split=split, workers=workers)
    seconds = time.perf_counter() - start
    summary = {
        "out": str(root),
        "domain": domain,
        "split": split,
        "n": n,
        "size": list(hw),
        "seed": seed,
        "images": str(root / "leftImg8bit" / split / city_name(domain)),
        "labels": str(root / "gtFine" / split / city_name(domain)),
        "seconds": round(seconds, 2),
    }
    if json_out:
        print_json(summary)
        return
    console.print(f"wrote {n} {domain} frames ({hw[0]}x{hw[1]}) in {seconds:.1f}s")
    console.print(f"  images: {summary['images']}")
    console.print(f"  labels: {summary['labels']} (_gtFine_labelIds.png, _gtFine_labelTrainIds.png)")


def register(app: typer.Typer) -> None:
    app.command("synth")(synth_command)
