"""Right answers of runs and streams: nothing silently wrong is written, skipped or left running.

The CLI matrix uses the harness of ``tests/matrix.py`` (one ``error:`` line or one JSON object, and no
file changed outside the command's output folder); its cases assert the right answer:

- a run or stream that diverges (a learning rate far too large) is one line and writes no model and no
  checkpoint holding NaN or inf;
- a run or stream folder in use by a live process is one line naming the process; the lock of a
  process that no longer runs is taken over, and every run removes its lock when it stops;
- an option the method does not read is mapped to the one it reads (``--lr`` / ``optim.lr`` to tent's
  own ``methods.tent.lr``) or refused in one line;
- a stream that never trains (shorter than its batch), or a video that ends before the frame count its
  header announces, says so in its summary;
- a stream resumed into an adapt run, or with another ``--input``, is one line naming the right option;
- a damaged field of a run folder's files (checkpoint, run.json, config.json) is one line naming the
  file and the field.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matrix import RUNNER, Case, Workspace, check_case
from PIL import Image
from safetensors.torch import load_file
from stvm_sdk.cli.app import app

from stvm_sdk.boundary.outputs import claim_dir

LOCK = ".stvm_sdk.lock"


def _stream(
    w: Workspace, *extra: str | Path, out: Path | None = None, source: Path | None = None
) -> list[str]:
    args = ["stream", "--source", source or w.model, "--input", w.frames, "--out", out or w.root / "run",
            "--window", "2", "--seed", "0", "--json", *extra]  # fmt: skip
    return [str(a) for a in args]


def _with_input(args: list[str], frames: Path) -> list[str]:
    i = args.index("--input")
    return [*args[: i + 1], str(frames), *args[i + 2 :]]


def _tent(w: Workspace, text: str) -> Path:
    return w.file("tent.toml", f"method = 'tent'\n[methods.tent]\n{text}\n".encode())


def _ok(args: list[str]) -> dict[str, Any]:
    res = RUNNER.invoke(app, args)
    assert res.exit_code == 0, (res.stderr, res.exception)
    return json.loads(res.stdout)


def _no_non_finite_file(run: Path) -> Callable[[], None]:
    """Nothing the run wrote holds NaN or inf: no model at all, and a checkpoint (if any) is finite."""

    def after() -> None:
        assert not list(run.glob("*.safetensors")) and not list(run.glob("*.pt")), sorted(run.iterdir())
        ckpt = run / "checkpoints" / "last.pt"
        if ckpt.exists():
            state = torch.load(ckpt, weights_only=True)["state"]["method"]
            assert all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())

    return after


def _live_process() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"])


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _lock(folder: Path, pid: int) -> None:
    claim_dir(folder, "run")  # a run folder, as the process that holds it made it
    (folder / LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "earlier"}))


# --- divergence: nothing non-finite is written -------------------------------------------------------


def c_adapt_lr_inf(w: Workspace) -> Case:
    run = w.root / "run"
    args = w.adapt("--config", _tent(w, "lr = inf"))
    return Case(args, "error", "methods.tent.lr", out=run, extra={"after": _no_non_finite_file(run)})


def c_adapt_lr_overflows_the_prediction(w: Workspace) -> Case:
    # Finite weights (about 1e30) whose prediction overflows: the deliverable is probed before it is saved.
    run = w.root / "run"
    args = w.adapt("--config", _tent(w, "lr = 1e30"))
    line = "diverged by step 1: the delivered network's weights are finite but its prediction"
    return Case(args, "error", line, out=run, extra={"after": _no_non_finite_file(run)})


def c_adapt_lr_overflows_a_float(w: Workspace) -> Case:
    run = w.root / "run"
    args = w.adapt("--config", _tent(w, "lr = 1e300"))
    line = "adaptation diverged at step 1: a value overflowed the network's float type"
    return Case(args, "error", line, out=run, extra={"after": _no_non_finite_file(run)})


def c_stream_lr_overflows_a_float(w: Workspace) -> Case:
    run = w.root / "run"
    args = _stream(w, "--method", "tent", "--batch-size", "2", "--lr", "1e300")
    return Case(args, "error", "Lower methods.tent.lr", out=run, extra={"after": _no_non_finite_file(run)})


# --- one process per run folder ----------------------------------------------------------------------


def c_adapt_folder_in_use(w: Workspace) -> Case:
    run = w.root / "run"
    _ok(w.adapt())
    proc = _live_process()
    _lock(run, proc.pid)

    def after() -> None:
        proc.kill()
        proc.wait()
        assert json.loads((run / LOCK).read_text())["pid"] == proc.pid  # the owner's lock is left alone

    msg = f"is in use by process {proc.pid}: wait for it or pick another --out"
    return Case(w.adapt("--resume"), "error", msg, out=run, extra={"after": after, "cleanup": after})


def c_stream_folder_in_use(w: Workspace) -> Case:
    run = w.root / "run"
    proc = _live_process()
    _lock(run, proc.pid)

    def after() -> None:
        proc.kill()
        proc.wait()
        assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()

    msg = f"is in use by process {proc.pid}"
    return Case(
        _stream(w, "--method", "adabn"), "error", msg, out=run, extra={"after": after, "cleanup": after}
    )


def c_adapt_stale_lock_is_taken_over(w: Workspace) -> Case:
    run = w.root / "run"
    _ok(w.adapt())
    _lock(run, _dead_pid())

    def check(summary: dict[str, Any]) -> None:
        assert summary["steps"] == 1
        assert not (run / LOCK).exists()  # taken over, then released when the run stopped

    return Case(w.adapt("--resume"), "ok", out=run, check=check)


def c_every_run_releases_its_lock(w: Workspace) -> Case:
    run = w.root / "run"
    _ok(w.adapt())
    assert not (run / LOCK).exists()
    res = RUNNER.invoke(app, w.adapt("--resume", "--iters", "2"))  # refused once the folder is locked
    assert res.exit_code == 2 and "the config differs" in res.stderr, res.stderr
    assert not (run / LOCK).exists()

    def check(summary: dict[str, Any]) -> None:
        assert summary["steps"] == 1 and not (run / LOCK).exists()

    return Case(w.adapt("--resume"), "ok", out=run, check=check)


# --- options a method does not read --------------------------------------------------------------------


def c_stream_lr_reaches_tent(w: Workspace) -> Case:
    other = w.root / "other"
    _ok(_stream(w, "--method", "tent", "--batch-size", "2", "--lr", "1e-6", out=other))
    run = w.root / "run"

    def check(summary: dict[str, Any]) -> None:
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["methods"]["tent"]["lr"] == 0.01
        a, b = load_file(other / "model.safetensors"), load_file(run / "model.safetensors")
        assert any(not torch.equal(a[k], b[k]) for k in a), "--lr changed nothing"
        assert summary["steps"] == 3

    return Case(
        _stream(w, "--method", "tent", "--batch-size", "2", "--lr", "0.01"), "ok", out=run, check=check
    )


def c_stream_lr_of_a_method_that_does_not_train(w: Workspace) -> Case:
    return Case(_stream(w, "--method", "adabn", "--lr", "0.1"), "error", "--method adabn does not train")


def c_stream_setting_the_method_does_not_read(w: Workspace) -> Case:
    args = _stream(w, "--method", "tent", "--bn-predict", "running")
    return Case(
        args, "error", "--bn-predict: --method tent always predicts with BatchNorm's frame statistics"
    )


def c_adapt_optim_lr_reaches_tent(w: Workspace) -> Case:
    run = w.root / "run"

    def check(summary: dict[str, Any]) -> None:
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["methods"]["tent"]["lr"] == 0.002 and cfg["optim"]["lr"] != 0.002

    return Case(w.adapt("--method", "tent", "optim.lr=0.002"), "ok", out=run, check=check)


def c_adapt_optimiser_key_tent_does_not_read(w: Workspace) -> Case:
    args = w.adapt("--method", "tent", "optim.momentum=0.5")
    return Case(args, "error", "--method tent runs its own optimiser and does not read optim.momentum")


# --- work not done is said -----------------------------------------------------------------------------


def c_stream_shorter_than_its_batch(w: Workspace) -> Case:
    args = _stream(w, "--method", "tent", "--batch-size", "8", "--buffer", "8")

    def check(summary: dict[str, Any]) -> None:
        assert summary["frames"] == 4 and summary["steps"] == 0 and summary["adapted_frames"] == 0, summary
        assert any("no training step ran" in line for line in summary["warnings"]), summary

    return Case(args, "ok", out=w.root / "run", check=check)


def c_stream_save_pred_names_never_collide(w: Workspace) -> Case:
    """``a.png`` and ``a.jpg`` in one folder: two frames, two prediction files (not one overwritten)."""
    frames = w.frame_folder("same_stem", [])
    for ext in ("png", "jpg", "bmp"):
        Image.open(next(p for p in sorted(w.frames.rglob("*")) if p.is_file())).convert("RGB").save(
            frames / f"a.{ext}"
        )
    out = w.root / "run"
    args = _with_input(_stream(w, "--method", "adabn", "--save-pred"), frames)

    def check(summary: dict[str, Any]) -> None:
        written = sorted(p.name for p in out.rglob("*") if p.is_file() and p.parent.name == "pred")
        assert summary["frames"] == 3 and len(written) == 3, (summary, written)

    return Case(args, "ok", out=out, check=check)


def c_stream_counts_frames_a_step_used(w: Workspace) -> Case:
    args = _stream(w, "--method", "tent", "--batch-size", "3", "--buffer", "4")

    def check(summary: dict[str, Any]) -> None:
        # steps at frames 3 and 4: the first uses frames 1-3, the second frame 4
        assert summary["steps"] == 2 and summary["adapted_frames"] == 4 and "warnings" not in summary

    return Case(args, "ok", out=w.root / "run", check=check)


class _FakeVideoCapture:
    """OpenCV's reader over an ``.npz`` holding ``frames`` and the ``count`` its header claims."""

    def __init__(self, path: str) -> None:
        data = np.load(path)
        self.frames = list(data["frames"])
        self.count = int(data["count"])

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return True

    def get(self, prop: int) -> float:
        return float(self.count) if prop == 7 else 25.0

    def read(self) -> tuple[bool, Any]:
        return (True, self.frames.pop(0)[:, :, ::-1]) if self.frames else (False, None)

    def release(self) -> None:
        pass


def _fake_cv2() -> types.ModuleType:
    cv2 = types.ModuleType("cv2")
    cv2.CAP_PROP_FPS, cv2.CAP_PROP_FRAME_COUNT = 5, 7  # type: ignore[attr-defined]
    cv2.VideoCapture = _FakeVideoCapture  # type: ignore[attr-defined]
    return cv2


def c_stream_truncated_video(w: Workspace) -> Case:
    video = w.root / "drive.avi"
    frames = np.random.default_rng(0).integers(0, 255, (5, 32, 64, 3), dtype=np.uint8)
    with open(video, "wb") as fh:
        np.savez(fh, frames=frames, count=np.int64(8))  # the header says 8 frames, the file holds 5
    args = _with_input(_stream(w, "--method", "adabn"), video)

    def check(summary: dict[str, Any]) -> None:
        assert summary["frames"] == 5 and summary["frames_skipped"] == 0
        assert summary["frames_expected"] == 8 and summary["frames_missing"] == 3, summary
        assert any("ended after 5 of the 8 frames" in line for line in summary["warnings"]), summary

    return Case(args, "ok", out=w.root / "run", check=check, extra={"modules": {"cv2": _fake_cv2()}})


# --- resume refusals name the right thing ------------------------------------------------------------


def c_stream_resumed_into_an_adapt_run(w: Workspace) -> Case:
    _ok(w.adapt())
    args = _stream(w, "--method", "adabn", "--resume")
    return Case(args, "error", "holds an adapt run, not a stream run", out=w.root / "run")


def c_adapt_resumed_into_a_stream(w: Workspace) -> Case:
    _ok(_stream(w, "--method", "adabn"))
    return Case(w.adapt("--resume"), "error", "holds a stream run, not an adapt run", out=w.root / "run")


def c_stream_resumed_with_another_input(w: Workspace) -> Case:
    _ok(_stream(w, "--method", "adabn"))
    d = w.frame_folder("elsewhere", [_rgb(i) for i in range(3)])
    args = _with_input(_stream(w, "--method", "adabn", "--resume"), d)
    return Case(args, "error", "--input is not the run's", out=w.root / "run")


def _rgb(seed: int) -> Any:
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 64, 3), dtype=np.uint8))


# --- a run folder's files are checked where they are read --------------------------------------------


def _tamper_checkpoint(run: Path, **changes: Any) -> None:
    path = run / "checkpoints" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt.update(changes)
    torch.save(ckpt, path)


def c_adapt_checkpoint_step_tampered(w: Workspace) -> Case:
    _ok(w.adapt())
    _tamper_checkpoint(w.root / "run", step=-5)
    return Case(w.adapt("--resume"), "error", "last.pt: field 'step' holds -5; expected an integer >= 0",
                out=w.root / "run")  # fmt: skip


def c_adapt_checkpoint_step_past_the_run(w: Workspace) -> Case:
    _ok(w.adapt())
    _tamper_checkpoint(w.root / "run", step=10**9)
    line = "field 'step' holds 1000000000; expected an integer in [0, 1]"
    return Case(w.adapt("--resume"), "error", line, out=w.root / "run")


def c_adapt_checkpoint_with_nan_weights(w: Workspace) -> Case:
    _ok(w.adapt())
    path = w.root / "run" / "checkpoints" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    name = next(k for k, v in ckpt["state"]["method"].items() if v.is_floating_point())
    ckpt["state"]["method"][name] = torch.full_like(ckpt["state"]["method"][name], float("nan"))
    torch.save(ckpt, path)
    line = f"last.pt: field 'state.method.{name}' holds 'NaN or inf values'; expected finite numbers"
    return Case(w.adapt("--resume"), "error", line, out=w.root / "run")


def c_stream_checkpoint_position_tampered(w: Workspace) -> Case:
    _ok(_stream(w, "--method", "adabn"))
    _tamper_checkpoint(w.root / "run", next_input="four")
    line = "last.pt: field 'next_input' holds 'four'; expected an integer >= 0"
    return Case(_stream(w, "--method", "adabn", "--resume"), "error", line, out=w.root / "run")


def c_stream_checkpoint_totals_tampered(w: Workspace) -> Case:
    _ok(_stream(w, "--method", "adabn"))
    path = w.root / "run" / "checkpoints" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["totals"]["conf"] = torch.zeros(3, 3, dtype=torch.int64)
    torch.save(ckpt, path)
    line = "field 'totals.conf' holds 'a tensor of shape [3, 3]'; expected an integer tensor of shape [5x5]"
    return Case(_stream(w, "--method", "adabn", "--resume"), "error", line, out=w.root / "run")


def c_run_json_kind_tampered(w: Workspace) -> Case:
    _ok(w.adapt())
    (w.root / "run" / "run.json").write_text(json.dumps({"schema": 2, "kind": 7, "settings": {}}))
    line = "run.json: field 'kind' holds 7; expected one of adapt, stream"
    return Case(w.adapt("--resume"), "error", line, out=w.root / "run")


def c_config_json_not_an_object(w: Workspace) -> Case:
    _ok(w.adapt())
    (w.root / "run" / "config.json").write_text("[1, 2]\n")
    return Case(
        w.adapt("--resume"), "error", "config.json: holds [1, 2]; expected an object", out=w.root / "run"
    )


CASES = {name[2:]: fn for name, fn in sorted(globals().items()) if name.startswith("c_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_right_answer(
    name: str, tmp_path: Path, lraspp_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = Workspace(tmp_path / "ws", lraspp_checkpoint)
    case = CASES[name](w)
    for module, stub in case.extra.pop("modules", {}).items():
        monkeypatch.setitem(sys.modules, module, stub)
    after = case.extra.pop("after", None)
    cleanup = case.extra.pop("cleanup", None)
    try:
        check_case(case, w)
        if after is not None:
            after()
    finally:
        if cleanup is not None:
            cleanup()
