"""Data-parallel adaptation: real 2-process gloo runs on CPU with the lraspp model on tiny frames.

One uninterrupted 2-process run (``torchrun tests/dist_worker.py``, each process dumping what it
ends with) is shared by the tests: processes agree bit for bit, the run matches one process with
twice the batch, and a run whose second process is SIGKILLed (``stvm adapt --nproc-per-node 2``)
then resumed (``torchrun -m stvm_sdk.cli adapt --resume``) ends bit-identical to it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from support import make_frames

from stvm_sdk import AdaptConfig, adapt
from stvm_sdk.data import scan_frames
from stvm_sdk.data.batches import BatchLoader

WORKER = Path(__file__).with_name("dist_worker.py")
ITERS = 6
# Two things differ by design between N processes of batch B and one process of batch N*B
# (stvm_sdk/distributed.py): per-sample draws come from a stream per process, and MOCM pairs
# samples within a process's batch. These settings make both deterministic (no augmentation; MOCM
# pastes every class of a sample onto itself, whatever its partner), so the comparison covers the
# rest: sharding, DDP averaging, the global-batch metric loss and its pixel sampling (8 per class:
# random), sync BN, the decision-0 pass, BN buffer averaging and the teacher's EMA.
CONFIG = {
    # Valid-pixel normalisation: with the class-mean default a 1-pixel class weighs as much as road, so a
    # float-level argmax flip of a few teacher pixels (a handful of 8192 within a few steps, even after steps
    # that match to 7 digits) moves the runs ~1% apart by step 6: chaos, not a difference in the global batch.
    "methods": {
        "stvm": {
            "normalize": "valid",
            # BN in train mode: batch statistics, sync BN and buffer averaging are exercised
            "student_bn": "train",
            "metric": {"warmup": 1, "pixels_per_class": 8},
            "mix": {"patch": 8, "class_fraction": 1.0, "tau": 0.0},
            "aug": {"jitter_prob": 0.0, "blur_prob": 0.0},
        }
    },
    "data": {"batch_size": 2, "crop": [32, 64]},
    "run": {"iters": ITERS, "seed": 3, "log_every": 1, "checkpoint_every": 2, "sync_bn": True},
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 processes on 2 cores
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.fixture(scope="module")
def two_procs(lraspp_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """An uninterrupted 2-process run of CONFIG and each process's final networks."""
    root = tmp_path_factory.mktemp("dist")
    images, _ = make_frames(root / "data")
    config, dump = root / "config.json", root / "dump"
    config.write_text(json.dumps(CONFIG))
    dump.mkdir()
    args = [str(lraspp_checkpoint), str(images), str(root / "run"), str(dump), str(config)]
    proc = subprocess.run(
        [*TORCHRUN, str(WORKER), *args], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return SimpleNamespace(
        source=lraspp_checkpoint, images=images, config=config, run=root / "run", ranks=ranks
    )


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sharded_batches_are_slices_of_the_global_batch(frames: tuple[Path, Path]) -> None:
    folder = scan_frames(*frames)
    kw = {"crop": (16, 24), "resize": None, "seed": 5}
    whole = BatchLoader(folder.frames, batch_size=4, **kw)  # type: ignore[arg-type]
    shards = [BatchLoader(folder.frames, batch_size=2, shard=(r, 2), **kw) for r in (0, 1)]  # type: ignore[arg-type]
    for step in (0, 1, 7):
        assert torch.equal(whole.batch(step), torch.cat([s.batch(step) for s in shards]))


def test_every_process_ends_with_identical_networks(two_procs: SimpleNamespace) -> None:
    a, b = two_procs.ranks
    for net in ("student", "teacher", "metric"):
        assert a[net].keys() == b[net].keys()
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs between processes"
    assert "proxies" in a["metric"]
    summary = json.loads((two_procs.run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == ITERS
    logged = [r["step"] for r in _log(two_procs.run) if "loss" in r]
    assert logged == list(range(1, ITERS + 1))  # rank 0 alone logs


def test_two_processes_of_batch_b_train_like_one_process_of_batch_2b(
    two_procs: SimpleNamespace, tmp_path: Path
) -> None:
    cfg = AdaptConfig.from_dict({**CONFIG, "data": {**CONFIG["data"], "batch_size": 4}})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker; 2 OpenMP threads on a busy 2-core machine are far slower
    try:
        one = adapt(two_procs.source, two_procs.images, config=cfg, out_dir=tmp_path / "one", progress=False)
    finally:
        torch.set_num_threads(threads)
    two = two_procs.ranks[0]
    source = torch.load(two_procs.source, weights_only=True)["state_dict"]
    for net, module in (("student", one.student.module), ("teacher", one.teacher.module)):  # type: ignore[union-attr]
        mine = module.state_dict()
        params = [k for k, _ in module.named_parameters()]
        # The update each run made to the parameters agrees to float precision, far inside the 1e-3 bound.
        d_one = torch.cat([(mine[k] - source[k]).flatten() for k in params])
        d_two = torch.cat([(two[net][k] - source[k]).flatten() for k in params])
        assert d_one.norm() > 1e-4, "the runs did not train: the comparison would mean nothing"
        assert (d_two - d_one).norm() / d_one.norm() < 1e-3, net
        for k in set(mine) - set(params):  # BN statistics
            torch.testing.assert_close(two[net][k], mine[k], rtol=1e-4, atol=1e-5, msg=f"{net}.{k}")
    assert "metric" in one.extras
    for k, v in one.extras["metric"].state_dict().items():  # proxies move ~0.1 per step (lr x1000)
        torch.testing.assert_close(two["metric"][k], v, rtol=1e-4, atol=1e-5, msg=f"metric.{k}")
    logs = [[r for r in _log(run) if "loss" in r] for run in (one.run_dir, two_procs.run)]
    for r1, r2 in zip(*logs, strict=True):
        for key in ("loss", "loss_metric", "mean_weight"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-4), (r1["step"], key)
        assert r2["pseudo_hist"] == r1["pseudo_hist"]  # the same global batch, the same teacher


def _worker_pid(launcher: int, rank: int) -> int:
    """The pid of the launcher's child process that torchrun gave RANK=rank."""
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == launcher and f"RANK={rank}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except (OSError, ValueError, IndexError):
            continue
    raise AssertionError(f"no worker with RANK={rank} under pid {launcher}")


def test_killed_process_stops_the_run_and_resume_matches_the_uninterrupted_run(
    two_procs: SimpleNamespace, tmp_path: Path
) -> None:
    run = tmp_path / "killed"
    args = ["adapt", "--source", str(two_procs.source), "--target", str(two_procs.images), "--out", str(run)]
    args += ["--config", str(two_procs.config), "--json"]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "stvm_sdk.cli", *args, "--nproc-per-node", "2"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    ckpt = run / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(_worker_pid(launcher.pid, 1), signal.SIGKILL)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 1, err
    assert out == "" and not list(run.glob("model.*"))
    expected = (
        r"error: process 1 of 2 \(pid \d+\) was killed by SIGKILL; the whole run stopped\. Its last "
        rf"checkpoint \(step \d+\) is in {re.escape(str(run))}: rerun the same command with --resume\."
    )
    assert re.fullmatch(expected, err.strip().splitlines()[-1]), err
    assert 2 <= torch.load(ckpt, weights_only=True)["step"] < ITERS

    resumed = subprocess.run(
        [*TORCHRUN, "-m", "stvm_sdk.cli", *args, "--resume"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["steps"] == ITERS
    for name in ("student.safetensors", "teacher.safetensors"):
        a = load_file(two_procs.run / name)
        b = load_file(run / name)
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs from the uninterrupted run"
    assert [r["step"] for r in _log(run) if "loss" in r] == list(range(1, ITERS + 1))
