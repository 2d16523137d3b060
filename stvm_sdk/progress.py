"""A Rich progress bar on stderr for long loops (ETA, losses, mean reliability), or nothing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SHOWN = ("loss_st", "loss_metric", "loss_entropy", "mean_weight")


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


@contextmanager
def progress_bar(total: int, start: int = 0, enabled: bool = True, description: str = "") -> Iterator[_Bar]:
    """Yield an object with ``update(done, record)``; a no-op when disabled."""
    if not enabled or total == 0:
        yield _Bar(None, None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total, completed=start, info="")
        yield _Bar(progress, task)
