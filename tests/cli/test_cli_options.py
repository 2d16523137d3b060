"""Options that mirror config fields are generated from the config dataclasses (one definition of each
default and help text), and any field can be set as KEY=VALUE."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path

import typer
from stvm_sdk.cli.adapt_cmd import ADAPT_OPTIONS
from stvm_sdk.cli.app import app
from stvm_sdk.cli.stream_cmd import STREAM_OPTIONS
from typer.testing import CliRunner

from stvm_sdk.config import AdaptConfig
from stvm_sdk.stream import StreamConfig

CLI = Path(__file__).resolve().parents[2] / "cli"
runner = CliRunner()


def _leaves(cls: type, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_leaves(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = f
    return out


# Flags named like a config field that set something else: the stream checkpoints every N *frames*
# (an adapt_stream argument), not every run.checkpoint_every training steps.
NOT_A_FIELD = {"stream_cmd.py": {"--checkpoint-every"}}


def test_adapt_and_stream_declare_no_hand_written_flag_for_a_config_field() -> None:
    flags = {
        "--" + k.split(".")[-1].replace("_", "-") for k in [*_leaves(AdaptConfig), *_leaves(StreamConfig)]
    }
    for name in ("adapt_cmd.py", "stream_cmd.py"):
        declared = set(re.findall(r'typer\.Option\([^)]*?"(--[\w-]+)"', (CLI / name).read_text(), flags=re.S))
        by_hand = declared & flags - NOT_A_FIELD.get(name, set())
        assert not by_hand, f"{name} declares {by_hand} by hand: add a ConfigOption"


def test_generated_flags_read_default_and_help_from_the_dataclass() -> None:
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for command, specs in (("adapt", ADAPT_OPTIONS), ("stream", STREAM_OPTIONS)):
        params = {p.opts[0]: p for p in commands[command].params}
        for spec in specs:
            p = params[spec.flag]
            assert p.default is None, spec.flag  # absent flag: the config (file) decides
            assert p.show_default == spec.shown_default() and p.help == spec.help(), spec.flag
    assert params["--window"].show_default == str(StreamConfig().window)


def test_key_value_sets_any_config_field(
    lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    res = runner.invoke(app, [
        "adapt", "--source", str(lraspp_checkpoint), "--target", str(frames[0]),
        "--out", str(tmp_path / "run"), "--iters", "1", "--json",
        "optim.lr=1e-4", "methods.stvm.mix.tau=0.6", "data.crop=[32, 64]", "methods.stvm.metric.warmup=0",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["optim"]["lr"] == 1e-4 and cfg["methods"]["stvm"]["mix"]["tau"] == 0.6
    assert cfg["data"]["crop"] == [32, 64] and cfg["run"]["iters"] == 1
    assert json.loads(res.stdout)["schema"] == 2


def test_a_bad_key_value_is_one_line(
    lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    base = [
        "adapt",
        "--source",
        str(lraspp_checkpoint),
        "--target",
        str(frames[0]),
        "--out",
        str(tmp_path / "r"),
    ]
    for extra, line in (
        (["optim.lrr=1"], "unknown config key 'optim.lrr'"),
        (["methods.stvm.mix.tua=1"], "unknown config key(s) methods.stvm.mix.tua; did you mean 'tau'?"),
        (["lr"], "'lr' is not KEY=VALUE"),
        (["mix.tau=0.6"], "config key 'mix.tau' moved to 'methods.stvm.mix.tau'"),
    ):
        res = runner.invoke(app, [*base, *extra])
        assert res.exit_code == 2, res.output
        assert line in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "r").exists()
