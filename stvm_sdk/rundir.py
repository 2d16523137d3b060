"""The run directory, one skeleton for offline runs (``adapt``) and streams (``stream``): every path of a
run, its config, settings and inputs, versioned atomic checkpoints, summaries, and resume.

Layout::

    run_dir/.stvm_sdk.json       marker: the SDK made this folder (stvm_sdk.boundary.outputs)
    run_dir/run.json             {"schema", "kind": "adapt" | "stream", "settings"} (resume refuses others)
    run_dir/config.json          the full, resolved AdaptConfig (resume refuses a different one)
    run_dir/inputs.json          source model and target frames, with content fingerprints (idem)
    run_dir/metrics.jsonl        one JSON object per record (every `run.log_every` steps; per window)
    run_dir/checkpoints/last.pt  {"schema", "kind", "step", "state": {"method", "optimizer", ...}, ...}
    run_dir/model.safetensors, teacher.safetensors, student.safetensors, model.ts, summary.json   at the end
    run_dir/<family>/            the deliverable in its library's own form (hf/, smp/, torchvision/)

The models are safetensors with the SDK's metadata when their family is known (torchvision, smp, hf);
a user's own module or a TorchScript model is saved as ``model.pt`` (pickle / TorchScript) instead,
and runs written before the switch (``model.pt`` checkpoint dicts) still load and resume.

A run directory is new, empty, or one the SDK made for a run; anything else is refused before a file
is written (:func:`~stvm_sdk.boundary.outputs.claim_dir`), and no input may lie inside it. While a
process runs in it, the folder is locked (``run_dir/.stvm_sdk.lock``, :func:`~stvm_sdk.boundary.outputs.
lock_dir`): a second process on it is one line; :meth:`RunDir.release` (or the process's exit) unlocks it.
Folders of older versions (no ``run.json``, a ``stream.json``, schema-1 checkpoints and configs) still
resume and load: they are read into today's schema; a folder of another kind, or of a newer schema, is
one line. Every field read back from the folder (run.json, config.json, inputs.json, the checkpoint) is
checked where it is read (:class:`~stvm_sdk.boundary.fields.Fields`): a tampered or damaged one is one
line naming the file and the field.

Nothing non-finite is written: a checkpoint holding NaN or inf is refused (:class:`DivergedError`) and the
previous one is kept.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stvm_sdk.boundary.fields import Fields
from stvm_sdk.boundary.outputs import (
    FolderLock,
    atomic_write,
    claim_dir,
    lock_dir,
    write_error,
    write_json_atomic,
)
from stvm_sdk.config import AdaptConfig
from stvm_sdk.errors import ConfigError, DataError, DivergedError
from stvm_sdk.methods.registry import migrate
from stvm_sdk.models.io import atomic_save, non_finite
from stvm_sdk.schema import SCHEMA, with_schema

RUN_SCHEMA = SCHEMA  # run.json, checkpoints and summaries; 1: no run.json, per-kind checkpoint layouts
KINDS = ("adapt", "stream")
CHECKPOINT_NAME = "last.pt"
MODEL_SUFFIXES = (".safetensors", ".pt")  # what a run's models are saved as, newest first
KEEP_LAST = "the last checkpoint is kept: fix that and rerun with --resume"  # ends a failed write's line


@dataclass
class RunDir:
    """Paths and persistence of one run (``kind`` ``"adapt"`` or ``"stream"``)."""

    path: Path
    kind: str = "adapt"
    lock: FolderLock | None = field(default=None, repr=False, compare=False)  # held by :meth:`open`

    @classmethod
    def open(
        cls,
        out_dir: str | os.PathLike[str] | None,
        cfg: AdaptConfig,
        resume: bool,
        *,
        kind: str = "adapt",
        settings: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        input_paths: Iterable[str | os.PathLike[str] | None] = (),
    ) -> RunDir:
        """Create a new run directory, or reopen one to resume (same kind, config, settings, inputs).

        Args:
            cfg: the resolved config (:func:`stvm_sdk.methods.resolve`).
            kind: ``"adapt"`` (an offline run) or ``"stream"``.
            settings: what else a resume must match (a stream's settings), as JSON values.
            inputs: ``{"source": {...}, "target": {...}}`` with a ``sha256`` each (recorded; compared
                on resume).
            input_paths: the files and folders the run reads; none may lie inside the run directory.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if out_dir is None:
            prefix = "" if kind == "adapt" else f"{kind}-"
            out_dir = Path("runs") / time.strftime(f"{prefix}{cfg.method}-%Y%m%d-%H%M%S")
        run = cls(Path(out_dir), kind)
        settings = json.loads(json.dumps(settings or {}))
        claim_dir(run.path, "run", inputs=input_paths)
        run.lock = lock_dir(run.path)
        try:
            run._open(cfg, resume, settings, inputs)
        except BaseException:
            run.release()
            raise
        return run

    def _open(
        self, cfg: AdaptConfig, resume: bool, settings: dict[str, Any], inputs: dict[str, Any] | None
    ) -> None:
        record = self._read_run_json()
        held = self._held_kind(record)
        if held is not None and held != self.kind:
            raise ConfigError(
                f"{self.path} holds {_a(held)} run, not {_a(self.kind)} run: resume it with "
                f"`stvm {held}`, or choose another --out for this one"
            )
        if resume and self.config_path.is_file():
            self._check_same(cfg, settings, inputs, record)
        elif not resume and self.checkpoint.is_file():
            raise DataError(
                f"{self.path} already holds a run: pass --resume to continue it, or choose another --out"
            )
        write_json_atomic({"schema": RUN_SCHEMA, "kind": self.kind, "settings": settings}, self.run_json_path)
        write_json_atomic(cfg.to_dict(), self.config_path)
        if inputs is not None:
            write_json_atomic(inputs, self.inputs_path)

    def release(self) -> None:
        """Unlock the folder (a no-op for a run not opened by this process)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _read_run_json(self) -> dict[str, Any] | None:
        """``run.json`` with its fields checked (None for a folder without one)."""
        raw = self._read_json(self.run_json_path)
        if raw is None:
            return None
        f = Fields(self.run_json_path, DataError)
        record = f.document(raw)
        schema = f.integer("schema", record.get("schema"), lo=1)
        if schema > RUN_SCHEMA:
            raise DataError(
                f"{self.run_json_path} has schema {schema!r}, newer than this stvm_sdk reads "
                f"({RUN_SCHEMA}): upgrade stvm_sdk, or choose another --out"
            )
        f.text("kind", record.get("kind"), choices=KINDS)
        f.mapping("settings", record.get("settings"))
        return record

    def _held_kind(self, record: dict[str, Any] | None) -> str | None:
        """The kind of run this folder already holds (None: none yet), from its ``run.json`` record.
        Folders of schema 1 have no run.json: a stream wrote stream.json, an offline run neither."""
        if record is not None:
            return str(record["kind"])
        if (self.path / "stream.json").is_file():
            return "stream"
        return "adapt" if self.config_path.is_file() else None

    def _check_same(
        self, cfg: AdaptConfig, settings: dict[str, Any], inputs: dict[str, Any] | None, record: Any
    ) -> None:
        raw = Fields(self.config_path, DataError).document(self._read_json(self.config_path))
        try:
            previous = migrate(raw)
        except ConfigError as exc:
            raise ConfigError(f"cannot resume {self.path}: its config.json does not read ({exc})") from None
        if previous != cfg:
            diff = _diff(previous.to_dict(), cfg.to_dict())
            raise ConfigError(
                f"cannot resume {self.path}: the config differs ({diff}); resume with the same options"
            )
        before = record["settings"] if record is not None else self._read_json(self.path / "stream.json")
        if before is not None and before != settings:
            raise ConfigError(
                f"cannot resume {self.path}: the {self.kind} settings differ ({_diff(before, settings)}); "
                "resume with the same options"
            )
        self._check_inputs(inputs)

    def _read_json(self, path: Path) -> Any:
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path} ({exc}): start a new run with another --out") from None

    def _check_inputs(self, inputs: dict[str, Any] | None) -> None:
        raw = self._read_json(self.inputs_path)
        if raw is None:
            return  # a run started before inputs were recorded
        f = Fields(self.inputs_path, DataError)
        saved = f.document(raw)
        target = "--target" if self.kind == "adapt" else "--input"
        for key, option in (("source", "--source"), ("target", target)):
            was, now = saved.get(key), (inputs or {}).get(key)
            if was is not None:
                was = f.mapping(key, was)
                f.text(f"{key}.sha256", was.get("sha256"), max_len=128)
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
    def run_json_path(self) -> Path:
        return self.path / "run.json"

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

    def snapshot_path(self, step: int, suffix: str) -> Path:
        """Where the deliverable as it was after ``step`` steps is kept (``run.snapshots``)."""
        return self.path / "snapshots" / f"step_{step:06d}{suffix}"

    def native_path(self, family: str) -> Path:
        """The folder of the deliverable in its family's own form (``hf/``, ``smp/``, ``torchvision/``)."""
        return self.path / family

    @property
    def torchscript_path(self) -> Path:
        return self.path / "model.ts"

    def save_checkpoint(self, step: int, state: dict[str, Any], *, advice: str = "", **extra: Any) -> Path:
        """Write ``{"schema", "kind", "step", "state", **extra}`` atomically. ``state`` holds at least
        ``"method"`` (the method's ``state_dict``) and ``"optimizer"`` (its state, or None).

        Raises:
            DivergedError: a tensor of the checkpoint holds NaN or inf (``advice``: what to change); the
                previous checkpoint is kept.
        """
        record = {"schema": RUN_SCHEMA, "kind": self.kind, "step": step, "state": state, **extra}
        self.require_finite(record, "checkpoint", step, advice)
        return atomic_save(record, self.checkpoint, then=KEEP_LAST)

    def require_finite(self, obj: Any, what: str, step: int, advice: str = "") -> None:
        """Refuse to save ``obj`` (a state, a network) when a tensor of it holds NaN or inf."""
        bad = non_finite(obj)
        if bad:
            raise DivergedError(
                f"the {self.kind} diverged by step {step}: {len(bad)} tensor(s) of the {what} hold NaN or "
                f"inf (e.g. {', '.join(bad[:3])}); nothing non-finite was saved in {self.path}"
                + (f". {advice}" if advice else ": lower the learning rate and start a new run")
            )

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint in today's schema (an older one is read into it), or None without one."""
        if not self.checkpoint.is_file():
            return None
        try:
            ckpt = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise DataError(
                f"cannot read the checkpoint {self.checkpoint} ({first}): start a new run with another --out"
            ) from None
        return self._current(ckpt)

    def _current(self, ckpt: Any) -> dict[str, Any]:
        """A checkpoint of any schema in today's, its common fields checked; another kind or a newer
        schema is one line."""
        if not isinstance(ckpt, dict) or "step" not in ckpt:
            raise DataError(f"{self.checkpoint} is not a run checkpoint: start a new run with another --out")
        if "schema" not in ckpt:  # schema 1: a stream's held its adapter and input position
            if "next_input" in ckpt:
                ckpt = {"schema": 1, "kind": "stream", "step": ckpt["step"], "state": ckpt.get("adapter"),
                        "next_input": ckpt["next_input"], "totals": ckpt.get("totals", {})}  # fmt: skip
            else:
                state = {"method": ckpt.get("adapter", {}), "optimizer": ckpt.get("optimizer")}
                ckpt = {"schema": 1, "kind": "adapt", "step": ckpt["step"], "state": state,
                        "world": ckpt.get("world", 1)}  # fmt: skip
        f = Fields(self.checkpoint, DataError)
        schema = f.integer("schema", ckpt["schema"], lo=1)
        if schema > RUN_SCHEMA:
            raise DataError(
                f"{self.checkpoint} has schema {schema!r}, newer than this stvm_sdk reads "
                f"({RUN_SCHEMA}): upgrade stvm_sdk, or start a new run with another --out"
            )
        kind = f.text("kind", ckpt.get("kind"), choices=KINDS)
        if kind != self.kind:
            raise DataError(
                f"{self.checkpoint} is {_a(kind)} run's checkpoint, not {_a(self.kind)} "
                "run's: resume it with the command that made it, or choose another --out"
            )
        f.integer("step", ckpt["step"], lo=0)
        state = f.mapping("state", ckpt.get("state"))
        if kind == "adapt":
            f.mapping("state.method", state.get("method"))
            if state.get("optimizer") is not None:
                f.mapping("state.optimizer", state["optimizer"])
            f.integer("world", ckpt.get("world", 1), lo=1)
        else:
            f.integer("next_input", ckpt.get("next_input"), lo=0)
            f.mapping("totals", ckpt.get("totals", {}))
        bad = non_finite(state)
        if bad:  # never written so by a run: nothing non-finite is saved
            f.fail(f"state.{bad[0]}", "NaN or inf values", "finite numbers (the file was changed or damaged)")
        return dict(ckpt)

    def step_of_checkpoint(self) -> int | None:
        """The step of the last checkpoint (read lazily), or None without one (or without a readable one)."""
        if not self.checkpoint.is_file():
            return None
        try:
            step = torch.load(self.checkpoint, map_location="cpu", weights_only=True, mmap=True)["step"]
        except Exception:
            return None
        return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None

    def write_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Write and return ``summary.json``: ``{"schema", "kind", "run_dir", "model_path",
        "metrics_path", **summary}``, the same frame for every kind of run."""
        common = {"kind": self.kind, "run_dir": str(self.path)}
        paths = {"model_path": str(self.model_path("model")), "metrics_path": str(self.metrics_path)}
        full = with_schema({**common, **paths, **summary})
        write_json_atomic(full, self.summary_path)
        return full

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


def divergence_advice(method: Any) -> str:
    """What to change when ``method`` (a :class:`~stvm_sdk.methods.base.Method` or its class) diverged:
    the learning rate it reads, in a new run (a resume must keep the config)."""
    key = method.lr_key()
    lr = f"lower {key} (the learning rate --method {method.name} reads)" if key else "check the source model"
    return f"{lr[:1].upper()}{lr[1:]} and start a new run"


def overflowed(exc: BaseException, step: int, method: Any) -> DivergedError | None:
    """The :class:`DivergedError` for a step that failed because a value (a learning rate times its
    bias correction, an update) does not fit in a float; None for any other error."""
    if not (isinstance(exc, RuntimeError) and "without overflow" in str(exc)):
        return None
    first = (str(exc).strip().splitlines() or [""])[0][:120]
    return DivergedError(
        f"adaptation diverged at step {step}: a value overflowed the network's float type ({first}); "
        f"nothing of this step was saved. {divergence_advice(method)}"
    )


def _a(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


def _step(line: str) -> int | None:
    """The step of a log line, or None for a line a kill cut short."""
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return None


def _diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str:
    """``key: was -> now`` for every leaf that differs (or is only on one side)."""
    out = []
    for k in [*a, *(k for k in b if k not in a)]:
        was, now = a.get(k), b.get(k)
        if isinstance(was, dict) or isinstance(now, dict):
            d = _diff(
                was if isinstance(was, dict) else {}, now if isinstance(now, dict) else {}, f"{prefix}{k}."
            )
            if d:
                out.append(d)
        elif was != now:
            out.append(f"{prefix}{k}: {was!r} -> {now!r}")
    return ", ".join(out)
