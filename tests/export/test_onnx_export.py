"""ONNX export: real onnx.checker and ONNX Runtime sessions against the eager model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from stvm_sdk.errors import ConfigError, ModelLoadError
from stvm_sdk.export.onnx import export_onnx
from stvm_sdk.models import forward_logits, from_module, normalize


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _eager(model, x: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return forward_logits(model.module.eval(), normalize(torch.from_numpy(x), model.mean, model.std))


def test_export_matches_eager_at_other_batch_and_sizes(seg_model, tmp_path: Path) -> None:
    res = export_onnx(seg_model, tmp_path / "m.onnx")
    onnx.checker.check_model(str(res.path), full_check=True)
    assert res.exporter == "legacy" and res.opset == 17
    for shape in ((2, 3, 64, 128), (1, 3, 96, 160)):  # dynamic batch, height and width
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        out, ref = _ort(res.path, x), _eager(seg_model, x)
        assert out.shape == tuple(ref.shape)
        np.testing.assert_allclose(out, ref.numpy(), atol=1e-4, rtol=1e-4)
        assert (out.argmax(1) == ref.argmax(1).numpy()).mean() > 0.999


def test_argmax_graph_outputs_uint8_class_map_equal_to_eager_argmax(tiny_model, tmp_path: Path) -> None:
    res = export_onnx(tiny_model, tmp_path / "m.onnx", argmax=True)
    x = np.random.default_rng(1).random((2, 3, 64, 128), dtype=np.float32)
    out = _ort(res.path, x)
    assert out.dtype == np.uint8 and out.shape == (2, 64, 128)
    assert (out == _eager(tiny_model, x).argmax(1).numpy()).mean() > 0.999
    assert res.op_counts.get("ArgMax") == 1 and res.output_name == "classes"


def test_unbaked_graph_takes_normalised_input(tiny_model, tmp_path: Path) -> None:
    res = export_onnx(tiny_model, tmp_path / "m.onnx", bake_normalize=False)
    x = np.random.default_rng(2).random((1, 3, 64, 128), dtype=np.float32)
    xn = normalize(torch.from_numpy(x), tiny_model.mean, tiny_model.std).numpy()
    np.testing.assert_allclose(_ort(res.path, xn), _eager(tiny_model, x).numpy(), atol=1e-4, rtol=1e-4)


def test_external_data_lives_beside_the_model_and_loads(tiny_model, tmp_path: Path) -> None:
    res = export_onnx(tiny_model, tmp_path / "m.onnx", external_data=True)
    assert res.external_data == tmp_path / "m.onnx.data" and res.external_data.stat().st_size > 4000
    inline = sum(
        len(t.raw_data) for t in onnx.load(str(res.path), load_external_data=False).graph.initializer
    )
    assert inline < 2048  # only tensors under 1 KiB stay inline; the conv weights are in the data file
    x = np.random.default_rng(3).random((1, 3, 64, 128), dtype=np.float32)
    np.testing.assert_allclose(_ort(res.path, x), _eager(tiny_model, x).numpy(), atol=1e-4, rtol=1e-4)
    export_onnx(tiny_model, tmp_path / "m.onnx")  # re-export inline: the stale data file goes
    assert not (tmp_path / "m.onnx.data").exists()


def test_export_does_not_modify_the_callers_model(seg_model, make_seg_model, full_export) -> None:
    # full_export made fp32, fp16 and int8 graphs from seg_model: it must still equal a fresh copy.
    fresh = make_seg_model().module.state_dict()
    after = seg_model.module.state_dict()
    assert all(torch.equal(fresh[k], after[k]) and after[k].dtype == fresh[k].dtype for k in fresh)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():  # stands for any op the exporter cannot translate
            raise RuntimeError("unsupported operator")
        return self.classifier(x)


def test_failed_export_leaves_nothing_under_the_final_name(tmp_path: Path) -> None:
    model = from_module(_Untraceable(), num_classes=4, classifier="classifier")
    with pytest.raises(ModelLoadError, match="ONNX export"):
        # Named: "auto" would retry with the dynamo exporter, which this stand-in does not fail on.
        export_onnx(model, tmp_path / "m.onnx", exporter="legacy")
    assert list(tmp_path.iterdir()) == []  # no model, no staging folder


def test_torchscript_models_are_refused_with_what_to_do(tiny_model, tmp_path: Path) -> None:
    scripted = from_module(torch.jit.script(tiny_model.module), num_classes=19)
    with pytest.raises(ModelLoadError, match="TorchScript models cannot be exported.*checkpoint dict"):
        export_onnx(scripted, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_dynamo_exporter_needs_opset_18(seg_model, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="opset >= 18"):
        export_onnx(seg_model, tmp_path / "m.onnx", exporter="dynamo", opset=17)


@pytest.mark.slow
def test_dynamo_export_matches_eager(seg_model, tmp_path: Path) -> None:
    # The one dynamo export of the session (the slow exporter): dynamic shapes and opset 18.
    res = export_onnx(seg_model, tmp_path / "m.onnx", exporter="dynamo", opset=18)
    x = np.random.default_rng(4).random((2, 3, 96, 160), dtype=np.float32)
    np.testing.assert_allclose(_ort(res.path, x), _eager(seg_model, x).numpy(), atol=1e-4, rtol=1e-4)
