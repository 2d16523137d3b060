"""The `stvm` CLI through Typer's runner: end to end, JSON output, and every bad input's message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from stvm_sdk.cli.app import app
from typer.testing import CliRunner

runner = CliRunner()
FAST = ["--iters", "2", "--batch-size", "2", "--crop", "32x64", "--seed", "0"]


def _run(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def test_lraspp_checkpoint_adapts_end_to_end_through_the_cli(
    lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    code, out, err = _run(
        "adapt",
        "--source",
        lraspp_checkpoint,
        "--target",
        frames[0],
        "--labels",
        frames[1],
        "--out",
        tmp_path / "run",
        "--json",
        *FAST,
    )
    assert code == 0, err
    summary = json.loads(out)  # stdout holds exactly one JSON object
    for key in (
        "run_dir",
        "model_path",
        "teacher_path",
        "student_path",
        "steps",
        "frames_found",
        "frames_used",
        "images_skipped",
        "images_seen",
        "miou_before",
        "miou_after",
        "per_class_iou",
    ):
        assert key in summary, key
    assert summary["steps"] == 2 and summary["frames_used"] == 6 and summary["images_seen"] == 4
    code, out, err = _run(
        "eval", summary["model_path"], "--images", frames[0], "--labels", frames[1], "--json"
    )
    assert code == 0, err
    assert abs(json.loads(out)["miou"] - summary["miou_after"]) < 1e-6
    code, out, _ = _run("info", summary["model_path"], "--json")
    assert code == 0 and json.loads(out)["num_classes"] == 5
    # the adapted model is itself a valid source
    code, _, err = _run(
        "adapt",
        "--source",
        summary["model_path"],
        "--target",
        frames[0],
        "--out",
        tmp_path / "again",
        "--method",
        "tent",
        "--json",
        *FAST,
    )
    assert code == 0, err


def test_human_output_has_a_summary_table(
    lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    code, out, err = _run(
        "adapt",
        "--source",
        lraspp_checkpoint,
        "--target",
        frames[0],
        "--labels",
        frames[1],
        "--out",
        tmp_path / "run",
        "--method",
        "adabn",
        *FAST,
    )
    assert code == 0, err
    assert "miou_after" in out and "per-class IoU" in out and "sidewalk" in out


def _expect_user_error(args: list[str], message: str) -> None:
    code, out, err = _run(*args)
    assert code == 2, (code, out, err)
    assert message in err, err
    assert "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1, err


def test_missing_model_file(frames: tuple[Path, Path], tmp_path: Path) -> None:
    _expect_user_error(
        ["adapt", "--source", str(tmp_path / "nope.pt"), "--target", str(frames[0])], "model file not found"
    )


def test_unreadable_model_file(frames: tuple[Path, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a model")
    _expect_user_error(["adapt", "--source", str(bad), "--target", str(frames[0])], "is not a model file")


def test_pickled_module_needs_trust_pickle(
    tiny_net: torch.nn.Module, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    path = tmp_path / "pickled.pt"
    torch.save(tiny_net, path)
    _expect_user_error(["adapt", "--source", str(path), "--target", str(frames[0])], "--trust-pickle")
    code, _, err = _run(
        "adapt", "--source", path, "--target", frames[0], "--trust-pickle", "--out", tmp_path / "r", *FAST
    )
    assert code == 0, err


def test_unknown_arch_in_checkpoint(frames: tuple[Path, Path], tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    torch.save({"arch": "resnet_magic", "num_classes": 3, "state_dict": {}}, path)
    _expect_user_error(
        ["adapt", "--source", str(path), "--target", str(frames[0])], "unknown arch 'resnet_magic'"
    )


def test_output_not_logits(frames: tuple[Path, Path], tmp_path: Path) -> None:
    path = tmp_path / "flat.pt"
    torch.jit.save(
        torch.jit.script(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())), path
    )
    _expect_user_error(
        ["adapt", "--source", str(path), "--target", str(frames[0])], "must return logits [B,K,h,w]"
    )


class NoHead(torch.nn.Module):
    """Logits are a slice of a wider map: no module emits K channels, so no classifier can be found."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Conv2d(3, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)[:, :4]


def test_no_classifier_found(frames: tuple[Path, Path], tmp_path: Path) -> None:
    path = tmp_path / "nohead.pt"
    torch.save(NoHead(), path)
    _expect_user_error(
        ["adapt", "--source", str(path), "--target", str(frames[0]), "--trust-pickle"],
        "no module emits 4-channel logits: name the classifier with --classifier",
    )
    _expect_user_error(
        [
            "adapt",
            "--source",
            str(path),
            "--target",
            str(frames[0]),
            "--trust-pickle",
            "--classifier",
            "head",
        ],
        "has no module 'head'",
    )


def test_num_classes_mismatch(lraspp_checkpoint: Path, frames: tuple[Path, Path]) -> None:
    _expect_user_error(
        ["adapt", "--source", str(lraspp_checkpoint), "--target", str(frames[0]), "--num-classes", "19"],
        "has 5 classes but --num-classes is 19",
    )


def test_empty_target_folder(lraspp_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _expect_user_error(
        ["adapt", "--source", str(lraspp_checkpoint), "--target", str(tmp_path / "empty")],
        "no usable frames",
    )


def test_corrupt_frames_are_skipped_and_counted(
    lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    (frames[0] / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    code, out, err = _run(
        "adapt",
        "--source",
        lraspp_checkpoint,
        "--target",
        frames[0],
        "--out",
        tmp_path / "r",
        "--json",
        *FAST,
    )
    assert code == 0, err
    skipped = json.loads(out)["images_skipped"]
    assert skipped["total"] == 1 and skipped["by_reason"] == {"unreadable": 1}, skipped


def test_bad_config_file(lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[methods.stvm.metric]\nalfa = 3\n")
    _expect_user_error(
        ["adapt", "--source", str(lraspp_checkpoint), "--target", str(frames[0]), "--config", str(cfg)],
        "unknown config key(s) methods.stvm.metric.alfa",
    )


def test_cuda_requested_without_gpu(
    lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _expect_user_error(
        [
            "adapt",
            "--source",
            str(lraspp_checkpoint),
            "--target",
            str(frames[0]),
            "--device",
            "cuda",
            "--out",
            str(tmp_path / "r"),
        ],
        "no CUDA GPU",
    )


def test_diverging_run_is_one_line_error(
    lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg = tmp_path / "hot.toml"
    cfg.write_text("[optim]\nlr = 1e12\n[methods.stvm.metric]\nwarmup = 0\n[run]\nlog_every = 1\n")
    _expect_user_error(
        ["adapt", "--source", str(lraspp_checkpoint), "--target", str(frames[0]), "--config", str(cfg),
         "--out", str(tmp_path / "run"), "--json", *FAST],  # --json: no progress lines on stderr
        "adaptation diverged at step",
    )  # fmt: skip
