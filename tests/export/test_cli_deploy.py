"""`stvm export` and `stvm predict` through the Typer runner: JSON contract, outputs, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from stvm_sdk.cli.app import app
from typer.testing import CliRunner

from stvm_sdk.boundary.outputs import MARKER

runner = CliRunner()


def _run(*args: str):  # -> click Result
    return runner.invoke(app, [str(a) for a in args])


def _error_line(result) -> str:  # type: ignore[no-untyped-def]
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in result.output
    return lines[-1]


def _final_files(out: Path) -> list[str]:
    """The export's files, without the SDK's folder marker."""
    return sorted(p.name for p in out.iterdir() if p.name != MARKER) if out.exists() else []


def test_export_json_reports_paths_precision_and_verification(checkpoint: Path, tmp_path: Path) -> None:
    res = _run(
        "export",
        checkpoint,
        "--out",
        tmp_path / "out",
        "--shape",
        "64x128",
        "--verify-frames",
        "2",
        "--argmax",
        "--static",
        "--json",
    )
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout.strip().splitlines()[-1])
    assert (
        obj["precision"] == "fp32"
        and Path(obj["onnx_path"]).is_file()
        and Path(obj["sidecar_path"]).is_file()
    )
    assert obj["verification"]["argmax_agreement"] == 100.0 and obj["verification"]["max_abs_diff"] is None
    meta = json.loads(Path(obj["sidecar_path"]).read_text())
    assert meta["output"] == {"name": "classes", "dtype": "uint8", "kind": "classes", "shape": [1, 64, 128]}
    graph = onnx.load(obj["onnx_path"]).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 128]  # --static


def test_export_trt_without_gpu_keeps_onnx_and_says_what_is_missing(checkpoint: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the trt-marked test covers it")
    out = tmp_path / "out"
    res = _run("export", checkpoint, "--out", out, "--shape", "64x128", "--verify-frames", "1", "--trt")
    line = _error_line(res)
    assert "no CUDA GPU" in line and "pip install" in line and "trtexec" in line
    assert "trtexec --onnx=model.onnx --saveEngine=model.engine" in res.output
    assert _final_files(out) == ["model.json", "model.onnx"]


def test_missing_and_corrupt_model_files_are_one_line_errors(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert "model file not found" in _error_line(_run("export", tmp_path / "nope.pt", "--out", out))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    assert "truncated or corrupt archive" in _error_line(_run("export", bad, "--out", out))
    bad_onnx = tmp_path / "bad.onnx"
    bad_onnx.write_bytes(b"\x08\x07garbage")
    assert "cannot load" in _error_line(_run("predict", bad_onnx, "--input", tmp_path, "--out", out))
    assert _final_files(out) == []


def test_calibration_folder_without_readable_images_fails_before_writing(
    checkpoint: Path, tmp_path: Path
) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "f0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    line = _error_line(
        _run("export", checkpoint, "--int8", "--calib", calib, "--out", out, "--shape", "64x128")
    )
    assert "--calib" in line and "no usable frames" in line and "corrupt image header" in line
    assert _final_files(out) == []
    assert "--calib DIR" in _error_line(_run("export", checkpoint, "--int8", "--out", out))


def test_predict_writes_colour_maps_overlays_and_confidence(
    tiny_onnx: Path, frames_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pred"
    res = _run("predict", tiny_onnx, "--input", frames_dir, "--out", out, "--confidence", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["frames"] == 3
    names = sorted(p.name for p in (out / "seq").iterdir())
    assert names[:3] == ["f0_color.png", "f0_conf.png", "f0_overlay.jpg"] and len(names) == 9
    colour = np.asarray(Image.open(out / "seq" / "f0_color.png"))
    from stvm_sdk.export.palette import CITYSCAPES_PALETTE

    assert colour.shape == (64, 128, 3)
    assert {tuple(c) for c in colour.reshape(-1, 3)} <= set(CITYSCAPES_PALETTE)


def test_predict_runs_a_checkpoint_at_another_size(
    checkpoint: Path, frames_dir: Path, tmp_path: Path
) -> None:
    res = _run("predict", checkpoint, "--input", frames_dir, "--out", tmp_path / "p", "--shape", "32x64")
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "p" / "seq" / "f1_overlay.jpg").size == (128, 64)  # frame size, not --shape


def test_predict_video_without_opencv_says_how(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if OpenCV were not installed (CI has it)
    video = tmp_path / "drive.mp4"
    video.write_bytes(b"\x00" * 64)
    line = _error_line(_run("predict", tiny_onnx, "--input", video, "--out", tmp_path / "v"))
    assert "opencv-python-headless" in line and "ffmpeg" in line


def test_export_lists_the_same_flags_in_the_same_order() -> None:
    import typer.main

    command = typer.main.get_command(app).commands["export"]  # type: ignore[attr-defined]
    flags = ["/".join(p.opts + p.secondary_opts) for p in command.params]
    assert flags == [
        "model", "--onnx", "--trt", "--fp16", "--int8", "--calib", "--labels", "--argmax", "--opset",
        "--exporter", "--dynamic/--static", "--bake-normalize/--no-bake-normalize", "--shape", "--batch",
        "--workspace", "--verify-frames", "--min-agreement", "--calib-frames", "--out", "--name",
        "--trust-pickle", "--ignore-out-of-range", "--json",
    ]  # fmt: skip
    defaults = {p.opts[0]: p.default for p in command.params}
    assert (defaults["--opset"], defaults["--shape"], defaults["--workspace"], defaults["--out"]) == (
        17,
        "512x1024",
        4096,
        Path("export"),
    )


@pytest.mark.parametrize("ids", ["trainIds", "labelIds"])
def test_predict_writes_raw_class_ids_and_a_colour_legend(
    ids: str, checkpoint: Path, frames_dir: Path, tmp_path: Path
) -> None:
    from stvm_sdk.export.palette import CITYSCAPES_PALETTE
    from stvm_sdk.synthetic.render.labels import TRAIN_TO_LABEL

    out = tmp_path / "pred"
    res = _run("predict", checkpoint, "--input", frames_dir, "--out", out, "--ids", ids)
    assert res.exit_code == 0, res.output
    assert "colour legend:" in res.stdout and "legend.png" in res.stdout
    raw = np.asarray(Image.open(out / "seq" / f"f0_{ids}.png"))
    colour = np.asarray(Image.open(out / "seq" / "f0_color.png"))
    assert raw.shape == (64, 128) and raw.dtype == np.uint8
    train = raw if ids == "trainIds" else np.vectorize(TRAIN_TO_LABEL.index)(raw)
    assert len(np.unique(train)) > 1  # a map, not a constant
    assert (np.asarray(CITYSCAPES_PALETTE, dtype=np.uint8)[train] == colour).all()  # the same prediction
    legend = Image.open(out / "legend.png")
    assert legend.size[1] == 22 * 19 + 8


def test_predict_label_ids_need_the_19_cityscapes_classes(
    lraspp_checkpoint: Path, frames_dir: Path, tmp_path: Path
) -> None:
    line = _error_line(_run("predict", lraspp_checkpoint, "--input", frames_dir, "--out", tmp_path / "p",
                            "--ids", "labelIds"))  # fmt: skip
    assert "this model has 5 classes: use --ids trainIds" in line and not (tmp_path / "p").exists()
    line = _error_line(_run("predict", lraspp_checkpoint, "--input", frames_dir, "--out", tmp_path / "p",
                            "--ids", "trainid"))  # fmt: skip
    assert line.endswith("did you mean 'trainIds'?")
