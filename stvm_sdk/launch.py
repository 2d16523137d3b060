"""``stvm adapt --nproc-per-node N``: ``torchrun --standalone`` started for you from the CLI.

Runs ``python -m stvm_sdk.cli <args>`` in N processes on this machine through PyTorch's own elastic
agent (a c10d rendezvous on a free local port, no restarts) and waits. The workers are ordinary
torchrun workers, so this path and ``torchrun -m stvm_sdk.cli adapt ...`` are the same run. When a
process dies, the agent stops the others; instead of its multi-line report we print one line that
names the process and says how to resume from the last checkpoint (rank 0 writes one every
``run.checkpoint_every`` steps).
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stvm_sdk.distributed import LAUNCHED_ENV
from stvm_sdk.errors import StvmError


def launch(nproc: int, args: Sequence[str], run_dir: Path) -> int:
    """Run ``python -m stvm_sdk.cli *args`` in ``nproc`` local processes; return the exit code.

    Args:
        nproc: processes (one per GPU; on CPU each gets ``cpu_count // nproc`` threads).
        args: the CLI command line of one worker, e.g. ``["adapt", "--source", ...]``.
        run_dir: the run directory the workers use (for the resume hint after a failure).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"stvm-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # port 0: the store binds a free port (torchrun --standalone)
        max_restarts=0,  # a restart would begin at step 0; resuming is the user's explicit choice
        monitor_interval=0.1,
    )
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
    with _environ({LAUNCHED_ENV: "1", "OMP_NUM_THREADS": threads}), _quiet("torch.distributed.elastic"):
        try:
            elastic_launch(config, sys.executable)("-u", "-m", "stvm_sdk.cli", *args)
        except ChildFailedError as err:
            return _report(err.failures, nproc, run_dir)
        except SignalException:
            print(f"interrupted: the workers were stopped. {_resume_hint(run_dir)}", file=sys.stderr)
            return 130
    return 0


def _report(failures: dict[int, Any], nproc: int, run_dir: Path) -> int:
    """One line for the failure that caused the others; the exit code for the launcher."""
    items = sorted(failures.items())
    # SIGTERM is how the agent stops the survivors: the cause is another process.
    killed = [(r, f) for r, f in items if f.exitcode < 0 and f.signal_name() != "SIGTERM"]
    if not killed and all(f.exitcode == StvmError.exit_code for _, f in items):
        return StvmError.exit_code  # a user error: the process that met it printed it already
    rank, f = killed[0] if killed else min(items, key=lambda rf: rf[1].timestamp)
    how = (
        f"was killed by {f.signal_name()}"
        if f.exitcode < 0
        else f"failed with exit code {f.exitcode} (its message is above)"
    )
    print(
        f"error: process {rank} of {nproc} (pid {f.pid}) {how}; the whole run stopped. "
        f"{_resume_hint(run_dir)}",
        file=sys.stderr,
    )
    return 1


def _resume_hint(run_dir: Path) -> str:
    from stvm_sdk.rundir import RunDir

    step = RunDir(run_dir).step_of_checkpoint()
    if step is None:
        return "No checkpoint was written yet: rerun the same command to start again."
    return f"Its last checkpoint (step {step}) is in {run_dir}: rerun the same command with --resume."


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the workers (they inherit ours), restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Silence a logger below CRITICAL (the agent's own failure report: we print ours)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
