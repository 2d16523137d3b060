"""The stream command's job: read frames in order from a folder or a video, adapt online, log,
checkpoint, resume.

The stream directory (a run directory of kind ``stream``, :class:`~stvm_sdk.rundir.RunDir`)::

    out/run.json                   kind and the stream's settings (a resume must match them)
    out/config.json, inputs.json   the method's config; source model and input, with fingerprints
    out/metrics.jsonl              one line per health window: signals, verdict, restores, costs
    out/checkpoints/last.pt        adapter state (weights, optimiser, buffer, health) + input position
    out/model.safetensors          the current deliverable, rewritten at every checkpoint: export it at
                                   any time with the export command
    out/pred/<frame>.png           class-id predictions (trainIds) with --save-pred
    out/summary.json               at the end: frames, frames adapted (used by a training step, for a
                                   method that trains), training steps, restores, costs (p50/p99),
                                   memory, online mIoU; "warnings" for work not done (no training step
                                   ran; a video that ended before the frame count of its header)
    out/.stvm_sdk.lock             while the stream runs: a second process on the folder is refused

A killed stream resumes with ``--resume`` from its last checkpoint: frames after it are predicted and
adapted on again, exactly as the first time (the adapter's per-step randomness depends only on the
seed and the frame count).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from stvm_sdk.boundary.fields import Fields
from stvm_sdk.boundary.fingerprint import sha256
from stvm_sdk.boundary.labels import check_label_ids
from stvm_sdk.boundary.names import output_stems
from stvm_sdk.boundary.outputs import atomic_write
from stvm_sdk.config import AdaptConfig
from stvm_sdk.data.frames import FrameFolder, scan_frames
from stvm_sdk.data.images import image_tensor
from stvm_sdk.data.video import VIDEO_EXTENSIONS, is_video, video_frames
from stvm_sdk.device import resolve_device
from stvm_sdk.errors import ConfigError, DataError
from stvm_sdk.eval.metrics import confusion_matrix, mean_iou
from stvm_sdk.inputs import as_segmodel, check_method_fits, folder_fingerprint, source_fingerprint
from stvm_sdk.methods.registry import get_method
from stvm_sdk.models.io import SegModel, model_suffix, require_finite, save_model
from stvm_sdk.rundir import KEEP_LAST, RunDir, divergence_advice
from stvm_sdk.stream.asynchronous import AsyncAdapter
from stvm_sdk.stream.online import OnlineAdapter, online_config, resize_frame
from stvm_sdk.stream.pace import Pacer
from stvm_sdk.stream.settings import StreamConfig

log = logging.getLogger("stvm_sdk")


@dataclass
class StreamResult:
    """What a stream run produced (``summary`` is summary.json)."""

    adapter: OnlineAdapter | AsyncAdapter
    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> SegModel:
        return self.adapter.deliverable()


Frames = Iterator[tuple[int, str, torch.Tensor | None, torch.Tensor | None]]


@dataclass
class _Input:
    """A stream's frames: ``frames(start)`` yields ``(index, name, image [3,H,W] or None if unreadable,
    label or None)`` from input index ``start`` on; opened once, so a resume neither rescans nor reopens."""

    frames: Callable[[int], Frames]
    fingerprint: dict[str, Any]
    folder: FrameFolder | None = None
    expected: int | None = None  # a video's frame count as its header gives it (None: unknown)


def _open_input(path: Path, labels: Path | None, num_classes: int, ignore_oor: bool) -> _Input:
    if path.is_file() and is_video(path):
        if labels is not None:
            raise ConfigError("--labels needs a folder of frames as --input, not a video")
        _, raw, _, count = video_frames(path)

        def decoded(start: int) -> Frames:
            for i, arr in enumerate(raw):
                if i >= start:
                    yield i, f"{path.stem}_{i:06d}", image_tensor(arr), None

        fingerprint = {"path": str(path), "sha256": sha256(path), "frames": count}
        return _Input(decoded, fingerprint, expected=count or None)
    if path.is_file():
        raise DataError(
            f"--input {path} is a file but not a video ({', '.join(VIDEO_EXTENSIONS)}): "
            "pass a folder of frames or a video"
        )
    folder = scan_frames(path, labels)
    names = output_stems([f.rel for f in folder.frames])  # a.png and a.jpg never share a prediction file

    def loaded(start: int) -> Frames:
        for i, frame in enumerate(folder.frames[start:], start):
            out = folder.load(frame, None, with_label=frame.label is not None)
            name = names[i].as_posix()
            if out is None:
                yield i, name, None, None
                continue
            label = out[1]
            if label is not None:
                label = check_label_ids(label, num_classes, frame.label, ignore_out_of_range=ignore_oor)
            yield i, name, out[0], label

    return _Input(loaded, folder_fingerprint(folder), folder)


def adapt_stream(
    source_model: nn.Module | SegModel | str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    *,
    method: str | None = None,
    config: AdaptConfig | None = None,
    stream_config: StreamConfig | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    labels_dir: str | os.PathLike[str] | None = None,
    size: tuple[int, int] | None = None,
    save_pred: bool = False,
    resume: bool = False,
    checkpoint_every: int = 200,
    max_frames: int | None = None,
    device: str = "auto",
    seed: int = 0,
    trust_pickle: bool = False,
    num_classes: int | None = None,
    classifier: str | None = None,
    on_window: Callable[[dict[str, Any]], None] | None = None,
    ignore_out_of_range: bool = False,
    asynchronous: bool = False,
    fps: float | None = None,
) -> StreamResult:
    """Adapt ``source_model`` online on the frames of ``input_path`` (a folder, in sorted order, or a video).

    Every frame is predicted by the current deliverable before the method adapts on it
    (:class:`~stvm_sdk.stream.online.OnlineAdapter`). ``on_window`` receives each health window's
    record (the lines of metrics.jsonl). With ``labels_dir``, predictions are also scored (online mIoU;
    label ids outside the model's classes are an error, or ignored with ``ignore_out_of_range``).
    With ``asynchronous``, prediction uses the last published weights while a worker thread adapts
    (:class:`~stvm_sdk.stream.asynchronous.AsyncAdapter`). With ``fps``, frames arrive at that rate
    (:class:`~stvm_sdk.stream.pace.Pacer`): a frame the predictor cannot serve before the next arrives is
    dropped, counted, and scored (with labels) by the last prediction served.

    Raises:
        StvmError: a one-line problem the caller can fix; nothing outside the stream folder is written.
    """
    if checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be >= 1 frame, got {checkpoint_every}")
    if fps is not None and not (isinstance(fps, (int, float)) and 0 < fps <= 1000):
        raise ConfigError(f"--fps must be a frame rate in (0, 1000], got {fps}")
    cfg = online_config(method, config)
    scfg = stream_config or StreamConfig()
    t_start = time.perf_counter()
    source = as_segmodel(
        source_model, trust_pickle=trust_pickle, num_classes=num_classes, classifier=classifier
    )
    require_finite(source, "adapt it")
    check_method_fits(source, get_method(cfg.method))
    src_path = None if isinstance(source_model, (nn.Module, SegModel)) else Path(source_model)
    inp = Path(input_path)
    if not inp.exists():
        raise DataError(f"--input not found: {inp}: pass a folder of frames or a video file")
    labels = Path(labels_dir) if labels_dir is not None else None
    # Scanned before the run folder is claimed: an unusable input changes nothing on disk.
    frames_in = _open_input(inp, labels, source.num_classes, ignore_out_of_range)
    inputs = {"source": source_fingerprint(src_path, source), "target": frames_in.fingerprint}
    settings: dict[str, Any] = {"stream": scfg.to_dict(), "size": list(size) if size else None, "seed": seed}
    if asynchronous:  # a resume keeps the mode (only the synchronous one resumes bit for bit)
        settings["async"] = True
    run = RunDir.open(
        out_dir,
        cfg,
        resume,
        kind="stream",
        settings=settings,
        inputs=inputs,
        input_paths=(src_path, inp, labels),
    )
    adapter: OnlineAdapter | AsyncAdapter | None = None
    try:  # the folder is locked until the stream stops, however it stops
        sync = OnlineAdapter(
            source, cfg.method, config=cfg, stream=scfg, device=resolve_device(device), seed=seed
        )
        adapter = AsyncAdapter(sync) if asynchronous else sync
        return _stream(
            run, source, adapter, frames_in, inp, size=size, save_pred=save_pred, resume=resume,
            checkpoint_every=checkpoint_every, max_frames=max_frames, on_window=on_window,
            t_start=t_start, pacer=Pacer(fps) if fps else None,
        )  # fmt: skip
    finally:
        if isinstance(adapter, AsyncAdapter):
            with contextlib.suppress(Exception):  # the worker's own error, if any, was raised already
                adapter.close()
        run.release()


def _stream(
    run: RunDir,
    source: SegModel,
    adapter: OnlineAdapter | AsyncAdapter,
    frames_in: _Input,
    inp: Path,
    *,
    size: tuple[int, int] | None,
    save_pred: bool,
    resume: bool,
    checkpoint_every: int,
    max_frames: int | None,
    on_window: Callable[[dict[str, Any]], None] | None,
    t_start: float,
    pacer: Pacer | None,
) -> StreamResult:
    start, carried = 0, {}
    ckpt = run.load_checkpoint() if resume else None
    if ckpt is not None:
        _check_checkpoint(run, ckpt, source.num_classes)
        try:
            adapter.load_state_dict(ckpt["state"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1].strip()[:160]
            raise DataError(
                f"the stream's checkpoint {run.checkpoint} does not fit this source model and method "
                f"({first}): resume with the stream's --source and --method, or start a new stream with "
                "another --out"
            ) from None
        start, carried = int(ckpt["next_input"]), dict(ckpt.get("totals", {}))
        run.truncate_log(adapter.frames)
        log.info("resumed at input frame %d (%d frames adapted on so far)", start, adapter.frames)
    elif resume:  # killed before its first checkpoint: start over, without the lines it had logged
        run.truncate_log(0)
    if size is None and adapter.size is not None:
        size = adapter.size
    k = source.num_classes
    tot = StreamTotals.from_dict(carried, k)
    win = StreamTotals(k)
    pred_dir = run.path / "pred"
    served = adapter.frames  # frames predicted (the adapter's count, resumed)
    last_i = start - 1
    capped = False  # stopped by max_frames, not by the end of the input
    steps_before = adapter.steps_run
    last_labels: torch.Tensor | None = None  # what the car shows while frames are dropped
    seen = 0  # frames of this invocation, served or dropped (the pacer's clock)

    def window_line(window: dict[str, Any], i: int) -> None:
        nonlocal win, steps_before
        record = {"step": served, "input_index": i, **window, **win.costs()}
        record["steps"] = adapter.steps_run - steps_before  # training steps in this window
        steps_before = adapter.steps_run
        if win.dropped or pacer is not None:
            record["frames_dropped"] = win.dropped
        if win.conf.sum() > 0:
            record["miou_online"] = round(100 * mean_iou(win.conf), 3)
        record["seconds"] = round(time.perf_counter() - t_start, 1)
        run.log(record)
        if record["restore"]:
            done = record.get("restored_to")
            log.warning(
                "frame %d: health rule fired (%s): %s",
                record["frame"], "; ".join(record["reasons"]),
                f"restored the {done} weights" if done else "--on-collapse off: nothing restored",
            )  # fmt: skip
        if on_window is not None:
            on_window(record)
        win = StreamTotals(k)

    for i, name, image, label in frames_in.frames(start):
        if max_frames is not None and served + tot.dropped >= max_frames:
            capped = True
            break
        last_i = i
        if image is None:
            tot.skipped += 1
            continue
        if size is None:
            size = (int(image.shape[1]), int(image.shape[2]))
        if pacer is not None and not pacer.admit(seen):
            seen += 1
            for t in (tot, win):
                t.dropped += 1
            if label is not None and last_labels is not None:  # scored by what the car still shows
                c = confusion_matrix(_to_label_size(last_labels, label.shape), label, k)
                tot.conf += c
                win.conf += c
            continue
        seen += 1
        frame = resize_frame(image, size)
        res = adapter.step(frame)
        served += 1
        labels_out = last_labels = res.labels.cpu()
        late = pacer.late_s if pacer is not None else None
        busy = res.busy if res.version is not None else None  # asynchronous only
        for t in (tot, win):
            t.add(res.predict_s, res.adapt_s if res.adapted and res.adapt_s else None, used=res.used,
                  busy=busy, late_s=late)  # fmt: skip
        if label is not None:
            c = confusion_matrix(_to_label_size(labels_out, label.shape), label, k)
            tot.conf += c
            win.conf += c
        if save_pred:  # at the frame's own size
            _save_pred(pred_dir / f"{name}.png", _to_label_size(labels_out, image.shape[1:]))
        if res.window is not None:
            window_line(res.window, i)
        if served % checkpoint_every == 0:
            _checkpoint(run, adapter, i + 1, tot)
    if isinstance(adapter, AsyncAdapter):  # every frame predicted taken in; its last windows logged
        for window in adapter.close():
            window_line(window, last_i)
    if served == 0:
        raise DataError(f"no frame of {inp} could be read ({tot.skipped} unreadable): check the input")
    _checkpoint(run, adapter, last_i + 1, tot)
    warnings = _shortfalls(adapter, frames_in, inp, read=last_i + 1, capped=capped)
    for line in warnings:
        log.warning("warning: %s", line)
    summary = _summary(adapter, tot, time.perf_counter() - t_start, frames_in, pacer)
    if frames_in.expected and not capped:  # a video: the frames its header announces, and those missing
        summary.update(
            frames_expected=frames_in.expected, frames_missing=max(0, frames_in.expected - last_i - 1)
        )
    if warnings:
        summary["warnings"] = warnings
    summary = run.write_summary(summary)
    return StreamResult(adapter, run.path, summary)


def _shortfalls(
    adapter: OnlineAdapter | AsyncAdapter, inp: _Input, path: Path, *, read: int, capped: bool
) -> list[str]:
    """What the stream did not do that its summary would otherwise seem to say: a training method
    that never took a step, a video that ended before the frame count its header announces."""
    out = []
    if adapter.trains and adapter.steps_run == 0:
        out.append(
            f"no training step ran: the {adapter.pushed} frame(s) adapted on never filled a batch of "
            f"{adapter.scfg.batch_size} (--batch-size), so --method {adapter.cfg.method} trained nothing "
            "and counts no frame as adapted; stream more frames or lower --batch-size"
        )
    if inp.expected and not capped and read < inp.expected:
        out.append(
            f"{path} ended after {read} of the {inp.expected} frames its header announces (the file is "
            f"truncated or damaged): {inp.expected - read} frame(s) were never read"
        )
    return out


def _to_label_size(pred: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if tuple(pred.shape) == tuple(shape):
        return pred
    return torch.nn.functional.interpolate(pred[None, None].float(), size=tuple(shape), mode="nearest")[
        0, 0
    ].long()


def _save_pred(path: Path, labels: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(labels.numpy().astype(np.uint8))
    atomic_write(path, lambda fh: img.save(fh, format="PNG"))


def _checkpoint(
    run: RunDir, adapter: OnlineAdapter | AsyncAdapter, next_input: int, tot: StreamTotals
) -> None:
    """Adapter state and input position, then the current deliverable (exportable at any time); both
    checked finite first (:class:`~stvm_sdk.errors.DivergedError`: nothing written, the last kept)."""
    advice = divergence_advice(adapter.method_cls)
    model = adapter.deliverable()
    run.require_finite(model.module, "deliverable", adapter.frames, advice)
    state = adapter.state_dict()
    run.save_checkpoint(adapter.frames, state, advice=advice, next_input=next_input, totals=tot.to_dict())
    save_model(model, run.model_path("model", model_suffix(model)), then=KEEP_LAST)


def _check_checkpoint(run: RunDir, ckpt: dict[str, Any], num_classes: int) -> None:
    """The stream's fields of its checkpoint (the common ones are checked by the run folder)."""
    f = Fields(run.checkpoint, DataError)
    state = ckpt["state"]
    frames = f.integer("state.frames", state.get("frames"), lo=0)
    if frames != ckpt["step"]:
        f.fail("step", ckpt["step"], f"the frame count of its state ({frames})")
    f.integer("state.steps", state.get("steps"), lo=0)
    size = state.get("size")
    if size is not None:
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            f.fail("state.size", size, "[H, W] or null")
        for v in size:
            f.integer("state.size", v, lo=1)
    for key in ("steps_run", "pushed", "pending"):
        if key in state:
            f.integer(f"state.{key}", state[key], lo=0)
    f.mapping("state.method", state.get("method"))
    f.mapping("state.buffer", state.get("buffer"))
    f.mapping("state.monitor", state.get("monitor"))
    totals = ckpt.get("totals") or {}
    if totals:
        for key in ("frames", "adapted", "skipped"):
            f.integer(f"totals.{key}", totals.get(key), lo=0)
        for key in ("busy_s", "adapt_total_s"):
            f.number(f"totals.{key}", totals.get(key), lo=0)
        f.tensor("totals.conf", totals.get("conf"), shape=(num_classes, num_classes), floating=False)
        for key in _SERIES:
            if key in totals or key in ("predict_s", "adapt_s"):
                f.tensor(f"totals.{key}", totals.get(key), shape=(None,), floating=True)
        if "dropped" in totals:
            f.integer("totals.dropped", totals["dropped"], lo=0)


_SERIES = ("predict_s", "adapt_s", "predict_busy_s", "predict_idle_s", "latency_s")
LATENCIES_KEPT = 10_000  # p50/p99 are over the most recent frames: memory stays bounded on any stream


@dataclass
class StreamTotals:
    """Costs and confusion over a window or the whole stream (latencies of the last 10,000 frames);
    benchmarks/continual.py reports its cells with it too."""

    num_classes: int
    frames: int = 0
    adapted: int = 0
    busy_s: float = 0.0  # predicting + adapting
    adapt_total_s: float = 0.0
    skipped: int = 0
    dropped: int = 0  # frames the predictor could not serve before the next arrived (--fps)
    predict_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCIES_KEPT))
    adapt_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCIES_KEPT))
    # Predictions made while an asynchronous worker was adapting, and those made while it was idle.
    predict_busy_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCIES_KEPT))
    predict_idle_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCIES_KEPT))
    latency_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCIES_KEPT))  # arrival -> labels
    conf: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.conf = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def add(
        self,
        predict_s: float,
        adapt_s: float | None,
        used: int | None = None,
        *,
        busy: bool | None = None,
        late_s: float | None = None,
    ) -> None:
        """One frame: its prediction time, its adaptation time (None: not adapted on), and how many
        frames its adaptation counts as adapted (default: 1 when adapted on; a training method's frames
        count once a training step used them, :attr:`~stvm_sdk.stream.online.FrameResult.used`);
        ``busy``: an asynchronous worker was adapting meanwhile (None: synchronous); ``late_s``: the
        frame waited this long after its arrival for the predictor (paced streams)."""
        self.frames += 1
        self.busy_s += predict_s + (adapt_s or 0.0)
        self.predict_s.append(predict_s)
        if busy is not None:
            (self.predict_busy_s if busy else self.predict_idle_s).append(predict_s)
        if late_s is not None:
            self.latency_s.append(late_s + predict_s)
        if adapt_s is not None:
            self.adapt_total_s += adapt_s
            self.adapt_s.append(adapt_s)
        self.adapted += (adapt_s is not None) if used is None else used

    def costs(self) -> dict[str, Any]:
        p, a = self.predict_s, self.adapt_s
        out = {
            "predict_ms_p50": percentile_ms(p, 50), "predict_ms_p99": percentile_ms(p, 99),
            "adapt_ms_p50": percentile_ms(a, 50), "adapt_ms_p99": percentile_ms(a, 99),
            "adapt_ms_per_frame": round(1000 * self.adapt_total_s / max(self.frames, 1), 2),
            "fps": round(self.frames / self.busy_s, 2) if self.busy_s > 0 else None,
        }  # fmt: skip
        if self.predict_busy_s or self.predict_idle_s:
            b, i = self.predict_busy_s, self.predict_idle_s
            out.update(
                predict_ms_p99_adapting=percentile_ms(b, 99),
                predict_ms_p99_idle=percentile_ms(i, 99),
                predict_frames_adapting=len(b),
            )
        if self.latency_s:
            out.update(
                latency_ms_p50=percentile_ms(self.latency_s, 50),
                latency_ms_p99=percentile_ms(self.latency_s, 99),
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        keys = ("frames", "adapted", "busy_s", "adapt_total_s", "skipped", "dropped")
        return {
            **{k: getattr(self, k) for k in keys}, "conf": self.conf.clone(),
            **{k: torch.tensor(list(getattr(self, k)), dtype=torch.float64) for k in _SERIES},
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any], num_classes: int) -> StreamTotals:
        t = cls(num_classes)
        if data:
            t.frames, t.adapted, t.skipped = int(data["frames"]), int(data["adapted"]), int(data["skipped"])
            t.busy_s, t.adapt_total_s = float(data["busy_s"]), float(data["adapt_total_s"])
            t.dropped = int(data.get("dropped", 0))
            for k in _SERIES:
                if k in data:  # a checkpoint of an earlier version may lack the newer series
                    getattr(t, k).extend(data[k].tolist())
            t.conf = data["conf"].clone()
        return t


def percentile_ms(values: deque[float] | list[float], q: int) -> float | None:
    """The ``q``-th percentile of durations in seconds, in milliseconds (None for none)."""
    if not values:
        return None
    return round(1000 * float(np.percentile(np.asarray(values), q)), 2)


def _summary(
    adapter: OnlineAdapter | AsyncAdapter, tot: StreamTotals, seconds: float, inp: _Input, pacer: Pacer | None
) -> dict[str, Any]:
    mem = adapter.memory_bytes()
    asynchronous = isinstance(adapter, AsyncAdapter)
    out: dict[str, Any] = {
        "method": adapter.cfg.method, "deliverable": adapter.role, "frames": adapter.frames,
        "adapted_frames": adapter.used_total if asynchronous else tot.adapted, "steps": adapter.steps_run,
        "frames_skipped": tot.skipped, "every": adapter.scfg.every,
        "mode": "async" if asynchronous else "sync",
        "size": list(adapter.size) if adapter.size else None, **tot.costs(),
        "restores": adapter.restores, "memory_mib": {k: round(v / 2**20, 2) for k, v in mem.items()},
        "seconds": round(seconds, 1),
    }  # fmt: skip
    if isinstance(adapter, AsyncAdapter):  # adaptation ran on the worker: its own costs
        out.update(
            adapt_ms_p50=percentile_ms(adapter.adapt_s, 50),
            adapt_ms_p99=percentile_ms(adapter.adapt_s, 99),
            version=adapter.version,
            frames_not_adapted=adapter.not_taken,
        )
    if pacer is not None or tot.dropped:
        out["fps_target"] = round(1 / pacer.period, 3) if pacer is not None else None
        out["frames_dropped"] = tot.dropped
    if tot.conf.sum() > 0:
        out["miou_online"] = round(100 * mean_iou(tot.conf), 3)
    if inp.folder is not None and inp.folder.skipped:
        out["images_skipped"] = inp.folder.skip_report()
    return out
