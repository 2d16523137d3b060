"""`stvm config`: the full default configuration as the TOML file `stvm adapt --config` reads."""

from __future__ import annotations

import typer
from stvm_sdk.cli.common import user_errors


@user_errors
def config_command(
    method: str | None = typer.Option(
        None,
        "--method",
        help="Write this method's config (with its [methods.NAME] section).",
        show_default="stvm",
    ),
    preset: str | None = typer.Option(None, "--preset", help="Start from a named config (stvm_paper)."),
) -> None:
    """Print the full default config as TOML, one comment per field: stvm config > cfg.toml, edit, then
    stvm adapt --config cfg.toml."""
    from stvm_sdk.config import AdaptConfig
    from stvm_sdk.config_toml import config_to_toml

    cfg = AdaptConfig.preset(preset) if preset else AdaptConfig()
    if method is not None:
        cfg = cfg.with_overrides({"method": method})
    typer.echo(config_to_toml(cfg), nl=False)


def register(app: typer.Typer) -> None:
    app.command("config")(config_command)
