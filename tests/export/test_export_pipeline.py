"""`export_model`: verification figures, sidecars, fp16 and INT8 graphs, failure modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from stvm_sdk.boundary.fingerprint import sha256
from stvm_sdk.errors import VerificationError
from stvm_sdk.export.frames import VerifyFrame, load_frames
from stvm_sdk.export.quantize import quantize_int8
from stvm_sdk.export.trt_ops import check_file
from stvm_sdk.export.verify import require_pass, verify_onnx


def test_every_precision_passes_its_checks_on_labelled_frames(full_export) -> None:
    by = {a.precision: a for a in full_export.artifacts}
    assert list(by) == ["fp32", "fp16", "int8"]
    fp32, fp16, int8 = by["fp32"].verification, by["fp16"].verification, by["int8"].verification
    assert fp32.max_abs_diff is not None and fp32.max_abs_diff < 1e-3 and fp32.argmax_agreement > 99.9
    assert fp16.argmax_agreement >= 99.5
    assert int8.miou_delta is not None and int8.miou_delta > -1.0
    assert all(v.passed for v in (fp32, fp16, int8)) and fp32.miou_eager is not None


def test_sidecar_holds_contract_hash_tools_and_figures(full_export) -> None:
    a = full_export.artifacts[0]
    meta = json.loads(a.sidecar_path.read_text())
    assert a.sidecar_path.name == "model.json" and meta["sha256"] == sha256(a.onnx_path)
    assert len(meta["classes"]) == 19 and meta["palette"][0] == [128, 64, 128]
    assert meta["input"]["size"] == [64, 128] and meta["input"]["normalization_baked"] is True
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["opset"] == 17 and meta["precision"] == "fp32"
    assert {"torch", "onnx", "onnxruntime"} <= set(meta["tools"])
    assert meta["verification"]["argmax_agreement"] == a.verification.argmax_agreement
    assert meta["tensorrt_parser_check"]["ok"] and "TensorRT 10.15" in meta["tensorrt_parser_check"]["source"]
    assert meta["trtexec"].startswith("trtexec --onnx=model.onnx --saveEngine=model.engine")


def test_fp16_graph_has_half_weights_and_float32_io(full_export) -> None:
    proto = onnx.load(str(full_export.artifacts[1].onnx_path))
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    kinds = {t.data_type for t in proto.graph.initializer if t.name in conv_weights}
    assert kinds == {onnx.TensorProto.FLOAT16}
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_int8_graph_is_symmetric_qdq_that_tensorrt_parses(full_export) -> None:
    a = full_export.artifacts[2]
    proto = onnx.load(str(a.onnx_path))
    q = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert len(q) > 10 and not any(n.op_type.startswith("QLinear") for n in proto.graph.node)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    zero_points = [inits[n.input[2]] for n in q if len(n.input) > 2]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    assert check_file(str(a.onnx_path)) == []
    meta = json.loads(a.sidecar_path.read_text())
    assert meta["calibration"]["method"] == "minmax" and meta["calibration"]["score"] == "mIoU"


def test_calibration_method_is_the_best_scoring_one(tmp_path: Path, tiny_onnx: Path, capsys) -> None:
    inputs = [np.random.default_rng(i).random((1, 3, 64, 128), dtype=np.float32) for i in range(2)]
    prefer = {"minmax": 1.0, "percentile": 3.0, "entropy": 2.0}
    res = quantize_int8(tiny_onnx, tmp_path / "q.onnx", inputs, lambda p: prefer[p.stem])
    assert res.method == "percentile" and res.scores == prefer
    assert (tmp_path / "q.onnx").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx"]
    assert capsys.readouterr().out == ""  # ORT's calibrator chatter must not reach stdout (--json)


def test_verification_fails_with_numbers_when_the_graph_differs(tiny_model, tiny_onnx: Path) -> None:
    other = tiny_model.clone()
    with torch.no_grad():
        other.module.classifier.weight.mul_(-1)  # the graph now disagrees with this "model"
    frames = [VerifyFrame(torch.rand(3, 64, 128, generator=torch.Generator().manual_seed(0)))]
    v = verify_onnx(tiny_onnx, other, frames, precision="fp32")
    assert not v.passed and v.argmax_agreement < 50
    with pytest.raises(VerificationError, match=r"argmax agreement \d+\.\d+% < 99.9%"):
        require_pass(v, tiny_onnx)


def test_verification_frames_are_generated_and_labelled_without_a_folder() -> None:
    frames, desc = load_frames(None, size=(32, 64), n=2)
    assert len(frames) == 2 and all(f.label is not None and f.image.shape == (3, 32, 64) for f in frames)
    assert "generated" in desc


def test_int8_calibration_is_chosen_on_calibration_frames_and_verified_on_the_others(
    full_export, seg_model, target_root: Path
) -> None:
    # full_export asks for 3 verification + 3 calibration frames from a 6-frame folder: every
    # second frame verifies, the others calibrate.
    frames, _ = load_frames(target_root, size=(64, 128), n=6, num_classes=19)
    verify, calib = frames[0::2], frames[1::2]
    int8 = full_export.artifacts[2]
    on_calib = verify_onnx(int8.onnx_path, seg_model, calib, precision="int8")
    on_verify = verify_onnx(int8.onnx_path, seg_model, verify, precision="int8")
    assert full_export.calibration.scores == {"minmax": pytest.approx(on_calib.miou_onnx)}
    assert int8.verification.miou_onnx == pytest.approx(on_verify.miou_onnx)
    assert on_calib.miou_onnx != pytest.approx(on_verify.miou_onnx)  # the two sets tell apart
    meta = json.loads(int8.sidecar_path.read_text())["calibration"]
    assert meta["frames"] == 3 and meta["disjoint_from_verification"] is True
    assert full_export.to_dict()["calibration"]["disjoint_from_verification"] is True


def test_too_few_frames_to_split_is_said_in_a_log_line_and_the_report(
    tiny_model, frames_dir: Path, tmp_path: Path
) -> None:
    from stvm_sdk.export.pipeline import ExportOptions, export_model

    lines: list[str] = []
    opts = ExportOptions(
        out_dir=tmp_path / "out", precisions=("int8",), calib=frames_dir, shape="64x128",
        verify_frames=3, calib_methods=("minmax",), min_agreement=50.0,  # random weights: near-tied pixels
    )  # fmt: skip
    report = export_model(tiny_model, opts, log=lines.append)
    assert any(
        "too few to split" in ln and "int8 is calibrated and verified on the same" in ln for ln in lines
    )
    assert report.to_dict()["calibration"]["disjoint_from_verification"] is False
    meta = json.loads(report.artifacts[-1].sidecar_path.read_text())["calibration"]
    assert meta["disjoint_from_verification"] is False and meta["frames"] == 3
