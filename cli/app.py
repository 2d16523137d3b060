"""The `stvm` command: a thin Typer layer over the public API.

Each command lives in its own module, parses options, builds a config and calls one SDK function;
heavy imports (torch, onnx) happen inside the command so `stvm --help` stays fast.
"""

from __future__ import annotations

import typer
from stvm_sdk.cli import commands, help_text

app = typer.Typer(
    name="stvm",
    help="Source-free adaptation of segmentation models (STvM), verified export and benchmarks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"stvm {version('stvm_sdk')}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", help="Print the stvm_sdk version and exit.", callback=_version, is_eager=True
    ),
) -> None:
    """Source-free adaptation of segmentation models (STvM), verified export and benchmarks."""


def main() -> None:
    """Console-script entry point."""
    app()


# Command modules are light (Typer only; torch is imported inside each command), so register now.
commands.register_all(app)
help_text.install()


if __name__ == "__main__":
    main()
