"""Where the SDK writes: folders it made, never over inputs; atomic writes that fail in one line."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from support import honour_permissions, tree_hashes

from stvm_sdk.boundary.outputs import (
    MARKER,
    atomic_write,
    claim_dir,
    claim_file,
    read_marker,
    remove_leftovers,
    write_bytes_atomic,
)
from stvm_sdk.errors import OutputError
from stvm_sdk.models.io import atomic_save


@pytest.fixture
def file_size_limit() -> Iterator[None]:
    """Writes beyond 64 KiB fail with EFBIG in this process (a real kernel limit, restored after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB file system (tmpfs), where it can be mounted here (root with mount rights)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: " + res.stderr.decode().strip()[:80])
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_new_or_empty_folders_are_claimed_and_marked(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for p in (tmp_path / "new" / "deep", tmp_path / "empty"):
        assert claim_dir(p, "export") == p
        assert read_marker(p)["kind"] == "export"  # type: ignore[index]
        assert claim_dir(p, "export") == p  # ours now: claiming again is fine


def test_a_users_folder_is_refused_and_left_exactly_as_it_was(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "model.pt").write_text("mine")
    (mine / "checkpoints" / "readme.txt").write_text("mine too")
    before = tree_hashes(mine)
    with pytest.raises(OutputError, match="did not make and it is not empty"):
        claim_dir(mine, "run")
    assert tree_hashes(mine) == before and not (mine / MARKER).exists()


def test_another_jobs_folder_is_refused(tmp_path: Path) -> None:
    claim_dir(tmp_path / "x", "export")
    with pytest.raises(OutputError, match=r"holds an export \(stvm export\), not an adaptation run"):
        claim_dir(tmp_path / "x", "run")


def test_inputs_inside_the_output_or_outputs_inside_an_input_folder_are_refused(tmp_path: Path) -> None:
    (tmp_path / "frames").mkdir()
    model = tmp_path / "models" / "m.pt"
    model.parent.mkdir()
    model.write_text("m")
    with pytest.raises(OutputError, match="contains the input"):
        claim_dir(tmp_path / "models", "run", inputs=[model])
    with pytest.raises(OutputError, match="is inside the input folder"):
        claim_dir(tmp_path / "frames" / "out", "predict", inputs=[tmp_path / "frames"])
    with pytest.raises(OutputError, match="contains the input"):
        claim_file(model, ours=lambda _p: True, inputs=[model])
    claim_dir(tmp_path / "models" / "run1", "run", inputs=[model])  # beside the model: fine


def test_a_file_the_sdk_did_not_write_is_never_replaced(tmp_path: Path) -> None:
    theirs = tmp_path / "source.pt"
    theirs.write_text("a user's file")
    with pytest.raises(OutputError, match="was not written by stvm_sdk"):
        claim_file(theirs, ours=lambda _p: False)
    assert claim_file(tmp_path / "new.pt", ours=lambda _p: False) == tmp_path / "new.pt"


def test_a_failed_write_keeps_the_previous_file_and_says_why(tmp_path: Path, file_size_limit: None) -> None:
    target = tmp_path / "ckpt.pt"
    atomic_save({"step": 1}, target)
    with pytest.raises(OutputError) as err:
        atomic_save({"w": torch.zeros(100_000)}, target, then="the previous checkpoint is kept")
    message = str(err.value)
    assert (
        str(target) in message and "file-size limit" in message and "previous checkpoint is kept" in message
    )
    assert "\n" not in message
    assert torch.load(target, weights_only=True) == {"step": 1}  # the old file, intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left behind


def test_a_full_disk_is_named_as_the_cause(small_disk: Path) -> None:
    target = small_disk / "ckpt.pt"
    atomic_save({"step": 1}, target)
    with pytest.raises(OutputError, match="the disk is full"):
        atomic_save({"w": torch.zeros(1_000_000)}, target)  # 4 MB on a 1 MiB disk
    assert torch.load(target, weights_only=True) == {"step": 1}


def test_a_read_only_folder_is_one_line(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with honour_permissions(), pytest.raises(OutputError, match="permission denied"):
            write_bytes_atomic(b"x", ro / "f.bin")
    finally:
        ro.chmod(0o755)


def test_temporaries_of_killed_processes_are_removed_when_the_folder_is_claimed_again(tmp_path: Path) -> None:
    out = claim_dir(tmp_path / "run", "run")
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    (out / "checkpoints").mkdir()
    stale = out / "checkpoints" / f".last.pt.tmp-{dead.pid}"
    stale.write_bytes(b"")
    staging = out / f".model.onnx.staging-{dead.pid}"
    staging.mkdir()
    mine = out / f".other.tmp-{os.getppid()}"  # a live process's temporary stays
    mine.write_bytes(b"")
    claim_dir(out, "run")
    assert not stale.exists() and not staging.exists() and mine.exists()
    assert remove_leftovers(out) == []


def test_atomic_write_creates_missing_parents_and_replaces(tmp_path: Path) -> None:
    p = tmp_path / "a" / "b.json"
    atomic_write(p, lambda fh: fh.write(b'{"v": 1}'))
    atomic_write(p, lambda fh: fh.write(b'{"v": 2}'))
    assert json.loads(p.read_text()) == {"v": 2}
