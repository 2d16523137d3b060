"""Where every command module is registered (one import and one call per module)."""

from __future__ import annotations

import importlib

import typer

# Modules under cli/ that define `register(app: typer.Typer) -> None`.
COMMAND_MODULES = [
    "stvm_sdk.cli.adapt_cmd",
    "stvm_sdk.cli.methods_cmd",
    "stvm_sdk.cli.eval_cmd",
    "stvm_sdk.cli.train_cmd",
    "stvm_sdk.cli.demo_cmd",
    "stvm_sdk.cli.export_cmd",
    "stvm_sdk.cli.bench_cmd",
    "stvm_sdk.cli.predict_cmd",
    "stvm_sdk.cli.stream_cmd",
    "stvm_sdk.cli.synth_cmd",
    "stvm_sdk.cli.config_cmd",
]


def register_all(app: typer.Typer) -> None:
    """Attach every command module's commands to ``app``."""
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)
