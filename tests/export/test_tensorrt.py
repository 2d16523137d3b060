"""TensorRT side: what can be checked without TensorRT (operator table, profiles, trtexec line,
refusing foreign engines), and the real build/run where a GPU and TensorRT exist (`trt` marker).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from stvm_sdk.errors import BackendUnavailableError, ConfigError, ModelLoadError
from stvm_sdk.export.tensorrt import parse_profile, trtexec_command
from stvm_sdk.export.trt_ops import TRT_PARSER_OPS, trt_parser_problems
from stvm_sdk.runners.trt import Profile, TrtRunner


def _graph(nodes: list, inits: list | None = None, opset: int = 17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "g", [x], [y], initializer=inits or [])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_operator_table_accepts_our_ops_and_flags_others() -> None:
    assert {"Conv", "HardSwish", "Resize", "ArgMax", "QuantizeLinear", "DequantizeLinear"} <= TRT_PARSER_OPS
    ok = _graph([helper.make_node("Relu", ["x"], ["y"])])
    assert trt_parser_problems(ok) == []
    bad = _graph([helper.make_node("Unique", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["z"])])
    assert any("Unique" in p for p in trt_parser_problems(bad))
    assert any(
        "opset 25" in p
        for p in trt_parser_problems(_graph([helper.make_node("Relu", ["x"], ["y"])], opset=25))
    )


def test_nonzero_zero_points_and_antialiased_resize_are_flagged() -> None:
    s, zp = (
        helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
        helper.make_tensor("zp", TensorProto.UINT8, [], [128]),
    )
    q = _graph([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"])], [s, zp])
    assert any("zero point must be 0" in p for p in trt_parser_problems(q))
    scales = helper.make_tensor("sc", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    r = _graph(
        [helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear", antialias=1)], [scales], opset=18
    )
    assert any("antialias" in p for p in trt_parser_problems(r))


def test_profile_specs_parse_and_bad_ones_say_how() -> None:
    assert parse_profile("512x1024") == Profile((1, 3, 512, 1024), (1, 3, 512, 1024), (1, 3, 512, 1024))
    p = parse_profile("256x512:512x1024:4x1024x2048", batch=2)
    assert p.min == (2, 3, 256, 512) and p.max == (4, 3, 1024, 2048) and p.contains((3, 3, 600, 900))
    assert not p.contains((1, 3, 512, 1024))  # batch below the minimum
    for bad in ("512", "1024x512:512x1024:2048x4096", "axb", "1:2"):
        with pytest.raises(ConfigError, match="--shape"):
            parse_profile(bad)


def test_trtexec_command_reproduces_profile_precision_and_cache() -> None:
    cmd = trtexec_command(
        Path("out/m_int8.onnx"),
        Path("out/m_int8.engine"),
        parse_profile("256x512:512x1024:1024x2048"),
        "int8",
        workspace_mib=2048,
    )
    assert cmd.split() == [
        "trtexec", "--onnx=m_int8.onnx", "--saveEngine=m_int8.engine", "--minShapes=image:1x3x256x512",
        "--optShapes=image:1x3x512x1024", "--maxShapes=image:1x3x1024x2048", "--memPoolSize=workspace:2048M",
        "--timingCacheFile=m_int8.timing.cache", "--int8", "--fp16",
    ]  # fmt: skip


def _foreign_engine(tmp_path: Path, with_sidecar: bool = True) -> Path:
    engine = tmp_path / "model_fp16.engine"
    engine.write_bytes(b"\x00serialized-elsewhere\x00" * 8)
    if with_sidecar:
        meta = {
            "tensorrt": "8.6.2",
            "gpu": "Orin",
            "compute_capability": "8.7",
            "precision": "fp16",
            "profile": parse_profile("512x1024").to_dict(),
        }
        (tmp_path / "model_fp16.engine.json").write_text(json.dumps(meta))
    return engine


def test_engine_built_elsewhere_is_refused_with_what_it_needs(tmp_path: Path) -> None:
    engine = _foreign_engine(tmp_path)
    import torch

    expected = (
        BackendUnavailableError
        if not torch.cuda.is_available()
        else (ModelLoadError, BackendUnavailableError)
    )
    with pytest.raises(expected, match=r"built for TensorRT 8\.6\.2 on Orin \(sm 8\.7\)"):  # type: ignore[arg-type]
        TrtRunner.check_compatible(engine)
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ModelLoadError, match="no engine sidecar"):
        TrtRunner.check_compatible(_foreign_engine(bare, with_sidecar=False))


def test_shape_outside_the_profile_is_refused_before_touching_tensorrt(tmp_path: Path) -> None:
    engine = _foreign_engine(tmp_path)
    with pytest.raises(ConfigError, match=r"input 1x3x720x1280 is outside model_fp16\.engine's profile"):
        TrtRunner.check_compatible(engine, (1, 3, 720, 1280))


def _trt_ready() -> bool:
    import torch

    if not torch.cuda.is_available():  # never import TensorRT without a GPU (docs/environment.md)
        return False
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.trt
@pytest.mark.skipif(not _trt_ready(), reason="needs a CUDA GPU and TensorRT")
def test_fp16_engine_builds_runs_and_agrees_with_onnx(tmp_path: Path, tiny_model, tiny_onnx: Path) -> None:
    from stvm_sdk.export.pipeline import ExportOptions, export_model
    from stvm_sdk.runners.dispatch import open_runner

    report = export_model(
        tiny_model,
        ExportOptions(
            out_dir=tmp_path, precisions=("fp16",), trt=True, shape="64x128:64x128:128x256", verify_frames=2
        ),
    )
    engine = report.artifacts[-1].engine_path
    assert engine is not None and json.loads((tmp_path / "model_fp16.engine.json").read_text())["gpu"]
    x = np.random.default_rng(0).random((1, 3, 96, 160), dtype=np.float32)
    out_trt, out_ort = open_runner(engine)(x), open_runner(tiny_onnx, device="cpu")(x)
    assert (out_trt.argmax(1) == out_ort.argmax(1)).mean() > 0.995
    with pytest.raises(ConfigError, match="outside"):
        open_runner(engine)(np.zeros((1, 3, 256, 512), np.float32))
