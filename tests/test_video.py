"""Video in and out with real OpenCV (the ``video`` extra), end to end through the CLI.

Tiny videos are written here with ``cv2.VideoWriter`` (mp4 ``mp4v``, avi ``MJPG``; 16 frames of 64x128
at 12 frames/s: a sky, a road and a block that moves), then:

- ``stvm stream --input v.mp4|v.avi`` adapts on every frame: summary frames == the video's frames, the
  header's count in ``frames_expected``, no warning; ``--save-pred`` writes one PNG per frame;
- ``stvm predict`` writes an overlay video with the input's frame count and frame rate;
- a truncated avi (60 % of its bytes) keeps the frames read so far, with one warning line, in both
  commands; a truncated mp4 (its index is written last, so nothing decodes), random bytes named
  ``.mp4`` and a video whose first frame does not decode are one ``error:`` line with nothing written
  anywhere; a real process prints that one line and no FFmpeg or OpenCV log lines;
- a failure halfway through predict leaves no overlay and no temporary file; without OpenCV both
  commands say ``pip install 'stvm_sdk[video]'``.

The source model is the tests' TinySegNet, pickled (``--trust-pickle``): milliseconds a frame.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")

from matrix import RUNNER, Case, Workspace, check_case  # noqa: E402
from stvm_sdk.cli.app import app  # noqa: E402
from support import TinySegNet  # noqa: E402

from stvm_sdk.boundary.outputs import MARKER  # noqa: E402
from stvm_sdk.data.video import import_cv2  # noqa: E402

import_cv2()  # the SDK's OpenCV set-up (FFmpeg quiet) before this file's writers first use FFmpeg

N, FPS, HW = 16, 12.0, (64, 128)
FOURCC = {".mp4": "mp4v", ".avi": "MJPG"}
# The tiny test net, pickled (hence --trust-pickle): milliseconds a frame, where lraspp takes ~100x that.
STATS = ["--window", "4", "--checkpoint-every", "8", "--seed", "0", "--json", "--trust-pickle"]


def _scene(i: int, rng: np.random.Generator) -> np.ndarray:
    """One RGB frame: sky, buildings, road, and a car-like block moving right; noise so it compresses
    like a camera frame (a truncation then cuts between frames, not inside the first one)."""
    h, w = HW
    img = np.empty((h, w, 3), np.int16)
    img[: h // 3] = (70, 130, 180)
    img[h // 3 : h // 2] = (70, 70, 70)
    img[h // 2 :] = (128, 64, 128)
    x = (8 * i) % (w - 24)
    img[h // 2 : h // 2 + 12, x : x + 24] = (0, 0, 142)
    img += rng.integers(-25, 25, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_video(path: Path, n: int = N, fps: float = FPS) -> Path:
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC[path.suffix]), fps, HW[::-1])
    assert writer.isOpened(), f"OpenCV cannot write {path.suffix} here"
    for i in range(n):
        writer.write(_scene(i, rng)[:, :, ::-1])  # OpenCV takes BGR
    writer.release()
    return path


def _truncated(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    out = path.with_name(f"cut{path.suffix}")
    out.write_bytes(data[: int(len(data) * keep)])
    return out


def _probe(path: Path) -> tuple[int, float, int, tuple[int, ...] | None]:
    """(header frame count, header fps, frames actually decoded, first frame's shape)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        return 0, 0.0, 0, None
    count, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS))
    n, shape = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        shape = shape or frame.shape
        n += 1
    cap.release()
    return count, fps, n, shape


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    torch.save(TinySegNet().eval(), path)
    return path


@pytest.fixture
def ws(tmp_path: Path, tiny_source: Path) -> Workspace:
    return Workspace(tmp_path / "ws", tiny_source)


def _stream(w: Workspace, video: Path, method: str, *extra: str) -> list[str]:
    return ["stream", "--source", str(w.model), "--input", str(video), "--out", str(w.root / "run"),
            "--method", method, *STATS, *extra]  # fmt: skip


def _predict(w: Workspace, video: Path) -> list[str]:
    return ["predict", str(w.model), "--input", str(video), "--out", str(w.root / "pred"), "--json",
            "--trust-pickle"]  # fmt: skip


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The stream's ``warning:`` lines (work not done), not its health-rule notes."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("warning: ")]


@pytest.mark.parametrize("ext, method", [(".mp4", "source_only"), (".avi", "adabn")])
def test_stream_adapts_on_every_frame_of_a_video(
    ws: Workspace, ext: str, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    video = _write_video(ws.root / f"drive{ext}")
    run = ws.root / "run"

    def check(summary: dict) -> None:
        on_disk = json.loads((run / "summary.json").read_text())
        for s in (summary, on_disk):
            assert s["frames"] == N and s["frames_expected"] == N and s["frames_missing"] == 0, s
            assert s["frames_skipped"] == 0 and "warnings" not in s, s
        preds = sorted(p.name for p in (run / "pred").glob("*.png"))
        assert preds == [f"drive_{i:06d}.png" for i in range(N)]
        from PIL import Image

        assert Image.open(run / "pred" / preds[0]).size == HW[::-1]  # at the frame's own size
        assert (run / "checkpoints" / "last.pt").is_file() and Path(summary["model_path"]).is_file()

    with caplog.at_level(logging.INFO, logger="stvm_sdk"):
        check_case(Case(_stream(ws, video, method, "--save-pred"), "ok", out=run, check=check), ws)
    assert _warnings(caplog) == []


@pytest.mark.parametrize("ext", [".mp4", ".avi"])
def test_predict_writes_an_overlay_video_with_the_inputs_frames_and_fps(ws: Workspace, ext: str) -> None:
    video = _write_video(ws.root / f"drive{ext}")
    out = ws.root / "pred"

    def check(result: dict) -> None:
        assert result["frames"] == N and result["fps"] == pytest.approx(FPS), result
        assert result["frames_expected"] == N and result["frames_missing"] == 0 and "warnings" not in result
        overlay = Path(result["video"])
        assert overlay == out / "drive_overlay.mp4"
        count, fps, read, shape = _probe(overlay)
        assert (count, read, shape) == (N, N, (*HW, 3)) and fps == pytest.approx(FPS)
        # no temporary file left beside it
        assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "drive_overlay.mp4", "legend.png"])

    check_case(Case(_predict(ws, video), "ok", out=out, check=check), ws)


def test_a_truncated_avi_keeps_the_frames_read_with_one_warning(
    ws: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    video = _truncated(_write_video(ws.root / "drive.avi"))
    count, _, readable, _ = _probe(video)
    assert count == N and 0 < readable < N, (count, readable)  # the header still says 16
    missing = N - readable

    # stream: the frames read are adapted on, checkpointed and delivered; the summary says what is missing
    run = ws.root / "run"

    def check_stream(summary: dict) -> None:
        assert summary["frames"] == readable and summary["frames_missing"] == missing, summary
        assert summary["frames_expected"] == N and len(summary["warnings"]) == 1, summary
        assert f"ended after {readable} of the {N} frames" in summary["warnings"][0]
        assert (run / "checkpoints" / "last.pt").is_file() and Path(summary["model_path"]).is_file()

    with caplog.at_level(logging.INFO, logger="stvm_sdk"):
        check_case(Case(_stream(ws, video, "adabn"), "ok", out=run, check=check_stream), ws)
    logged = _warnings(caplog)
    assert len(logged) == 1 and "ended after" in logged[0], logged

    # predict: the overlay of the frames read, one warning line on stderr, stdout one JSON object
    res = RUNNER.invoke(app, _predict(ws, video))
    assert res.exit_code == 0, (res.stderr, res.exception)
    assert "Traceback" not in res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "truncated or damaged" in lines[0], lines
    assert f"ended after {readable} of the {N} frames" in lines[0]
    result = json.loads(res.stdout)
    assert result["frames"] == readable and result["frames_missing"] == missing
    assert result["warnings"] == [lines[0][len("warning: ") :]]
    assert _probe(Path(result["video"]))[::2] == (readable, readable)  # header count and frames decoded
    assert not list((ws.root / "pred").glob(".*.tmp.mp4"))


class _NoFrameCapture:
    """OpenCV's reader over a real video whose frames all fail to decode (an unsupported codec)."""

    def __init__(self, *args: object) -> None:
        self._cap = REAL_CAPTURE(*args)

    def __getattr__(self, name: str) -> object:
        return getattr(self._cap, name)

    def read(self) -> tuple[bool, None]:
        return False, None


REAL_CAPTURE = cv2.VideoCapture


@pytest.mark.parametrize(
    "kind, phrase",
    [
        ("truncated_mp4", "truncated or damaged"),
        ("random_bytes", "cannot open video"),
        ("no_frame_decodes", "no frame could be read from video"),
    ],
)
@pytest.mark.parametrize("command", ["stream", "predict"])
def test_an_unreadable_video_is_one_error_line_and_writes_nothing(
    ws: Workspace, kind: str, phrase: str, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "truncated_mp4":  # an mp4 cut short has lost its index (written last): nothing decodes
        video = _truncated(_write_video(ws.root / "drive.mp4"))
        assert _probe(video)[2] == 0
    elif kind == "random_bytes":
        video = ws.file("drive.mp4", np.random.default_rng(1).bytes(20_000))
        assert _probe(video)[2] == 0
    else:  # opens, and its header says 16 frames, but not one decodes
        video = _write_video(ws.root / "drive.avi")
        monkeypatch.setattr(cv2, "VideoCapture", _NoFrameCapture)
    args = _stream(ws, video, "adabn") if command == "stream" else _predict(ws, video)
    # out=None: no file may change or appear anywhere, not even the output folder
    check_case(Case(args, "error", phrase), ws)
    assert not (ws.root / "run").exists() and not (ws.root / "pred").exists()


def test_a_real_process_prints_one_line_and_no_decoder_noise(ws: Workspace) -> None:
    """FFmpeg logs to the process's stderr directly (CliRunner never sees it): a real process does."""
    video = _truncated(_write_video(ws.root / "drive.mp4"))
    code = "import sys; from stvm_sdk.cli.app import main; sys.argv[0] = 'stvm'; main()"
    args = [sys.executable, "-c", code, *_predict(ws, video)]
    path = [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]  # the pickled net's class
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    res = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and res.stdout == "", (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot open video"), res.stderr
    assert not (ws.root / "pred").exists()


def test_a_failure_mid_video_leaves_no_half_written_overlay(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stvm_sdk.export.predict as predict
    from stvm_sdk.errors import DataError

    real, calls = predict.infer, []

    def failing(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 5:
            raise DataError("the model failed on frame 5")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(predict, "infer", failing)
    video = _write_video(ws.root / "drive.mp4")
    res = RUNNER.invoke(app, _predict(ws, video))
    assert res.exit_code == 2 and res.stderr.strip() == "error: the model failed on frame 5", res.stderr
    left = sorted(p.name for p in (ws.root / "pred").iterdir())
    assert left == sorted([MARKER, "legend.png"]), left  # no overlay, no temporary file


@pytest.mark.parametrize("command", ["stream", "predict"])
def test_without_opencv_the_line_says_how_to_install_it(
    ws: Workspace, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    video = _write_video(ws.root / "drive.mp4")
    args = _stream(ws, video, "adabn") if command == "stream" else _predict(ws, video)
    check_case(Case(args, "error", "pip install 'stvm_sdk[video]'"), ws)
