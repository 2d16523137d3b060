"""The run directory: config, metrics log, atomic checkpoints, and resume.

Layout::

    run_dir/config.json        the full AdaptConfig (resume refuses a different one)
    run_dir/metrics.jsonl      one JSON object every `run.log_every` steps
    run_dir/checkpoints/last.pt  networks + optimiser + step, written atomically
    run_dir/model.pt, teacher.pt, student.pt, model.ts, summary.json   at the end
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stvm_sdk.config import AdaptConfig
from stvm_sdk.errors import ConfigError, DataError
from stvm_sdk.models.io import atomic_save

CHECKPOINT_NAME = "last.pt"


@dataclass
class RunDir:
    """Paths and persistence of one adaptation run."""

    path: Path

    @classmethod
    def open(cls, out_dir: str | os.PathLike[str] | None, cfg: AdaptConfig, resume: bool) -> RunDir:
        """Create a new run directory, or reopen one to resume (the config must be the same)."""
        if out_dir is None:
            out_dir = Path("runs") / time.strftime(f"{cfg.method}-%Y%m%d-%H%M%S")
        run = cls(Path(out_dir))
        saved = run.path / "config.json"
        if resume and saved.is_file():
            previous = AdaptConfig.from_dict(json.loads(saved.read_text()))
            if previous != cfg:
                diff = _diff(previous.to_dict(), cfg.to_dict())
                raise ConfigError(
                    f"cannot resume {run.path}: the config differs ({diff}); resume with the same options"
                )
        elif not resume and run.checkpoint.is_file():
            raise DataError(
                f"{run.path} already holds a run: pass --resume to continue it, or choose another --out"
            )
        try:
            run.path.mkdir(parents=True, exist_ok=True)
            atomic_save(
                cfg.to_dict(), saved, saver=lambda obj, f: Path(f).write_text(json.dumps(obj, indent=2))
            )
        except OSError as exc:
            raise DataError(f"cannot write the run directory {run.path}: {exc.strerror}") from None
        return run

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoints" / CHECKPOINT_NAME

    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        return atomic_save(state, self.checkpoint)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint, or None when the run has none yet."""
        if not self.checkpoint.is_file():
            return None
        return torch.load(self.checkpoint, map_location="cpu", weights_only=True)

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def truncate_log(self, step: int) -> None:
        """Drop log lines past ``step`` (a killed run may have logged beyond its last checkpoint)."""
        log = self.path / "metrics.jsonl"
        if log.is_file():
            keep = [ln for ln in log.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= step]
            log.write_text("".join(ln + "\n" for ln in keep))


def _diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str:
    out = []
    for k in a:
        if isinstance(a[k], dict):
            d = _diff(a[k], b.get(k, {}), f"{prefix}{k}.")
            if d:
                out.append(d)
        elif a[k] != b.get(k):
            out.append(f"{prefix}{k}: {a[k]!r} -> {b.get(k)!r}")
    return ", ".join(out)
