"""Progress on stderr for long loops: a Rich bar on a terminal; without one (a log file, CI, a pipe)
a plain line every ``STVM_PROGRESS_EVERY`` seconds (default 30) with step, losses, images/s and ETA."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SHOWN = ("loss_st", "loss_metric", "loss_entropy", "mean_weight", "miou")
LINE_FIELDS = ("loss", *SHOWN)
DEFAULT_INTERVAL_S = 30.0


class _Bar:
    def __init__(self, progress: Any, task: Any) -> None:
        self.progress, self.task = progress, task

    def update(self, done: int, record: dict[str, Any] | None) -> None:
        if self.progress is None:
            return
        fields = {}
        if record is not None:
            fields["info"] = "  ".join(f"{k}={record[k]:.3f}" for k in SHOWN if k in record)
        self.progress.update(self.task, completed=done, **fields)


class _Lines:
    """One line on stderr at the first step, then at most every ``interval`` seconds, and at the end."""

    def __init__(self, total: int, start: int, description: str, interval: float) -> None:
        self.total, self.start, self.description, self.interval = total, start, description, interval
        self.t0 = time.monotonic()
        self.last_print: float | None = None
        self.record: dict[str, Any] = {}

    def update(self, done: int, record: dict[str, Any] | None) -> None:
        if record is not None:
            self.record = record
        now = time.monotonic()
        due = self.last_print is None or now - self.last_print >= self.interval or done >= self.total
        if due:
            self.last_print = now
            print(self.line(done, now), file=sys.stderr, flush=True)

    def line(self, done: int, now: float) -> str:
        parts = [f"{self.description}: step {done}/{self.total} ({100 * done / self.total:.0f} %)"]
        parts += [f"{k} {self.record[k]:.3f}" for k in LINE_FIELDS if isinstance(self.record.get(k), float)]
        if "images_per_s" in self.record:
            parts.append(f"images/s {self.record['images_per_s']:.1f}")
        elapsed = now - self.t0
        if done > self.start and done < self.total:
            parts.append(f"ETA {_duration(elapsed / (done - self.start) * (self.total - done))}")
        parts.append(f"elapsed {_duration(elapsed)}")
        return "  ".join(parts)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def interval_s() -> float:
    """Seconds between progress lines when stderr is not a terminal (``STVM_PROGRESS_EVERY``)."""
    try:
        return max(0.0, float(os.environ.get("STVM_PROGRESS_EVERY", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


@contextmanager
def progress_bar(
    total: int, start: int = 0, enabled: bool = True, description: str = ""
) -> Iterator[_Bar | _Lines]:
    """Yield an object with ``update(done, record)``: a Rich bar when stderr is a terminal, plain
    progress lines when it is not; a no-op when disabled."""
    if not enabled or total == 0:
        yield _Bar(None, None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield _Lines(total, start, description, interval_s())
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, completed=start, info="")
        yield _Bar(progress, task)
