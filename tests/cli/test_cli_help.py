"""Help that answers: every option explained with its default, types in words, `--version`,
`stvm config` (a TOML file `--config` reads back), and the nearest choice suggested for a typo."""

from __future__ import annotations

import json
import re
from importlib.metadata import version
from pathlib import Path

import pytest
import typer
from stvm_sdk.cli.app import app
from typer.testing import CliRunner

from stvm_sdk.config import AdaptConfig
from stvm_sdk.methods import resolve

runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def _invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_every_visible_option_of_every_command_has_a_help_text() -> None:
    missing = [
        f"{name} {p.opts[0]}"
        for name, cmd in typer.main.get_command(app).commands.items()  # type: ignore[attr-defined]
        for p in cmd.params
        if not getattr(p, "hidden", False) and not getattr(p, "help", None)
    ]
    assert missing == []


@pytest.mark.parametrize("command", COMMANDS)
def test_help_reads_types_as_words(command: str) -> None:
    res = _invoke(command, "--help")
    assert res.exit_code == 0, res.output
    assert not re.search(r"<(bool|int|str|float|path|list\[\w+\])>|\{\w+\}", res.stdout), res.stdout


def test_adapt_help_shows_the_config_defaults() -> None:
    text = " ".join(_invoke("adapt", "--help").stdout.split())
    cfg = AdaptConfig.__dataclass_fields__["run"].default_factory()  # type: ignore[misc]
    assert "--method TEXT Adaptation method:" in text
    assert "[default: (stvm)]" in text and f"[default: ({cfg.device})]" in text
    assert f"Adaptation steps. [default: ({cfg.iters})]" in text
    assert "Where a .pt model runs: auto, cpu, cuda or cuda:N. [default: auto]" in " ".join(
        _invoke("eval", "--help").stdout.split()
    )


def test_version() -> None:
    res = _invoke("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"stvm {version('stvm_sdk')}"


@pytest.mark.parametrize("method", [None, "tent"])
def test_config_prints_every_field_commented_and_reads_back(method: str | None, tmp_path: Path) -> None:
    res = _invoke("config", *(["--method", method] if method else []))
    assert res.exit_code == 0, res.output
    path = tmp_path / "cfg.toml"
    path.write_text(res.stdout)
    expected, _ = resolve(AdaptConfig() if method is None else AdaptConfig(method=method))
    assert resolve(AdaptConfig.from_file(path))[0] == expected
    lines = res.stdout.splitlines()
    keys = [i for i, line in enumerate(lines) if re.match(r"#? ?\w+ = ", line) and not line.startswith("# ")]
    keys += [i for i, line in enumerate(lines) if line.endswith("(unset by default)")]
    assert len(keys) == _leaf_fields(expected)
    for i in keys:
        assert lines[i - 1].startswith("# ") and not lines[i - 1].endswith("(unset by default)"), lines[i]
    if method == "tent":
        assert "[methods.tent]" in res.stdout
    else:  # STvM's knobs are its own: nested tables of its section
        assert "[methods.stvm.metric]" in res.stdout and "\n[metric]" not in res.stdout


def _leaf_fields(obj: object) -> int:
    """Fields holding a value (not a section) in a config, its sections and its methods' options."""
    import dataclasses

    n = 0
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if f.name == "methods":
            n += sum(_leaf_values(section) for section in value.values())
        else:
            n += _leaf_fields(value) if dataclasses.is_dataclass(value) else 1
    return n


def _leaf_values(section: dict[str, object]) -> int:
    return sum(_leaf_values(v) if isinstance(v, dict) else 1 for v in section.values())  # type: ignore[arg-type]


def test_config_file_from_stvm_config_runs_adapt(
    lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text(_invoke("config", "--method", "adabn").stdout.replace("iters = 2000", "iters = 1"))
    res = _invoke("adapt", "--source", lraspp_checkpoint, "--target", frames[0], "--config", path,
                  "--crop", "32x64", "--out", tmp_path / "run", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["method"] == "adabn"


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["config", "--method", "stvn"], "did you mean 'stvm'?"),
        (["config", "--preset", "stvm_papr"], "did you mean 'stvm_paper'?"),
        (["bench", "MODEL", "--backend", "onnx"], "did you mean 'ort'?"),
        (["export", "MODEL", "--exporter", "dynamoo", "--out", "never_written"], "did you mean 'dynamo'?"),
        (["synth", "--domain", "targt", "--out", "never_written"], "did you mean 'target'?"),
        (["synth", "--split", "vall", "--out", "never_written"], "did you mean 'val'?"),
    ],
)
def test_unknown_choices_suggest_the_nearest(args: list[str], hint: str, lraspp_checkpoint: Path) -> None:
    res = _invoke(*[lraspp_checkpoint if a == "MODEL" else a for a in args])
    assert res.exit_code == 2 and res.stderr.strip().endswith(hint), res.output
    assert not Path("never_written").exists()
