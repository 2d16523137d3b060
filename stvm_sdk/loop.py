"""The adaptation loop, top to bottom: start the method, train it, save and score what it delivers.

:func:`stvm_sdk.adapt` checks its inputs, opens the run directory and hands a :class:`Job` (what every
stage reads) to the three stages here:

1. :func:`start` - target BatchNorm statistics (decision 0), the method's networks, or the run's last
   checkpoint when resuming;
2. :func:`train` - ``run.iters`` steps on the frames not held out, a log record every
   ``run.log_every`` steps, an atomic checkpoint every ``run.checkpoint_every`` steps, the label-free
   signals of the deliverable at every candidate step (:mod:`stvm_sdk.selection`), its mIoU every
   ``run.eval_every`` steps with labels;
3. :func:`finish` - choose the candidate to deliver and judge it against the source model (the deploy
   gate), save the deliverable, teacher and student, score them, draw the figures (with labels), write
   ``summary.json``.

Nothing known to be wrong is saved: a checkpoint, snapshot or network holding NaN or inf, or a
deliverable whose prediction on a target frame does, stops the run with one
:class:`~stvm_sdk.errors.DivergedError` line before the file is written.

The loop never asks which method runs (:class:`~stvm_sdk.methods.base.Method` is the contract).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from stvm_sdk import distributed
from stvm_sdk.boundary.fields import Fields
from stvm_sdk.config import AdaptConfig
from stvm_sdk.data.batches import BatchLoader
from stvm_sdk.data.frames import Frame, FrameFolder
from stvm_sdk.data.images import resize_image
from stvm_sdk.errors import DataError, DivergedError, StvmError
from stvm_sdk.eval.evaluate import EvalResult, evaluate_frames
from stvm_sdk.methods.base import Method
from stvm_sdk.methods.parts.norm import mix_statistics, reestimate_bn
from stvm_sdk.models.contract import forward_logits, normalize
from stvm_sdk.models.io import SegModel, model_suffix, save_model, save_native, save_torchscript
from stvm_sdk.result import AdaptResult
from stvm_sdk.rundir import KEEP_LAST, RunDir, divergence_advice, overflowed
from stvm_sdk.selection import Judge, candidate_steps, gate_line, load_held_out, scoring_size, split_holdout
from stvm_sdk.stream.settings import HealthRule

log = logging.getLogger("stvm_sdk")


@dataclass
class Job:
    """What every stage of one run reads: config, source model, frames, run directory, processes."""

    cfg: AdaptConfig
    method: type[Method]
    source: SegModel
    folder: FrameFolder
    run: RunDir
    ddp: distributed.DistContext
    ignore_out_of_range: bool = False
    t_start: float = field(default_factory=time.perf_counter)
    figures: bool = True  # with labels: frame panels and curves in <run>/figures
    train_frames: list[Frame] = field(init=False)  # what batches and decision 0's statistics read
    held_out: list[Frame] = field(init=False)  # never trained on: the label-free judgement's frames
    judge: Judge | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        frames = self.folder.frames
        share = self.cfg.run.holdout if self.cfg.run.label_free else 0.0
        self.train_frames, self.held_out = split_holdout(frames, share)
        if len(self.train_frames) < self.cfg.data.batch_size:  # too few frames to spare any
            self.train_frames, self.held_out = list(frames), []

    @property
    def device(self) -> torch.device:
        return self.ddp.device

    @property
    def candidates(self) -> list[int]:
        """Steps whose deliverable the judge scores (:func:`~stvm_sdk.selection.candidate_steps`)."""
        iters = self.cfg.run.iters if self.method.trains() else 0
        return candidate_steps(iters, self.cfg.run.candidates, self.cfg.run.snapshots)

    def evaluate(self, model: SegModel) -> EvalResult | None:
        """``model``'s mIoU on the labelled frames (None without labels)."""
        if not self.folder.labelled:
            return None
        return evaluate_frames(
            model, self.folder, size=self.cfg.run.eval_size, device=self.device,
            ignore_out_of_range=self.ignore_out_of_range,
        )  # fmt: skip


# --- 1. start --------------------------------------------------------------------------------------


def start(job: Job, resume: bool) -> tuple[Method, int]:
    """The method built from the source model (after decision 0), or restored from the last checkpoint."""
    cfg, ddp = job.cfg, job.ddp
    work = job.source.clone()
    work.module.to(job.device)
    checkpoint = ddp.on_main(job.run.load_checkpoint) if resume else None  # rank 0 reads, all receive
    if checkpoint is None and cfg.bn_init == "target" and job.method.reestimate_bn:
        # With the global batch (B x world) on every process: the statistics of a one-process run
        # with that batch, identical everywhere. It is one pass without gradients.
        reestimate_bn(work.module, _bn_batches(job, work, cfg.data.batch_size * ddp.world))
        mix_statistics(work.module, job.source.module, job.method.source_share(cfg))
    method = job.method.build(work, cfg, torch.Generator().manual_seed(cfg.run.seed)).to(job.device)
    step = 0
    if checkpoint is not None:
        # a step past the run's iterations would skip training and report the run done
        Fields(job.run.checkpoint, DataError).integer("step", checkpoint["step"], lo=0, hi=cfg.run.iters)
        step = _restore(method, checkpoint, ddp.world)
        if ddp.is_main:
            job.run.truncate_log(step)
    if ddp.is_main and cfg.run.label_free:
        job.judge = _judge(job)
        if job.judge is not None and step == 0:
            job.run.log({"step": 0, "label_free": _candidate(method, job, 0)})
    ddp.prepare(method, cfg)
    return method, step


def _judge(job: Job) -> Judge | None:
    """The run's label-free judge on its held-out frames (or, with none held out, on up to 32 training
    frames, spread over the folder), the source model's outputs taken; None without a readable frame."""
    frames = job.held_out or split_holdout(job.folder.frames, 1.0)[1]
    size = scoring_size(frames, job.cfg.run.eval_size or job.cfg.data.resize)
    images = load_held_out(job.folder, frames, size)
    if images is None:
        return None
    run = job.cfg.run
    judge = Judge(
        images, run.validator, HealthRule(), job.device, job.cfg.data.batch_size, run.gate_validator
    )
    source = job.source.clone()
    source.module.to(job.device)
    judge.start(source)
    return judge


def _bn_batches(job: Job, model: SegModel, batch_size: int) -> Iterator[torch.Tensor]:
    """Decision 0's batches. Frames of another size than most are resized to it: statistics per channel
    barely move, and a batch of one odd-sized small frame would leave BatchNorm one value per channel."""
    frames = job.train_frames[: job.cfg.run.bn_init_frames]
    sizes = [f.size for f in frames if f.size is not None]
    size = job.cfg.data.resize or (max(set(sizes), key=sizes.count) if sizes else None)
    for i in range(0, len(frames), batch_size):
        loaded = (job.folder.load(f, size) for f in frames[i : i + batch_size])
        imgs = [x[0] for x in loaded if x is not None]
        if imgs:
            hw = size or (int(imgs[0].shape[-2]), int(imgs[0].shape[-1]))
            batch = torch.stack([resize_image(x, hw) for x in imgs])
            yield normalize(batch.to(job.device), model.mean, model.std)


def _restore(method: Method, ckpt: dict[str, Any], world: int) -> int:
    state = ckpt["state"]
    try:
        method.load_state_dict(state["method"])
        if method.optimizer is not None and state.get("optimizer") is not None:
            method.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1].strip()[:160]
        raise DataError(
            f"the run's checkpoint does not fit this source model ({first}): resume with the run's "
            "--source and --method, or start a new run with another --out"
        ) from None
    if ckpt.get("world", 1) != world:  # allowed (e.g. a GPU was lost), but the global batch changes
        log.warning("resuming a %d-process run with %d processes", ckpt.get("world", 1), world)
    log.info("resumed from step %d", ckpt["step"])
    return int(ckpt["step"])


def _checkpoint(method: Method, run: RunDir, step: int, world: int) -> None:
    state = {
        "method": method.state_dict(),
        "optimizer": method.optimizer.state_dict() if method.optimizer is not None else None,
    }
    # processes: another count changes the global batch
    run.save_checkpoint(step, state, world=world, advice=divergence_advice(method))


# --- 2. train --------------------------------------------------------------------------------------


def train(
    method: Method,
    job: Job,
    start_step: int,
    *,
    progress: bool = False,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Run the method's steps from ``start_step`` to ``run.iters``; returns the step count (0 for a
    method that does not train)."""
    from stvm_sdk.progress import progress_bar

    cfg, ddp, run = job.cfg, job.ddp, job.run
    iters = cfg.run.iters if method.optimizer is not None else 0
    loader = BatchLoader(
        job.train_frames, batch_size=cfg.data.batch_size, crop=cfg.data.crop, resize=cfg.data.resize,
        seed=cfg.run.seed, workers=cfg.data.workers, shard=(ddp.rank, ddp.world), on_reject=job.folder.reject,
    )  # fmt: skip
    meter = _Meter()
    candidates = set(job.candidates)
    bar_on = progress and ddp.is_main
    try:
        with progress_bar(total=iters, start=start_step, enabled=bar_on, description=cfg.method) as bar:
            for step in range(start_step, iters):
                images = loader.batch(step).to(ddp.device, non_blocking=True)
                try:
                    logs = method.step(images, step, *ddp.step_generators(cfg.run.seed, step))
                except RuntimeError as exc:
                    if (error := overflowed(exc, step + 1, method)) is not None:
                        raise error from None
                    raise
                meter.add(logs, images.shape[0] * ddp.world)
                done = step + 1
                record = None
                if done % cfg.run.log_every == 0 or done == iters:
                    record = meter.record(done, ddp.average_logs)  # every process takes part
                    _check_finite(record.get("loss"), done, run, method)
                if done in candidates and record is None and "loss" in logs:  # judge no diverged state
                    _check_finite(float(ddp.average_logs({"loss": logs["loss"]})["loss"]), done, run, method)
                extra = _judged(method, job, done, iters, candidates) if ddp.is_main else {}
                if ddp.is_main and (record is not None or extra):
                    record = {**(record or {"step": done}), **extra}
                    run.log(record)
                    if on_log is not None:
                        on_log(record)
                bar.update(done, record)
                if done % cfg.run.checkpoint_every == 0 and done < iters:
                    if "loss" in logs:  # never save a diverged state; averaged so every process agrees
                        _check_finite(
                            float(ddp.average_logs({"loss": logs["loss"]})["loss"]), done, run, method
                        )
                    ddp.check_replicas(method)  # never save a state the other processes do not hold
                    if ddp.is_main:
                        _checkpoint(method, run, done, ddp.world)
                if done in cfg.run.snapshots and done < iters and ddp.is_main:
                    _snapshot(method, job, done)
    finally:
        loader.close()
    ddp.release(method)
    return iters


def _judged(method: Method, job: Job, done: int, iters: int, candidates: set[int]) -> dict[str, Any]:
    """What the step's record gains: the label-free signals at a candidate step, the mIoU every
    ``run.eval_every`` steps (with labels)."""
    extra: dict[str, Any] = {}
    if done in candidates and job.judge is not None:
        extra["label_free"] = _candidate(method, job, done, keep=done < iters)
    every = job.cfg.run.eval_every
    if every and done % every == 0 and (scored := job.evaluate(_deliverable(method, job.source))):
        extra["miou"] = scored.miou
    return extra


def _deliverable(method: Method, source: SegModel) -> SegModel:
    """The network the run delivers (decision 10), as a model like the source."""
    net = method.teacher if method.teacher is not None and method.deliverable_role == "teacher" else None
    return replace(source, module=net if net is not None else method.student)


def _snapshot(method: Method, job: Job, step: int, path: Path | None = None) -> Path:
    """Save the deliverable as it is after ``step`` steps (``run.snapshots``, or a candidate's ``path``)."""
    model = _deliverable(method, job.source)
    job.run.require_finite(model.module, "snapshot", step, divergence_advice(method))
    path = path or job.run.snapshot_path(step, model_suffix(model))
    path.parent.mkdir(exist_ok=True)
    return save_model(model, path, then=KEEP_LAST)


def _candidate_path(job: Job, step: int, suffix: str) -> Path:
    """A candidate's file: the snapshot of that step where one is asked for, else ``candidates/``."""
    if step in job.cfg.run.snapshots:
        return job.run.snapshot_path(step, suffix)
    return job.run.path / "candidates" / f"step_{step:06d}{suffix}"


def _candidate(method: Method, job: Job, step: int, keep: bool = True) -> dict[str, Any]:
    """The label-free signals of the deliverable after ``step`` steps; ``keep`` saves it too (to
    deliver it if it is chosen; the last step's is the run's own model)."""
    assert job.judge is not None
    model = _deliverable(method, job.source)
    path = _candidate_path(job, step, model_suffix(model))
    if keep and not path.is_file():
        _snapshot(method, job, step, path)
    return job.judge.observe(step, model, replace(job.source, module=method.student))


_Sums = dict[str, torch.Tensor]


class _Meter:
    """Accumulates step logs as tensors and syncs with the host only when a record is written."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}  # per key: some logs exist only after the warm-up
        self.images = 0
        self.t0 = time.perf_counter()

    def add(self, logs: dict[str, torch.Tensor], images: int) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
            self.counts[k] = self.counts.get(k, 0) + 1
        self.images += images

    def record(self, step: int, reduce: Callable[[_Sums], _Sums]) -> dict[str, Any]:
        """The record for ``step``; ``reduce`` combines the sums over processes first."""
        rec: dict[str, Any] = {"step": step}
        for k, v in reduce(self.sums).items():
            v = v.detach().float().cpu()
            rec[k] = v.tolist() if v.numel() > 1 else float(v) / self.counts[k]
        rec["images_per_s"] = round(self.images / max(time.perf_counter() - self.t0, 1e-9), 3)
        self.__init__()  # type: ignore[misc]
        return rec


def _save_native(model: SegModel, run: RunDir) -> Path | None:
    """The deliverable in its library's own form; a library that cannot write it is a warning."""
    try:
        return save_native(model, run.native_path(str(model.family)))
    except StvmError:
        raise
    except Exception as exc:  # the safetensors deliverable is written already
        log.warning("the %s form of the model was not written: %s", model.family, exc)
        return None


def _check_finite(loss: float | None, step: int, run: RunDir, method: Method) -> None:
    """Stop with one actionable line when the loss is NaN/inf (every process sees the same value)."""
    if loss is not None and not math.isfinite(loss):
        options = method.options
        bn = "" if options is None or not hasattr(options, "student_bn") else (
            f'; or set methods.{method.name}.student_bn = "train" if the source model\'s BatchNorm '
            "statistics do not suit these frames"
        )  # fmt: skip
        raise DivergedError(
            f"adaptation diverged at step {step} (loss {loss}); nothing after the last checkpoint in "
            f"{run.path} was saved. {divergence_advice(method)}{bn}"
        )


# --- 3. finish -------------------------------------------------------------------------------------


def finish(method: Method, job: Job, steps: int, before: EvalResult | None) -> AdaptResult:
    """Save the networks (rank 0), score the deliverable when labels were given, write the summary."""
    cfg, run, ddp = job.cfg, job.run, job.ddp
    method.cpu()
    student = replace(job.source, module=method.student.eval())
    teacher = replace(job.source, module=method.teacher.eval()) if method.teacher is not None else None
    model = teacher if (teacher is not None and method.deliverable_role == "teacher") else student
    advice = divergence_advice(method)
    for role, net in (("student", student), ("teacher", teacher)):  # every process: the same verdict
        if net is not None:
            run.require_finite(net.module, f"{role} network", steps, advice)
    _require_finite_prediction(model, job, steps, advice)
    if not ddp.is_main:  # the same networks as rank 0 (checked); rank 0 writes and evaluates
        return AdaptResult(model, teacher, student, run.path, {"rank": ddp.rank}, method.extras(), cfg)
    label_free = None
    if job.judge is not None:
        model, label_free = _choose(job, model, student, steps)
    ext = model_suffix(model)
    paths = {
        "model_path": save_model(model, run.model_path("model", ext), then=KEEP_LAST),
        "student_path": save_model(student, run.model_path("student", ext), then=KEEP_LAST),
        "teacher_path": save_model(teacher, run.model_path("teacher", ext), then=KEEP_LAST)
        if teacher
        else None,
    }
    if model.family is not None and not isinstance(model.module, torch.jit.ScriptModule):
        paths["native_path"] = _save_native(model, run)
    try:
        paths["torchscript_path"] = save_torchscript(model, run.torchscript_path, then=KEEP_LAST)
    except StvmError:
        raise  # a write failure (disk full, ...) is the user's to fix, not a model that cannot script
    except Exception as exc:  # not every user model scripts or traces; the checkpoint is the deliverable
        log.warning("TorchScript export skipped: %s", exc)
    _checkpoint(method, run, steps, ddp.world)
    snapshots = [
        {"step": s, "path": str(run.snapshot_path(s, ext))}
        for s in cfg.run.snapshots
        if s < steps and run.snapshot_path(s, ext).is_file()
    ]
    metrics: dict[str, Any] = {
        **{k: str(v) if v else None for k, v in paths.items()},
        "method": cfg.method,
        "deliverable": "teacher" if model is teacher else "student",
        "steps": steps,
        "processes": ddp.world,
        "frames_found": job.folder.found,
        "frames_used": job.folder.usable,
        "images_skipped": job.folder.skip_report(),
        "images_seen": steps * cfg.data.batch_size * ddp.world,
        "seconds": round(time.perf_counter() - job.t_start, 2),
    }
    if snapshots:
        metrics["snapshots"] = snapshots
    if label_free is not None:
        metrics["label_free"] = label_free
    if before is not None:
        after = job.evaluate(model)
        assert after is not None  # labelled frames exist: `before` was scored on them
        metrics.update(
            miou_before=before.miou,
            miou_after=after.miou,
            per_class_iou={"before": before.per_class_iou, "after": after.per_class_iou},
            frames_labelled=len(job.folder.labelled),
            images_evaluated=after.n_images,
        )
    result = AdaptResult(model, teacher, student, run.path, metrics, method.extras(), cfg)
    if before is not None and job.figures:
        metrics["figures_dir"] = str(_figures(result, job))
    result.metrics = run.write_summary(metrics)
    return result


def _choose(job: Job, final: SegModel, student: SegModel, steps: int) -> tuple[SegModel, dict[str, Any]]:
    """The candidate to deliver (``run.deliver``), the gate's verdict on it, and the summary's
    ``label_free`` section; the delivered model (``final``, or a candidate's weights in its network)."""
    judge, cfg = job.judge, job.cfg.run
    assert judge is not None
    suffix = model_suffix(final)
    for step in job.candidates:  # scored before a resume: read back from the candidate's file
        path = _candidate_path(job, step, suffix)
        if step not in judge.outputs and step != steps and path.is_file():
            judge.observe(step, _weights_from(path, final))
    if steps not in judge.outputs:  # scored in the loop's last step, unless the run resumed there
        judge.observe(steps, final, student)
    chosen, why = judge.choose(cfg.deliver if job.held_out else "last")
    if not job.held_out:
        why = "no frame was held out (run.holdout = 0, or too few frames): the last network is delivered"
    delivered = final if chosen == steps else _weights_from(_candidate_path(job, chosen, suffix), final)
    verdict = judge.gate(chosen, cfg.gate_margin)
    scores = judge.scores()
    section = {
        "validator": judge.validator,
        "frames": int(judge.images.shape[0]),
        "frames_held_out": bool(job.held_out),
        "snapshots": [{"step": s, "score": round(scores[s], 5)} for s in sorted(scores)],
        "delivered_step": chosen,
        "delivered_because": why,
        "signals": judge.records.get(chosen, {}),
        **verdict,
    }
    log.info("label-free: delivered step %d (%s)", chosen, why)
    if verdict["gate"] != "pass":
        log.warning("gate: %s", gate_line(section))
    return delivered, section


def _weights_from(path: Path, like: SegModel) -> SegModel:
    """``like`` with the weights of the candidate file ``path`` (a file this run wrote)."""
    from stvm_sdk.models.io import load_model

    loaded = load_model(path, trust_pickle=True)  # written by this run, in its own folder
    net = copy.deepcopy(like.module)
    net.load_state_dict(loaded.module.state_dict())
    return replace(like, module=net.eval())


@torch.no_grad()
def _require_finite_prediction(model: SegModel, job: Job, steps: int, advice: str) -> None:
    """The deliverable's logits on a target frame are finite: finite weights can still overflow (a
    weight of 1e38 does in the first layer), and such a model would be saved and predict nothing."""
    size = job.cfg.data.crop or job.cfg.data.resize
    loaded = next((x for f in job.folder.frames[:8] if (x := job.folder.load(f, size)) is not None), None)
    if loaded is None:
        return
    was = model.module.training
    model.module.eval()
    try:
        logits = forward_logits(model.module, normalize(loaded[0][None], model.mean, model.std))
    finally:
        model.module.train(was)
    if not bool(torch.isfinite(logits).all()):
        raise DivergedError(
            f"the adapt diverged by step {steps}: the delivered network's weights are finite but its "
            f"prediction on a target frame holds NaN or inf; nothing non-finite was saved in "
            f"{job.run.path}. {advice}"
        )


def _figures(result: AdaptResult, job: Job) -> Path:
    """Frame panels (image, labels, before, after, reliability) and curves in ``<run>/figures``."""
    from stvm_sdk.figures import run_figures  # matplotlib: only for runs with labels

    figures = run_figures(result, job.source, job.folder)
    log.info("figures (frame panels, curves): %s", figures)
    return figures
