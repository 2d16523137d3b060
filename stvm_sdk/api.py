"""``adapt(source_model, target_dir)``: the SDK's main job, top to bottom.

1. resolve the config's method and check its options (:func:`stvm_sdk.methods.resolve`);
2. load and check the source model (the caller's model is never mutated: we work on a deep copy);
3. scan the target frames (and labels, when given, to evaluate before and after);
4. open the run directory (new, or the same run with the same inputs to resume);
5. :mod:`stvm_sdk.loop`: start the method (decision 0's statistics, or the last checkpoint), train
   it on the frames not held out, score its candidates on the held-out frames without labels
   (:mod:`stvm_sdk.selection`), save teacher, student and the chosen deliverable, judge it against the
   source model (the deploy gate), evaluate, draw the figures; return an
   :class:`~stvm_sdk.result.AdaptResult`.

Every argument is checked first: a wrong type raises :class:`~stvm_sdk.errors.ArgumentTypeError` (a
``TypeError``), a wrong value :class:`~stvm_sdk.errors.ConfigError` (a ``ValueError``), each one line
naming the argument; running out of memory raises :class:`~stvm_sdk.errors.ResourceError` (a
``MemoryError``) naming the options to lower.

Under ``torchrun`` (or ``stvm adapt --nproc-per-node N``) the same function runs in every process,
data-parallel: see :mod:`stvm_sdk.distributed` for what is shared and how. Only rank 0 writes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from stvm_sdk import distributed, loop
from stvm_sdk.boundary.args import check_flag, check_path, type_name
from stvm_sdk.config import AdaptConfig, as_adapt_config
from stvm_sdk.data.frames import scan_frames
from stvm_sdk.device import resolve_device
from stvm_sdk.errors import ArgumentTypeError
from stvm_sdk.inputs import (
    as_segmodel,
    check_batch_fits,
    check_method_fits,
    memory_knobs,
    naming_memory,
    run_inputs,
    warn_small_frames,
)
from stvm_sdk.loop import Job
from stvm_sdk.methods.registry import resolve
from stvm_sdk.models.io import SegModel, require_finite
from stvm_sdk.result import AdaptResult, load_run, reliability_map

__all__ = ["AdaptResult", "adapt", "load_run", "reliability_map"]

log = logging.getLogger("stvm_sdk")


def adapt(
    source_model: nn.Module | SegModel | str | os.PathLike[str],
    target_dir: str | os.PathLike[str],
    *,
    config: AdaptConfig | dict[str, Any] | str | os.PathLike[str] | None = None,
    labels_dir: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    trust_pickle: bool = False,
    num_classes: int | None = None,
    classifier: str | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    ignore_out_of_range: bool = False,
    figures: bool = True,
) -> AdaptResult:
    """Adapt a source segmentation model to the unlabeled frames in ``target_dir`` (STvM by default).

    Args:
        source_model: an ``nn.Module`` (never mutated), a :class:`SegModel`, or a model file path.
        target_dir: folder of target frames (any image tree, or a Cityscapes root).
        config: every method decision: an :class:`AdaptConfig`, a dict of its sections, or a config
            file (TOML/YAML/JSON); defaults to :class:`AdaptConfig()`.
        labels_dir: trainId/Cityscapes labels mirroring ``target_dir``: enables before/after mIoU.
        out_dir: run directory (default ``runs/<method>-<time>``).
        resume: continue the run in ``out_dir`` from its last checkpoint.
        progress: show a progress bar on stderr.
        on_log: called with each metrics record (every ``run.log_every`` steps; rank 0 only).
        ignore_out_of_range: score label ids outside the model's classes as ignored instead of
            refusing the labels (:mod:`stvm_sdk.boundary.labels`).
        figures: with labels, draw frame panels and curves into ``<run>/figures``.

    Raises:
        StvmError: a one-line problem the caller can fix (model file, frames, labels, run folder,
            config); nothing outside the run folder is written. ArgumentTypeError (also a
            ``TypeError``): an argument of the wrong type; ConfigError (also a ``ValueError``): a wrong
            value; ResourceError (also a ``MemoryError``): the batch does not fit in memory.
    """
    t_start = time.perf_counter()
    target_dir = check_path(target_dir, "target_dir")
    labels_dir = None if labels_dir is None else check_path(labels_dir, "labels_dir")
    out_dir = None if out_dir is None else check_path(out_dir, "out_dir")
    for flag, value in (("resume", resume), ("progress", progress), ("trust_pickle", trust_pickle),
                        ("ignore_out_of_range", ignore_out_of_range), ("figures", figures)):  # fmt: skip
        check_flag(value, flag)
    if on_log is not None and not callable(on_log):
        raise ArgumentTypeError(f"on_log must be a function of one metrics dict, got {type_name(on_log)}")
    cfg, method = resolve(as_adapt_config(config))
    source = as_segmodel(
        source_model, trust_pickle=trust_pickle, num_classes=num_classes, classifier=classifier
    )
    require_finite(source, "adapt it")
    check_method_fits(source, method)
    folder = scan_frames(target_dir, labels_dir)
    warn_small_frames(folder, cfg)
    check_batch_fits(folder, cfg)
    if cfg.run.eval_every and labels_dir is None:
        log.warning("run.eval_every = %d needs labels (--labels): no mIoU is scored during this run",
                    cfg.run.eval_every)  # fmt: skip
    if labels_dir is not None:
        log.info(
            "labels: %d of %d frames have a label in %s (mIoU before/after is scored on those)",
            len(folder.labelled), len(folder.frames), labels_dir,
        )  # fmt: skip
    source_path = None if isinstance(source_model, (nn.Module, SegModel)) else Path(source_model)
    inputs = run_inputs(source_path, source, folder)

    def run_job() -> AdaptResult:
        with distributed.join(resolve_device(cfg.run.device)) as ddp:  # a world of one without torchrun
            run = ddp.open_run(out_dir, cfg, resume, inputs, (source_path, target_dir, labels_dir))
            job = Job(cfg, method, source, folder, run, ddp, ignore_out_of_range, t_start, figures)
            before = job.evaluate(source) if labels_dir is not None and ddp.is_main else None
            adapter, step = loop.start(job, resume)
            steps = loop.train(adapter, job, step, progress=progress, on_log=on_log)
            return loop.finish(adapter, job, steps, before)

    return naming_memory(memory_knobs(cfg, evaluates=labels_dir is not None), run_job)
