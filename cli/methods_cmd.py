"""`stvm methods`: the registered adaptation methods, what each changes, and its options."""

from __future__ import annotations

import dataclasses

import typer
from stvm_sdk.cli.common import console, print_json, user_errors


@user_errors
def methods_command(
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """List the adaptation methods (--method), in table order: baselines first, STvM last."""
    from rich.table import Table

    from stvm_sdk.methods import ladder

    methods = ladder()
    options = {m.name: dataclasses.asdict(m.Options()) if m.Options else {} for m in methods}
    if json_out:
        print_json({"methods": [
            {"name": m.name, "summary": m.summary, "updates": m.updates, "torchscript": m.eager_only is None,
             "options": options[m.name]}
            for m in methods
        ]})  # fmt: skip
        return
    table = Table(title="Adaptation methods (stvm adapt --method NAME)")
    table.add_column("method", no_wrap=True)
    for col in ("what it does", "what it changes", "TorchScript", "options [methods.NAME]"):
        table.add_column(col)
    for m in methods:
        opts = ", ".join(  # a section of options (STvM's metric, mix, ...) as its name
            f"{k}.*" if isinstance(v, dict) else f"{k}={v}" for k, v in options[m.name].items()
        )
        opts = opts or "-"
        table.add_row(m.name, m.summary, m.updates, "yes" if m.eager_only is None else "no", opts)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("methods")(methods_command)
