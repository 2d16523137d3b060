"""`stvm stream` end to end: windows in metrics.jsonl, predictions, summary costs, a kill and --resume,
export of the current model, and bad input as one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from stvm_sdk.cli.app import app
from support import make_frames, sigkill_when
from typer.testing import CliRunner

from stvm_sdk.stream.run import adapt_stream

runner = CliRunner()


def _run(*args: object) -> tuple[int, str, str]:
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture
def stream_frames(tmp_path: Path) -> tuple[Path, Path]:
    return make_frames(tmp_path / "data", n=12, size=(32, 64), nested=False)


FAST = ["--window", "4", "--batch-size", "2", "--buffer", "4", "--checkpoint-every", "4", "--seed", "0"]
# For a method that takes no training steps: batch and buffer are options it does not read (refused).
STATS = ["--window", "4", "--checkpoint-every", "4", "--seed", "0"]


def test_stream_runs_end_to_end_and_reports_its_costs(
    lraspp_checkpoint: Path, stream_frames: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "s"
    code, stdout, err = _run(
        "stream", "--source", lraspp_checkpoint, "--input", stream_frames[0], "--labels", stream_frames[1],
        "--out", out, "--method", "tent", "--save-pred", "--json", *FAST,
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["frames"] == 12 and summary["adapted_frames"] == 12 and summary["method"] == "tent"
    for key in (
        "predict_ms_p50",
        "predict_ms_p99",
        "adapt_ms_p50",
        "adapt_ms_p99",
        "adapt_ms_per_frame",
        "fps",
    ):
        assert isinstance(summary[key], float) and summary[key] > 0, key
    assert 0 < summary["miou_online"] <= 100 and summary["memory_mib"]["buffer"] > 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [4, 8, 12]
    for r in lines:
        assert {"healthy", "reasons", "restore", "confidence", "hist_js", "class_ratio", "fps"} <= set(r)
    preds = sorted((out / "pred").glob("*.png"))
    assert len(preds) == 12
    assert Path(summary["model_path"]).is_file() and (out / "checkpoints" / "last.pt").is_file()
    # The current model exports through `stvm export` while (or after) the stream runs.
    code, _, err = _run("export", summary["model_path"], "--out", tmp_path / "exp", "--shape", "32x64",
                        "--verify-frames", "2")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "exp" / "model.onnx").is_file()


def test_a_killed_stream_resumes_where_its_checkpoint_left_off(
    lraspp_checkpoint: Path, stream_frames: tuple[Path, Path], tmp_path: Path
) -> None:
    common = dict(method="mean_teacher", labels_dir=stream_frames[1], checkpoint_every=4, seed=0)
    from stvm_sdk.stream import StreamConfig

    scfg = StreamConfig(window=4, batch_size=2, buffer=4)
    whole = adapt_stream(
        lraspp_checkpoint, stream_frames[0], out_dir=tmp_path / "whole", stream_config=scfg, **common
    )

    def kill_at_frame_8(record: dict) -> None:
        if record["step"] == 8:
            raise KeyboardInterrupt  # after window 8's line, before its checkpoint: like a kill

    with pytest.raises(KeyboardInterrupt):
        adapt_stream(lraspp_checkpoint, stream_frames[0], out_dir=tmp_path / "cut", stream_config=scfg,
               on_window=kill_at_frame_8, **common)  # fmt: skip
    ckpt = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["next_input"] == 4
    resumed = adapt_stream(lraspp_checkpoint, stream_frames[0], out_dir=tmp_path / "cut", stream_config=scfg,
                     resume=True, **common)  # fmt: skip
    assert resumed.summary["frames"] == 12
    assert resumed.summary["miou_online"] == pytest.approx(whole.summary["miou_online"], abs=1e-9)
    a, b = whole.adapter.method.state_dict(), resumed.adapter.method.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = [json.loads(x)["step"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert lines == [4, 8, 12]  # the line past the checkpoint was dropped and written again once


def test_resume_refuses_other_stream_settings(
    lraspp_checkpoint: Path, stream_frames: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "s"
    code, _, err = _run("stream", "-s", lraspp_checkpoint, "-i", stream_frames[0], "--out", out,
                        "--method", "adabn", "--max-frames", "4", *STATS)  # fmt: skip
    assert code == 0, err
    code, _, err = _run("stream", "-s", lraspp_checkpoint, "-i", stream_frames[0], "--out", out,
                        "--method", "adabn", "--resume", *STATS[:2], "--every", "2")  # fmt: skip
    assert code != 0 and "stream settings differ" in err and "Traceback" not in err
    code, _, err = _run("stream", "-s", lraspp_checkpoint, "-i", stream_frames[0], "--out", out,
                        "--method", "adabn", *STATS)  # fmt: skip
    assert code != 0 and "--resume" in err


@pytest.mark.parametrize(
    "case, expect",
    [
        ("empty", "no usable frames"),
        ("missing", "--input not found"),
        ("text_file", "not a video"),
        ("video", "OpenCV"),
        ("method", "unknown method 'nosuch'"),
    ],
)
def test_bad_stream_input_is_one_line(
    lraspp_checkpoint: Path, tmp_path: Path, case: str, expect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = make_frames(tmp_path / "d", n=2, nested=False)[0]
    args = ["stream", "-s", lraspp_checkpoint, "--out", tmp_path / "out"]
    if case == "empty":
        (tmp_path / "empty").mkdir()
        args += ["-i", tmp_path / "empty"]
    elif case == "missing":
        args += ["-i", tmp_path / "nope"]
    elif case == "text_file":
        (tmp_path / "notes.txt").write_text("x")
        args += ["-i", tmp_path / "notes.txt"]
    elif case == "video":
        monkeypatch.setitem(sys.modules, "cv2", None)  # as if OpenCV were not installed (CI has it)
        (tmp_path / "drive.mp4").write_bytes(b"\x00" * 64)
        args += ["-i", tmp_path / "drive.mp4"]
    else:
        args += ["-i", frames, "--method", "nosuch"]
    code, _, err = _run(*args)
    assert code != 0
    assert expect in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_a_corrupt_frame_in_the_stream_is_skipped_and_counted(
    lraspp_checkpoint: Path, tmp_path: Path
) -> None:
    images, _ = make_frames(tmp_path / "d", n=6, nested=False)
    good = (images / "f3.png").read_bytes()
    (images / "f3.png").write_bytes(good[: len(good) // 2])  # a valid header, a truncated body
    code, stdout, err = _run("stream", "-s", lraspp_checkpoint, "-i", images, "--out", tmp_path / "s",
                             "--method", "adabn", "--json", *STATS)  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["frames"] == 5  # found by the scan or when decoded: skipped either way, with its reason
    skipped = summary["images_skipped"]
    assert skipped["total"] == 1 and skipped["examples"][0]["path"].endswith("f3.png")


def test_labels_of_another_label_set_are_one_line_unless_ignored(
    lraspp_checkpoint: Path, tmp_path: Path
) -> None:
    import numpy as np
    from PIL import Image

    images, labels = make_frames(tmp_path / "d", n=4, nested=False)
    lab = np.array(Image.open(labels / "f1.png"))
    lab[0, 0] = 17  # the model has 5 classes
    Image.fromarray(lab).save(labels / "f1.png")
    args = [
        "stream",
        "-s",
        lraspp_checkpoint,
        "-i",
        images,
        "--labels",
        labels,
        "--method",
        "adabn",
        "--json",
    ]
    code, _, err = _run(*args, "--out", tmp_path / "a", *STATS)
    assert code != 0 and "class ids 17" in err and "--ignore-out-of-range" in err and "Traceback" not in err
    code, stdout, err = _run(*args, "--out", tmp_path / "b", "--ignore-out-of-range", *STATS)
    assert code == 0, err
    assert json.loads(stdout)["frames"] == 4


def test_a_stream_killed_with_sigkill_resumes_bit_identical(lraspp_checkpoint: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from safetensors.torch import load_file

    images, _ = make_frames(tmp_path / "d", n=24, size=(32, 64), nested=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cmd(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "stvm_sdk.cli", "stream", "-s", str(lraspp_checkpoint),
                "-i", str(images), "--out", str(out), "--method", "mean_teacher", "--json", "--window", "4",
                "--batch-size", "2", "--buffer", "4", "--checkpoint-every", "4", *extra]  # fmt: skip

    full = subprocess.run(cmd(tmp_path / "full"), env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen(cmd(run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoints" / "last.pt"
    sigkill_when(proc, ckpt)
    assert proc.returncode == -signal.SIGKILL, "the stream finished before it could be killed"
    frames_done = torch.load(ckpt, weights_only=True)["step"]
    assert 4 <= frames_done < 24
    resumed = subprocess.run(cmd(run, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["frames"] == 24
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(run / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(4, 25, 4))


def test_predictions_are_saved_at_the_frames_own_size(
    lraspp_checkpoint: Path, stream_frames: tuple[Path, Path], tmp_path: Path
) -> None:
    from PIL import Image

    code, stdout, err = _run("stream", "-s", lraspp_checkpoint, "-i", stream_frames[0],
                             "--out", tmp_path / "s", "--method", "adabn", "--size", "32x48",
                             "--max-frames", "2", "--save-pred", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["size"] == [32, 48]
    preds = sorted((tmp_path / "s" / "pred").glob("*.png"))
    assert len(preds) == 2 and all(Image.open(p).size == (64, 32) for p in preds)
