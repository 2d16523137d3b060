"""The run directory: every path of a run, its config and inputs, atomic checkpoints, and resume.

Layout::

    run_dir/.stvm_sdk.json       marker: the SDK made this folder (stvm_sdk.boundary.outputs)
    run_dir/config.json          the full AdaptConfig (resume refuses a different one)
    run_dir/inputs.json          source model and target frames, with content fingerprints (idem)
    run_dir/metrics.jsonl        one JSON object every `run.log_every` steps
    run_dir/checkpoints/last.pt  networks + optimiser + step, written atomically
    run_dir/model.safetensors, teacher.safetensors, student.safetensors, model.ts, summary.json   at the end
    run_dir/<family>/            the deliverable in its library's own form (hf/, smp/, torchvision/)

The models are safetensors with the SDK's metadata when their family is known (torchvision, smp, hf);
a user's own module or a TorchScript model is saved as ``model.pt`` (pickle / TorchScript) instead,
and runs written before the switch (``model.pt`` checkpoint dicts) still load and resume.

A run directory is new, empty, or one the SDK made for a run; anything else is refused before a file
is written (:func:`~stvm_sdk.boundary.outputs.claim_dir`), and no input may lie inside it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stvm_sdk.boundary.outputs import atomic_write, claim_dir, write_error, write_json_atomic
from stvm_sdk.config import AdaptConfig
from stvm_sdk.errors import ConfigError, DataError
from stvm_sdk.models.io import atomic_save

CHECKPOINT_NAME = "last.pt"
MODEL_SUFFIXES = (".safetensors", ".pt")  # what a run's models are saved as, newest first
KEEP_LAST = "the last checkpoint is kept: fix that and rerun with --resume"  # ends a failed write's line


@dataclass
class RunDir:
    """Paths and persistence of one adaptation run."""

    path: Path

    @classmethod
    def open(
        cls,
        out_dir: str | os.PathLike[str] | None,
        cfg: AdaptConfig,
        resume: bool,
        *,
        inputs: dict[str, Any] | None = None,
        input_paths: Iterable[str | os.PathLike[str] | None] = (),
    ) -> RunDir:
        """Create a new run directory, or reopen one to resume (same config, same inputs).

        Args:
            inputs: ``{"source": {...}, "target": {...}}`` with a ``sha256`` each (recorded; compared
                on resume).
            input_paths: the files and folders the run reads; none may lie inside the run directory.
        """
        if out_dir is None:
            out_dir = Path("runs") / time.strftime(f"{cfg.method}-%Y%m%d-%H%M%S")
        run = cls(Path(out_dir))
        claim_dir(run.path, "run", inputs=input_paths)
        if resume and run.config_path.is_file():
            previous = AdaptConfig.from_dict(json.loads(run.config_path.read_text()))
            if previous != cfg:
                diff = _diff(previous.to_dict(), cfg.to_dict())
                raise ConfigError(
                    f"cannot resume {run.path}: the config differs ({diff}); resume with the same options"
                )
            run._check_inputs(inputs)
        elif not resume and run.checkpoint.is_file():
            raise DataError(
                f"{run.path} already holds a run: pass --resume to continue it, or choose another --out"
            )
        write_json_atomic(cfg.to_dict(), run.config_path)
        if inputs is not None:
            write_json_atomic(inputs, run.inputs_path)
        return run

    def _check_inputs(self, inputs: dict[str, Any] | None) -> None:
        try:
            saved = json.loads(self.inputs_path.read_text())
        except (OSError, ValueError):
            return  # a run started before inputs were recorded
        for key, option in (("source", "--source"), ("target", "--target")):
            was, now = saved.get(key), (inputs or {}).get(key)
            if was and now and was.get("sha256") != now.get("sha256"):
                what = (
                    f"{now['path']} differs from the run's {was.get('path')} in content"
                    if now.get("path")
                    else "the model passed in memory has other weights than the run's source"
                )
                raise ConfigError(
                    f"cannot resume {self.path}: {option} is not the run's ({what}); resume with the run's "
                    f"{option}, or start a new run with another --out"
                )

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoints" / CHECKPOINT_NAME

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def inputs_path(self) -> Path:
        return self.path / "inputs.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    def model_path(self, role: str = "model", suffix: str | None = None) -> Path:
        """``model`` (the deliverable), ``teacher`` or ``student`` with ``suffix``; without one, the file
        the run holds (``.safetensors``, else an older run's or a pickled model's ``.pt``)."""
        if suffix is not None:
            return self.path / f"{role}{suffix}"
        for ext in MODEL_SUFFIXES:
            if (self.path / f"{role}{ext}").is_file():
                return self.path / f"{role}{ext}"
        return self.path / f"{role}{MODEL_SUFFIXES[0]}"

    def native_path(self, family: str) -> Path:
        """The folder of the deliverable in its family's own form (``hf/``, ``smp/``, ``torchvision/``)."""
        return self.path / family

    @property
    def torchscript_path(self) -> Path:
        return self.path / "model.ts"

    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        return atomic_save(state, self.checkpoint, then=KEEP_LAST)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint, or None when the run has none yet."""
        if not self.checkpoint.is_file():
            return None
        try:
            return torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise DataError(
                f"cannot read the checkpoint {self.checkpoint} ({first}): start a new run with another --out"
            ) from None

    def step_of_checkpoint(self) -> int | None:
        """The step of the last checkpoint (read lazily), or None without one."""
        if not self.checkpoint.is_file():
            return None
        return int(torch.load(self.checkpoint, map_location="cpu", weights_only=True, mmap=True)["step"])

    def write_summary(self, summary: dict[str, Any]) -> Path:
        return write_json_atomic(summary, self.summary_path)

    def log(self, record: dict[str, Any]) -> None:
        try:
            with open(self.metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise write_error(exc, self.metrics_path, KEEP_LAST) from None

    def truncate_log(self, step: int) -> None:
        """Drop log lines past ``step`` (a killed run may have logged beyond its last checkpoint)."""
        if self.metrics_path.is_file():
            lines = self.metrics_path.read_text().splitlines()
            keep = [ln for ln in lines if (s := _step(ln)) is not None and s <= step]
            atomic_write(self.metrics_path, lambda fh: fh.write("".join(ln + "\n" for ln in keep).encode()))


def _step(line: str) -> int | None:
    """The step of a log line, or None for a line a kill cut short."""
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return None


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
