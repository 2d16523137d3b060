"""An export whose fp16 (or INT8) graph fails its check keeps every artifact that passed, drops only the
failed one, and says in one line what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TinyNet
from stvm_sdk.cli.app import app
from support import TinySegNet
from typer.testing import CliRunner

from stvm_sdk.errors import VerificationError
from stvm_sdk.export.pipeline import ExportOptions, export_model
from stvm_sdk.models import from_module


@pytest.fixture(scope="module")
def near_tied():  # -> SegModel
    """Random weights whose 19 logits share one large term and differ by little: the fp32 graph
    matches eager PyTorch, the fp16 one flips ~20 % of the pixels (as a random-weight fcn does)."""
    torch.manual_seed(0)
    net = TinyNet().eval()
    with torch.no_grad():
        w = net.classifier.weight
        w.copy_(w[:1] * 30 + w * 0.01)
        net.classifier.bias.zero_()
    return from_module(net, classifier="classifier")


def _opts(out: Path, **over: object) -> ExportOptions:
    return ExportOptions(out_dir=out, precisions=("fp16",), shape="64x128", verify_frames=2, **over)  # type: ignore[arg-type]


def _files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def test_failed_fp16_keeps_the_verified_fp32_artifacts_and_says_what_to_do(near_tied, tmp_path: Path) -> None:
    out = tmp_path / "export"
    with pytest.raises(VerificationError) as err:
        export_model(near_tied, _opts(out))
    line = str(err.value)
    assert "\n" not in line
    assert "model_fp16.onnx (fp16) does not match the PyTorch model on 2 frames: argmax agreement" in line
    assert "not written" in line and "model.onnx (fp32)" in line and "--min-agreement" in line
    assert _files(out) == [".stvm_sdk.json", "model.json", "model.onnx"]  # no staging left, no fp16
    meta = json.loads((out / "model.json").read_text())
    assert meta["precision"] == "fp32" and meta["verification"]["passed"] is True


def test_min_agreement_lets_the_user_accept_fp16_flips(near_tied, tmp_path: Path) -> None:
    out = tmp_path / "export"
    report = export_model(near_tied, _opts(out, min_agreement=50.0))
    fp16 = report.artifacts[-1].verification
    assert fp16.precision == "fp16" and fp16.passed and fp16.argmax_agreement < 99.5
    assert {"model.onnx", "model_fp16.onnx", "model_fp16.json"} <= set(_files(out))


def test_cli_export_fp16_failure_is_one_line_and_keeps_fp32(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TinySegNet().eval()  # a pickled module (an importable class), near-tied like the fixture
    with torch.no_grad():
        w = net.classifier[3].weight
        w.copy_(w[:1] * 30 + w * 0.01)
        net.classifier[3].bias.zero_()
    model, out = tmp_path / "near_tied.pt", tmp_path / "export"
    torch.save(net, model)
    args = ["export", str(model), "--trust-pickle", "--fp16", "--shape", "64x128", "--verify-frames", "2"]
    res = CliRunner().invoke(app, [*args, "--out", str(out), "--json"])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2, res.output
    assert lines[-1].startswith("error: model_fp16.onnx (fp16) does not match"), lines
    assert "--min-agreement" in lines[-1] and "Traceback" not in res.output
    assert _files(out) == [".stvm_sdk.json", "model.json", "model.onnx"]
