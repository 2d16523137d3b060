"""No silent surprises: labels that match nothing, a crop larger than the frames, how many frames got
labels, rounded human output, and progress lines on stderr when it is not a terminal."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from stvm_sdk.cli.app import app
from typer.testing import CliRunner

runner = CliRunner()
FAST = ["--iters", "2", "--batch-size", "2", "--crop", "32x64", "--seed", "0"]


def _invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_labels_matching_no_frame_is_an_error_naming_a_frame_and_the_names_looked_for(
    lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    other = tmp_path / "other_labels"
    other.mkdir()
    (other / "unrelated.png").write_bytes((frames[1] / "seq0" / "f0.png").read_bytes())
    res = _invoke("adapt", "--source", lraspp_checkpoint, "--target", frames[0], "--labels", other,
                  "--out", tmp_path / "run", *FAST)  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert f"no frame in {frames[0]} has a label in {other}" in lines[0]
    assert "for seq0/f0.png it looked for seq0/f0.png" in lines[0]
    assert not (tmp_path / "run").exists()


def test_adapt_says_how_many_frames_got_labels(
    lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (frames[1] / "seq1" / "f1.png").unlink()  # 5 of the 6 frames keep a label
    caplog.set_level(logging.INFO, logger="stvm_sdk")
    res = _invoke("adapt", "--source", lraspp_checkpoint, "--target", frames[0], "--labels", frames[1],
                  "--out", tmp_path / "run", "--method", "adabn", "--json", *FAST)  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (
        summary["frames_labelled"] == 5 and summary["images_evaluated"] == 5 and summary["frames_used"] == 6
    )
    assert f"labels: 5 of 6 frames have a label in {frames[1]}" in caplog.text


def test_a_crop_larger_than_the_frames_says_it_pads(
    lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    args = ["adapt", "--source", lraspp_checkpoint, "--target", frames[0], "--out", tmp_path / "run",
            "--json", *FAST]  # fmt: skip
    args[args.index("--crop") + 1] = "512x1024"  # the frames are 32x64
    res = _invoke(*args)
    assert res.exit_code == 0, res.output
    assert "6 of 6 frames (e.g. seq0/f0.png, 32x64) are smaller than the crop 512x1024: they are padded" in (
        caplog.text
    )


def test_human_adapt_summary_is_rounded_and_names_what_it_counts(
    lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STVM_PROGRESS_EVERY", "0")  # a progress line at every step
    res = _invoke("adapt", "--source", lraspp_checkpoint, "--target", frames[0], "--labels", frames[1],
                  "--out", tmp_path / "run", "--iters", "3", "--batch-size", "2",
                  "--crop", "32x64")  # fmt: skip
    assert res.exit_code == 0, res.output
    for field in (
        "frames_found",
        "frames_used",
        "images_seen",
        "frames_labelled",
        "miou_before",
        "miou_after",
    ):
        assert field in res.stdout, field
    assert "images_used" not in res.stdout
    assert not re.search(r"\d\.\d{3,}", res.stdout), res.stdout  # no unrounded figure
    # stderr is not a terminal here: plain progress lines with step, loss, ETA instead of a bar
    steps = [line for line in res.stderr.splitlines() if line.startswith("stvm: step ")]
    assert [s.split()[2] for s in steps] == ["1/3", "2/3", "3/3"], res.stderr
    assert "ETA" in steps[0] and "elapsed" in steps[-1]
    assert "loss" in steps[-1] and "images/s" in steps[-1]  # the logged record reaches the line
    # pictures: a panel per frame (image | ground truth | before | after | reliability) and the curves
    figures = tmp_path / "run" / "figures"
    assert "figures_dir" in res.stdout
    panels = sorted(p.name for p in figures.glob("panel_*.png"))
    assert len(panels) == 4 and (figures / "curves.png").is_file(), panels
    from PIL import Image

    width, height = Image.open(figures / panels[0]).size
    assert width > 4 * height  # five panels side by side


def test_adapt_api_example_keeps_its_output_folder_and_prints_before_and_after(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "examples" / "adapt_api.py"
    spec = importlib.util.spec_from_file_location("adapt_api_example", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(["--out", str(tmp_path / "out"), "--iters", "2"])
    out = capsys.readouterr().out
    assert re.search(r"mIoU before: \d+\.\d\d %  after: \d+\.\d\d %  \(on 8 labelled frames\)", out), out
    model = tmp_path / "out" / "run" / "model.safetensors"  # a torchvision model: recognised
    assert model.is_file() and str(model) in out  # still there after the example returned
