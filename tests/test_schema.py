"""One JSON contract, versioned: every object for programs carries ``"schema"``; a renamed key keeps
its old name for one version with a deprecation note."""

from __future__ import annotations

import json

from stvm_sdk.cli.app import app
from typer.testing import CliRunner

from stvm_sdk.schema import SCHEMA, with_schema


def test_with_schema_puts_the_version_first_and_keeps_old_names_of_renamed_keys() -> None:
    out = with_schema({"frames_used": 6, "steps": 2})
    assert list(out)[0] == "schema" and out["schema"] == SCHEMA == 2
    assert out["images_used"] == 6 and "frames_used" in out["deprecated"]["images_used"]
    assert with_schema(out) == out  # stamping twice changes nothing
    assert "deprecated" not in with_schema({"steps": 2})


def test_every_json_output_carries_the_schema() -> None:
    res = CliRunner().invoke(app, ["methods", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["schema"] == SCHEMA
