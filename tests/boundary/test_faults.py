"""Faults during a run lose nothing: a failed checkpoint keeps the last one, a resume cleans up after a
kill, a handed-over run folder never runs its pickles, and every ``--json`` prints one JSON object."""

from __future__ import annotations

import json
import os
import pickle
import resource
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from stvm_sdk.cli.app import app
from support import TinySegNet
from typer.testing import CliRunner

from stvm_sdk import AdaptConfig, adapt, load_run
from stvm_sdk.errors import ModelLoadError, OutputError

CFG = AdaptConfig().with_overrides(
    {"run.iters": 4, "run.checkpoint_every": 2, "run.log_every": 1, "data.batch_size": 2,
     "data.crop": (32, 64), "methods.stvm.metric.warmup": 1, "methods.stvm.mix.patch": 8,
     "methods.stvm.student_bn": "train"}
)  # fmt: skip


def _limit_writes_after(step: int) -> Any:
    """An ``on_log`` callback that, from ``step`` on, limits file writes to 1 KiB (EFBIG beyond)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def on_log(record: dict[str, Any]) -> None:
        if record["step"] == step:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))

    def restore() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)

    on_log.restore = restore  # type: ignore[attr-defined]
    return on_log


def test_a_write_failure_at_the_end_of_a_run_keeps_the_last_checkpoint_and_resumes(
    frames: tuple[Path, Path], tmp_path: Path
) -> None:
    run, net = tmp_path / "run", TinySegNet()
    on_log = _limit_writes_after(3)  # after the step-2 checkpoint: the final save fails
    try:
        with pytest.raises(OutputError) as err:
            adapt(net, frames[0], config=CFG, out_dir=run, progress=False, on_log=on_log)
    finally:
        on_log.restore()
    message = str(err.value)
    assert "\n" not in message and str(run) in message and "file-size limit" in message
    assert "rerun with --resume" in message
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 2  # the last good state, loadable
    assert not [p for p in run.rglob(".*tmp-*")]
    done = adapt(net, frames[0], config=CFG, out_dir=run, progress=False, resume=True)
    assert done.metrics["steps"] == 4 and (run / "model.pt").is_file()


def test_resume_removes_what_a_killed_checkpoint_write_left(
    frames: tuple[Path, Path], tmp_path: Path
) -> None:
    run, net = tmp_path / "run", TinySegNet()
    adapt(net, frames[0], config=CFG, out_dir=run, progress=False)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = run / "checkpoints" / f".last.pt.tmp-{dead.pid}"
    stale.write_bytes(b"")  # what SIGKILL during torch.save leaves: a 0-byte temporary
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 9, "lo')  # and a log line cut short
    adapt(net, frames[0], config=CFG, out_dir=run, progress=False, resume=True)
    assert not stale.exists()
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def test_load_run_never_unpickles_without_the_callers_opt_in(
    frames: tuple[Path, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    adapt(TinySegNet(), frames[0], config=CFG, out_dir=run, progress=False)  # a user class: saved as pickle
    with pytest.raises(ModelLoadError, match="trust_pickle=True"):
        load_run(run)
    assert load_run(run, trust_pickle=True).model.num_classes == 5

    flag = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {flag}",))

    (run / "student.pt").write_bytes(pickle.dumps(Exploit()))  # a run folder someone hands you
    with pytest.raises(ModelLoadError):
        load_run(run)
    assert not flag.exists()


RUNNER = CliRunner()


def _json_commands(lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp: Path) -> list[list[str]]:
    images, labels = (str(p) for p in frames)
    model = str(lraspp_checkpoint)
    fast = ["--iters", "1", "--batch-size", "2", "--crop", "32x64"]
    onnx = str(tmp / "export" / "model.onnx")
    return [
        ["adapt", "--source", model, "--target", images, "--labels", labels,
         "--out", str(tmp / "run"), *fast],
        ["eval", model, "--images", images, "--labels", labels],
        ["info", model],
        ["export", model, "--out", str(tmp / "export"), "--shape", "32x64", "--verify-frames", "1"],
        ["bench", model, onnx, "--shape", "32x64", "--iters", "2", "--warmup", "1"],
        ["predict", onnx, "--input", images, "--out", str(tmp / "pred")],
        ["synth", "--n", "2", "--size", "32x64", "--out", str(tmp / "synth"), "--workers", "1"],
        ["train-source", "--images", images, "--labels", labels, "--out", str(tmp / "src.pt"),
         "--num-classes", "5", "--iters", "1", "--batch-size", "2", "--crop", "32x64"],
    ]  # fmt: skip


def test_every_json_command_prints_exactly_one_json_object_on_stdout(
    lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    for args in _json_commands(lraspp_checkpoint, frames, tmp_path):
        res = RUNNER.invoke(app, [*args, "--json"])
        assert res.exit_code == 0, (args[0], res.stderr, res.exception)
        obj = json.loads(res.stdout)  # the whole of stdout is one JSON object
        assert isinstance(obj, dict) and res.stdout.count("\n") == 1, (args[0], res.stdout[:300])


def test_demo_json_is_one_object_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stvm_sdk.demo import DemoSettings

    tiny = DemoSettings(
        size=(64, 128),
        n_source=6,
        n_target=6,
        n_val=3,
        source_iters=2,
        adapt_iters=2,
        warmup=1,
        bench_iters=1,
    )
    monkeypatch.setattr(DemoSettings, "quick", classmethod(lambda cls: tiny))  # sizes only; every stage real
    args = ["demo", "--quick", "--json", "--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")]
    res = RUNNER.invoke(app, args)
    assert res.exit_code == 0, (res.stderr, res.exception)
    assert isinstance(json.loads(res.stdout), dict) and res.stdout.count("\n") == 1
