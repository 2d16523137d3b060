"""`--exporter auto` falls back to the dynamo exporter (fixed size) where the legacy one fails.

A real smp PSPNet (the legacy exporter cannot translate its adaptive pooling with dynamic sizes) goes
through `stvm export`; the decision itself is tested on a tiny net with the exporters stubbed (fast).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from stvm_sdk.cli.app import app
from torch import nn
from typer.testing import CliRunner

from stvm_sdk.errors import ModelLoadError
from stvm_sdk.export import onnx as onnx_export
from stvm_sdk.export.onnx import ExporterFailed, export_onnx
from stvm_sdk.models import forward_logits, from_module, load_model, normalize

pytestmark = pytest.mark.filterwarnings("ignore:`timm-` encoders are deprecated:DeprecationWarning")
cli = CliRunner()
PSP_GIST = (
    "Unsupported: ONNX export of operator adaptive_avg_pool2d, input size not accessible. Please feel free "
    "to request support or submit a pull request on PyTorch GitHub"
)


def _flat(text: str) -> str:
    return " ".join(text.split())  # the console wraps long lines at its width


@pytest.fixture(scope="module")
def pspnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0.4 M-parameter PSPNet (minimal MobileNetV3 encoder, random weights) saved the smp way."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    net = smp.create_model(
        "PSPNet", encoder_name="timm-mobilenetv3_small_minimal_100", encoder_weights=None, classes=5,
        psp_out_channels=16,
    ).eval()  # fmt: skip
    folder = tmp_path_factory.mktemp("psp") / "PSPNet"
    net.save_pretrained(str(folder))
    return folder


def test_auto_exports_pspnet_with_dynamo_at_a_fixed_size_and_says_so(
    pspnet: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["export", str(pspnet), "--shape", "64x64", "--verify-frames", "2", "--out", str(out)]
    res = cli.invoke(app, args)
    assert res.exit_code == 0, res.output
    said = _flat(res.output)
    assert (
        "the legacy ONNX exporter failed (Unsupported: ONNX export of operator adaptive_avg_pool2d, input "
        "size not accessible): exporting with the dynamo exporter at opset 18 instead; the graph has a "
        "fixed input size 64x64 and batch 1" in said
    )
    assert "exported model.onnx (dynamo, opset 18)" in said
    assert "Torch IR graph" not in capfd.readouterr().out  # torch's C++ dump of the failed trace is dropped
    meta = json.loads((out / "model.json").read_text())
    assert (meta["exporter"], meta["opset"], meta["input"]["shape"]) == ("dynamo", 18, [1, 3, 64, 64])
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    import onnxruntime as ort

    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x})[0]
    seg = load_model(pspnet)
    with torch.no_grad():
        want = forward_logits(seg.module.eval(), normalize(torch.from_numpy(x), seg.mean, seg.std)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_a_named_legacy_exporter_is_kept_and_its_failure_is_one_line(
    pspnet: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    args = ["export", str(pspnet), "--shape", "64x64", "--exporter", "legacy", "--out", str(tmp_path / "o")]
    res = cli.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ONNX export (legacy) failed: Unsupported: ONNX")
    assert lines[0].endswith("try --exporter dynamo --opset 18")
    assert "dynamo exporter at opset" not in lines[0]  # no fallback was tried
    assert "Torch IR graph" not in capfd.readouterr().out


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


def _stub(monkeypatch: pytest.MonkeyPatch, *, dynamo_fails: bool) -> list[tuple[Any, ...]]:
    """Make the legacy exporter fail as on PSPNet; the dynamo one writes a graph (the real legacy
    exporter, which is fast) or fails too. Returns the calls: (kind, opset, dynamic, example_hw)."""
    real = onnx_export._run_exporter
    calls: list[tuple[Any, ...]] = []

    def run(kind: str, module: nn.Module, out: Path, opset: int, dynamic: bool, name: str, hw: Any) -> None:
        calls.append((kind, opset, dynamic, hw))
        if kind == "legacy":
            raise ExporterFailed("legacy", PSP_GIST)
        if dynamo_fails:
            raise ExporterFailed("dynamo", "Cannot export: data-dependent guard. More text")
        real("legacy", module, out, 17, dynamic, name, hw)

    monkeypatch.setattr(onnx_export, "_run_exporter", run)
    return calls


def test_auto_falls_back_once_with_a_fixed_size_and_opset_18(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = _stub(monkeypatch, dynamo_fails=False)
    said: list[str] = []
    model = from_module(_Net(), num_classes=4, classifier="classifier")
    res = export_onnx(model, tmp_path / "m.onnx", example_hw=(32, 48), log=said.append)
    assert calls == [("legacy", 17, True, (32, 48)), ("dynamo", 18, False, (32, 48))]
    assert (res.exporter, res.opset, res.dynamic) == ("dynamo", 18, False) and said == [res.fallback]
    assert said[0].startswith("the legacy ONNX exporter failed (Unsupported: ONNX export of operator")
    assert said[0].endswith("the graph has a fixed input size 32x48 and batch 1")
    facts = json.loads(next(p.value for p in onnx.load(str(res.path)).metadata_props))
    assert facts["input"]["shape"][2:] == [32, 48]  # the graph says it is static


def test_a_named_exporter_never_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _stub(monkeypatch, dynamo_fails=False)
    model = from_module(_Net(), num_classes=4, classifier="classifier")
    with pytest.raises(ExporterFailed, match=r"ONNX export \(legacy\) failed: .*try --exporter dynamo"):
        export_onnx(model, tmp_path / "m.onnx", exporter="legacy")
    assert [c[0] for c in calls] == ["legacy"] and list(tmp_path.iterdir()) == []


def test_both_exporters_failing_is_one_line_naming_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _stub(monkeypatch, dynamo_fails=True)
    model = from_module(_Net(), num_classes=4, classifier="classifier")
    with pytest.raises(ModelLoadError) as err:
        export_onnx(model, tmp_path / "m.onnx", example_hw=(32, 48))
    assert str(err.value) == (
        "ONNX export failed with both exporters: legacy: Unsupported: ONNX export of operator "
        "adaptive_avg_pool2d, input size not accessible; dynamo (opset 18, fixed input size 32x48): "
        "Cannot export: data-dependent guard"
    )
    assert list(tmp_path.iterdir()) == []


def test_stvm_export_falls_back_for_every_row_at_the_verification_size(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from stvm_sdk.export.options import ExportOptions
    from stvm_sdk.export.pipeline import export_model

    calls = _stub(monkeypatch, dynamo_fails=False)
    said: list[str] = []
    model = from_module(_Net(), num_classes=4, classifier="classifier")
    opts = ExportOptions(out_dir=tmp_path / "out", shape="32x48", verify_frames=1, precisions=("fp16",))
    report = export_model(model, opts, log=said.append)
    assert [c[:3] for c in calls] == [("legacy", 17, True), ("dynamo", 18, False), ("dynamo", 18, False)]
    assert [c[3] for c in calls[1:]] == [(32, 48), (32, 48)]  # both rows, at the verification size
    assert sum("exporting with the dynamo exporter at opset 18 instead" in s for s in said) == 1
    for a in report.artifacts:
        meta = json.loads(a.sidecar_path.read_text())
        assert (meta["exporter"], meta["opset"], meta["input"]["shape"]) == ("dynamo", 18, [1, 3, 32, 48])
