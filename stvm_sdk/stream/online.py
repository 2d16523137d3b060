"""Continual adaptation on a stream of frames: predict each frame first, then learn from it.

:class:`OnlineAdapter` wraps any registered :class:`~stvm_sdk.methods.base.Method` for a stream whose
frames arrive once, in order, from a drifting domain::

    adapter = OnlineAdapter(source, method)    # any registered method name
    for frame in camera:                      # [3,H,W] in [0,1]
        labels = adapter.step(frame)          # the current deliverable's prediction, then adaptation

Per frame:

1. **predict** with the current deliverable network (the teacher for teacher methods, decision 10);
2. on every ``every``-th frame, **adapt**: the frame enters a ring buffer of ``buffer`` recent frames
   (the only frames kept; MOCM's partners and the batch come from it), the BatchNorm statistics follow
   the stream (``bn_momentum``), one training step of the method runs on the newest frame plus
   ``batch_size - 1`` frames drawn from the buffer, and a share ``restore_prob`` of the trained
   weights returns to the source model's values (CoTTA's stochastic restore: an anchor that keeps
   the network from wandering far over hours of drift);
3. **health**: the deliverable's and the frozen source model's class histograms on the adapted frame,
   confidence, the method's mean pixel weight (a metric reliability, where the method has a metric
   network) and teacher-student agreement go into the current window; every
   ``window`` frames :class:`~stvm_sdk.stream.settings.HealthRule` judges it, and a collapse restores the
   last healthy weights (or the source model's).

What a method needs on a stream (how BatchNorm predicts and follows, the batch a step needs, its
options on a stream) is its :attr:`~stvm_sdk.methods.base.Method.online`; this module never asks which
method runs.

Memory is bounded: the buffer (``buffer x 3 x H x W`` floats), the method's networks, the frozen source
model, the source weights of the trained parameters and one healthy snapshot of the method
(:meth:`OnlineAdapter.memory_bytes`). Pure torch: no files, no printing; :mod:`stvm_sdk.stream.run`
does the I/O.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from stvm_sdk.config import AdaptConfig
from stvm_sdk.distributed import BATCH_STREAM, step_generator
from stvm_sdk.errors import ConfigError, DataError
from stvm_sdk.methods.base import Method
from stvm_sdk.methods.parts.norm import BN_TYPES, batchnorms, mixed_statistics_hooks
from stvm_sdk.methods.registry import get_method, resolve
from stvm_sdk.models.contract import forward_logits, normalize
from stvm_sdk.models.segmodel import SegModel
from stvm_sdk.rundir import overflowed
from stvm_sdk.stream.health import HealthMonitor
from stvm_sdk.stream.settings import StreamConfig


def online_config(method: str | None = None, config: AdaptConfig | None = None) -> AdaptConfig:
    """The config of ``method`` (default: ``config``'s, else the default method) on a stream, resolved:
    ``config`` as given, or the defaults with the method's stream options (:attr:`Online.options`);
    always a constant learning rate: a stream has no ``run.iters`` to decay towards, and poly decay
    would stop learning for good after that many steps."""
    name = method or (config.method if config is not None else AdaptConfig.method)
    if config is None:
        own = get_method(name).online.options
        config = AdaptConfig(method=name).with_overrides({f"methods.{name}.{k}": v for k, v in own.items()})
    return resolve(config.with_overrides({"method": name, "optim.poly_power": 0.0}))[0]


def unread_settings(method: str) -> dict[str, str]:
    """The stream settings (:class:`StreamConfig` fields) that ``method`` never reads on a stream, each
    with the reason (from its :attr:`~stvm_sdk.methods.base.Method.online` alone)."""
    cls = get_method(method)
    online = cls.online
    out: dict[str, str] = {}
    if not online.adapts:
        out["every"] = "adapts on no frame (it only predicts)"
    if not (online.adapts and cls.trains()):
        why = "takes no training steps"
        out.update(batch_size=why, buffer=why, restore_prob=why)
    if not (online.adapts and (cls.trains() or online.follow_bn)):
        out["reset_every"] = "changes nothing on a stream to reset"
    if not (online.adapts and online.follow_bn):
        out["bn_momentum"] = "does not follow BatchNorm statistics on a stream"
    if online.bn_predict != "stream":
        what = {"mix": "mixed source and frame"}.get(online.bn_predict, online.bn_predict)
        out["bn_predict"] = f"always predicts with BatchNorm's {what} statistics"
    return out


def _own_statistics(bn: nn.Module, inputs: tuple[Tensor, ...]) -> None:
    """Normalise by the input's own statistics where it has more than one value per channel; a
    pooled branch (DeepLabV3's ASPP image pooling: [1,C,1,1] for one frame) keeps running statistics."""
    x = inputs[0]
    bn.training = x.numel() > x.shape[1]


@contextlib.contextmanager
def _modes(
    net: nn.Module, bn_train: bool = False, keep_stats: bool = False, mix: float | None = None
) -> Iterator[None]:
    """Run ``net`` in eval mode (BatchNorm normalising by the input's statistics when ``bn_train``,
    see :func:`_own_statistics`; with ``keep_stats`` their running statistics do not move; with
    ``mix``, by that share of the running statistics + the rest x the input's); modes restored after."""
    saved = [(m, m.training) for m in net.modules()]
    bns = [m for m in net.modules() if isinstance(m, BN_TYPES)] if bn_train else []
    momenta = [bn.momentum for bn in bns]
    hooks = [bn.register_forward_pre_hook(_own_statistics) for bn in bns]
    if mix is not None:
        hooks += mixed_statistics_hooks(net, mix)
    net.eval()
    for bn in bns:
        bn.train()
        if keep_stats:
            bn.momentum = 0.0
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for m, training in saved:
            m.training = training
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum


class RingBuffer:
    """The last ``capacity`` frames ``[3,H,W]``, preallocated (memory fixed once the size is known)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.data: Tensor | None = None
        self.count = 0  # frames ever pushed; the newest sits at (count - 1) % capacity

    def push(self, frame: Tensor) -> None:
        if self.data is None:
            self.data = frame.new_zeros((self.capacity, *frame.shape))
        self.data[self.count % self.capacity].copy_(frame)
        self.count += 1

    def __len__(self) -> int:
        return min(self.count, self.capacity)

    def batch(self, size: int, g: torch.Generator) -> Tensor:
        """The newest frame first, then ``size - 1`` distinct others drawn from the buffer (fewer early)."""
        assert self.data is not None
        newest = (self.count - 1) % self.capacity
        others = [i for i in range(len(self)) if i != newest]
        pick = [others[int(j)] for j in torch.randperm(len(others), generator=g)[: size - 1]]
        return self.data[[newest, *pick]]

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.data, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data, self.count = state["data"], int(state["count"])

    @property
    def nbytes(self) -> int:
        return 0 if self.data is None else self.data.numel() * self.data.element_size()


@dataclass
class FrameResult:
    """What one :meth:`OnlineAdapter.step` did."""

    labels: Tensor  # [H,W] int64: the deliverable's prediction, made before adapting on the frame
    confidence: float  # its mean max-softmax
    predict_s: float  # seconds to predict
    adapt_s: float  # seconds spent adapting on this frame (0 when it was not adapted on)
    adapted: bool  # adapted on: the method took the frame in (its statistics, its buffer)
    window: dict[str, Any] | None = None  # the health record when this frame closed a window
    # Frames this one's adaptation counts as adapted: for a method that trains, the frames a training
    # step used for the first time (none until the buffer holds a batch, then all those waiting); for
    # one that only follows BatchNorm statistics, this frame.
    used: int = 0
    version: int | None = None  # asynchronous mode: the published weights that predicted the frame
    busy: bool = False  # asynchronous mode: the worker was adapting while the frame was predicted


class OnlineAdapter:
    """A method adapting on a stream, one frame at a time (see the module docstring).

    Args:
        source: the source model (copied; never mutated).
        method: a registered method (default: ``config``'s); what it does on a stream is its
            :attr:`~stvm_sdk.methods.base.Method.online` (a baseline only predicts, a BatchNorm method
            only follows statistics, a method that trains also takes training steps).
        config: the method's config (default :func:`online_config`).
        stream: how the stream adapts (:class:`StreamConfig`).
        device: where the networks run.
        seed: seeds the buffer draws and the method's per-step randomness (step ``t`` draws from the
            same generator whether or not the stream was resumed).
    """

    def __init__(
        self,
        source: SegModel,
        method: str | None = None,
        *,
        config: AdaptConfig | None = None,
        stream: StreamConfig | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        self.cfg = online_config(method, config)
        self.scfg = stream or StreamConfig()
        self.seed = seed
        self.device = torch.device(device)
        self.method_cls = get_method(self.cfg.method)
        online = self.method_cls.online
        if self.method_cls.trains() and self.scfg.batch_size < online.min_batch:
            raise ConfigError(
                f"{self.method_cls.name} {online.min_batch_why or 'needs larger batches'} when it trains: "
                f"--batch-size must be >= {online.min_batch}"
            )
        self.source = source.clone()
        self.source.module.to(self.device).eval()
        for p in self.source.module.parameters():
            p.requires_grad_(False)
        work = source.clone()
        work.module.to(self.device)
        self.method: Method = self.method_cls.build(work, self.cfg, torch.Generator().manual_seed(seed))
        self.method.to(self.device)
        if self.method.optimizer is None:  # predicts with the student: eval mode (no dropout)
            self.method.student.eval()
        self.role = self.method.deliverable_role
        # Each predicted frame normalised by its own statistics: the method's rule, or the stream's.
        rule = self.scfg.bn_predict if online.bn_predict == "stream" else online.bn_predict
        self.batch_stats = rule == "frame"
        self.mix_share = self.method_cls.source_share(self.cfg) if rule == "mix" else None
        self.follow_bn = self.scfg.bn_momentum > 0 and online.follow_bn
        self.adapts = online.adapts
        self.buffer = RingBuffer(self.scfg.buffer)
        self.monitor = HealthMonitor(source.num_classes, self.scfg.health)
        self.frames = 0  # frames seen (predicted)
        self.steps = 0  # training steps since the start or the last restore to the source
        self.steps_run = 0  # training steps over the whole stream
        self.pushed = 0  # frames adapted on (taken into the buffer)
        self.pending = 0  # of those, frames no training step has used yet (a method that trains)
        self._used = 0  # frames the last adaptation counted as adapted
        self.used_total = 0  # frames counted as adapted over the stream (since this process started)
        self.restores: list[dict[str, Any]] = []  # every restore: frame, to what, why
        self.size: tuple[int, int] | None = None
        self._initial = _cpu_copy(self.method.state_dict())  # the method at the start: "source"
        self._healthy: dict[str, Any] | None = None  # the last snapshot judged healthy
        trained = [n for n, p in self.method.student.named_parameters() if p.requires_grad]
        self._anchor = {
            n: p.detach().clone() for n, p in self.method.student.named_parameters() if n in trained
        }

    @property
    def trains(self) -> bool:
        """Whether the method takes training steps on this stream."""
        return self.adapts and self.method.optimizer is not None

    # --- the deliverable -------------------------------------------------------------------------------

    @property
    def network(self) -> nn.Module:
        """The network that predicts (and is exported): the teacher or the student."""
        return getattr(self.method, self.role)  # type: ignore[no-any-return]

    def deliverable(self) -> SegModel:
        """The current deliverable as an independent :class:`SegModel` (eval mode, on CPU)."""
        model = self.source.clone()
        model.module.load_state_dict(self.network.state_dict())
        model.module.cpu().eval()
        return model

    def predict(self, frame: Tensor) -> Tensor:
        """The current deliverable's labels ``[H,W]`` for ``frame [3,H,W]`` in [0,1]; adapts nothing
        (:meth:`step` predicts, then adapts)."""
        return self.predict_with_confidence(frame)[0]

    def predict_with_confidence(
        self, frame: Tensor, network: nn.Module | None = None
    ) -> tuple[Tensor, float]:
        """:meth:`predict`, and the prediction's mean max-softmax; ``network``: another copy of the
        deliverable to predict with (the asynchronous mode's published weights)."""
        net = self.network if network is None else network
        x = normalize(self._check(frame)[None], self.source.mean, self.source.std)
        with torch.no_grad(), _modes(net, bn_train=self.batch_stats, keep_stats=True, mix=self.mix_share):
            logits = forward_logits(net, x).float()
        conf, labels = logits.softmax(1).max(1)
        return labels[0], float(conf.mean())

    # --- one frame -------------------------------------------------------------------------------------

    def step(self, frame: Tensor) -> FrameResult:
        """Predict ``frame [3,H,W]`` in [0,1] with the current deliverable, then adapt on it."""
        t0 = time.perf_counter()
        labels, conf = self.predict_with_confidence(frame)
        t1 = time.perf_counter()
        adapted, window = self.learn(frame, labels, conf)
        t2 = time.perf_counter()
        return FrameResult(labels, conf, t1 - t0, t2 - t1 if adapted else 0.0, adapted, window, self._used)

    def wants(self, index: int) -> bool:
        """Whether the ``index``-th frame of the stream (0-based) is one to adapt on (``every``)."""
        return self.adapts and index % self.scfg.every == 0

    def learn(
        self, frame: Tensor | None, labels: Tensor, conf: float, *, step: bool = True
    ) -> tuple[bool, dict[str, Any] | None]:
        """Everything after the prediction of one frame: adapt on it when it is one to adapt on (with
        ``step=False`` it only joins the buffer: a later step's batch draws it), observe its health,
        close the window when it is full. ``frame`` may be None for a frame not adapted on (only its
        prediction ``labels`` and confidence are observed). Returns (adapted on, window record or None)."""
        adapted = self.wants(self.frames) and frame is not None
        self.frames += 1
        logs: dict[str, float] = {}
        source_pred = None
        self._used = 0
        if adapted and frame is not None:
            if step:
                logs, source_pred = self.adapt(self._check(frame))
            else:
                self.take(self._check(frame))
        self.monitor.observe(labels, source_pred, conf, logs)
        self.used_total += self._used
        window = self.close_window() if self.frames % self.scfg.window == 0 else None
        reset = self.scfg.reset_every
        if reset and self.frames % reset == 0 and (self.trains or self.follow_bn):
            self.restore([f"periodic reset every {reset} frames"], to="source", periodic=True)
        return adapted, window

    def take(self, frame: Tensor) -> None:
        """``frame`` joins the buffer without a step of its own (a later step's batch may draw it)."""
        self.buffer.push(frame.to(self.device))
        self.pushed += 1
        self.pending += 1

    def adapt(self, frame: Tensor) -> tuple[dict[str, float], Tensor]:
        """One adaptation on ``frame``: buffer, BatchNorm statistics, a training step, the anchor.
        Returns the health logs and the frozen source model's labels for the frame."""
        x = frame.to(self.device)
        self.take(x)
        with torch.no_grad():
            src = forward_logits(self.source.module, normalize(x[None], self.source.mean, self.source.std))
            source_pred = src.argmax(1)[0]
        if self.follow_bn:
            self._follow_bn(x[None])
        out: dict[str, float] = {}
        stepped = False
        # Training starts once the buffer holds a whole batch: a batch of one frame would give a
        # pooled branch's BatchNorm one value per channel (batch statistics cannot be taken).
        if self.method.optimizer is not None and len(self.buffer) >= self.scfg.batch_size:
            g = step_generator(self.seed, self.frames, stream=BATCH_STREAM)
            batch = self.buffer.batch(self.scfg.batch_size, g)
            try:
                logs = self.method.step(batch, self.steps, g, g)
            except RuntimeError as exc:
                if (error := overflowed(exc, self.steps_run + 1, self.method_cls)) is not None:
                    raise error from None
                raise
            out["loss"] = float(logs["loss"])
            if "mean_weight" in logs and self.method.metric is not None:
                out["reliability"] = float(logs["mean_weight"])
            if self.scfg.restore_prob > 0:
                self._stochastic_restore(g)
            if self.method.teacher is not None:
                out["agreement"] = self._agreement(x[None])
            self.steps += 1
            self.steps_run += 1
            stepped = True
        if self.method.optimizer is None:  # its adaptation is the statistics it follows
            self._used, self.pending = int(self.follow_bn), 0
        elif stepped:  # the batch holds the newest frame and, at the first step, every frame buffered
            self._used, self.pending = self.pending, 0
        return out, source_pred

    def close_window(self) -> dict[str, Any]:
        """Judge the current window; restore the method when the health rule says so."""
        record = self.monitor.close()
        record["frame"] = self.frames
        if record["restore"] and self.scfg.health.restore == "off":  # monitored, not acted on
            record["restored_to"] = None
        elif record["restore"]:
            record["restored_to"] = self.restore(record["reasons"] or ["unhealthy"])
        elif record["healthy"]:
            self._healthy = _cpu_copy(self.method.state_dict())
        return record

    def restore(self, reasons: list[str], *, to: str | None = None, periodic: bool = False) -> str:
        """Put back the last healthy weights (or the source's, per the rule, or when there is no
        healthy snapshot or it is the one that just failed; or ``to="source"``); returns which.
        ``periodic``: a scheduled reset (``reset_every``), not a health verdict."""
        rule = (
            to or self.scfg.health.restore
        )  # "off": close_window restores nothing (called directly: as default)
        # A second collapse right after a restore to the last healthy snapshot: that snapshot was
        # already on its way down, so go back to the source.
        repeat = (
            bool(self.restores)
            and self.restores[-1]["to"] == "last_healthy"
            and (self.frames - self.restores[-1]["frame"] <= 2 * self.scfg.health.patience * self.scfg.window)
        )
        to = "source" if rule == "source" or self._healthy is None or repeat else "last_healthy"
        state = self._initial if to == "source" else self._healthy
        assert state is not None
        self.method.reset(state)  # momentum from the collapse does not carry on
        if to == "source":
            self.steps = 0  # the teacher's EMA ramp and STvM's metric warm-up start over
            self._healthy = None
        entry: dict[str, Any] = {"frame": self.frames, "to": to, "reasons": reasons}
        if periodic:
            entry["periodic"] = True
        self.restores.append(entry)
        return to

    # --- parts -----------------------------------------------------------------------------------------

    def _check(self, frame: Tensor) -> Tensor:
        if frame.dim() != 3 or frame.shape[0] != 3:
            raise DataError(f"a stream frame must be [3,H,W] in [0,1], got shape {tuple(frame.shape)}")
        size = (int(frame.shape[1]), int(frame.shape[2]))
        if self.size is None:
            self.size = size
        elif size != self.size:  # the buffer batches frames: one size per stream
            raise DataError(
                f"frame of {size[1]}x{size[0]} in a stream of {self.size[1]}x{self.size[0]} frames: "
                "resize frames to one size (the stream command's --size HxW)"
            )
        return frame.to(self.device, torch.float32)

    @torch.no_grad()
    def _follow_bn(self, x: Tensor) -> None:
        """BatchNorm running statistics of the trained/predicting networks move towards this frame's."""
        student = self.method.student  # the teacher (if any) takes the student's statistics
        bns = batchnorms(student)
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.momentum = self.scfg.bn_momentum
        try:
            with _modes(student, bn_train=True):
                forward_logits(student, normalize(x, self.source.mean, self.source.std))
        finally:
            for bn, m in zip(bns, momenta, strict=True):
                bn.momentum = m
        if self.method.teacher is not None:
            for tb, sb in zip(batchnorms(self.method.teacher), bns, strict=True):
                tb.running_mean.copy_(sb.running_mean)
                tb.running_var.copy_(sb.running_var)

    @torch.no_grad()
    def _stochastic_restore(self, g: torch.Generator) -> None:
        p = self.scfg.restore_prob
        for name, param in self.method.student.named_parameters():
            anchor = self._anchor.get(name)
            if anchor is None:
                continue
            keep = torch.rand(param.shape, generator=g).to(param.device) >= p
            param.copy_(torch.where(keep, param, anchor))

    @torch.no_grad()
    def _agreement(self, x: Tensor) -> float:
        assert self.method.teacher is not None
        xn = normalize(x, self.source.mean, self.source.std)
        with _modes(self.method.student):
            s = forward_logits(self.method.student, xn).argmax(1)
        with _modes(self.method.teacher):
            t = forward_logits(self.method.teacher, xn).argmax(1)
        return float((s == t).float().mean())

    # --- state -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a killed stream needs to continue exactly: weights, optimiser, buffer, health."""
        opt = self.method.optimizer
        return {
            "frames": self.frames, "steps": self.steps, "steps_run": self.steps_run, "pushed": self.pushed,
            "pending": self.pending, "size": self.size, "method": self.method.state_dict(),
            "optimizer": opt.state_dict() if opt is not None else None, "buffer": self.buffer.state_dict(),
            "monitor": self.monitor.state_dict(), "healthy": self._healthy,
            "restores": copy.deepcopy(self.restores), "used_total": self.used_total,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frames, self.steps = int(state["frames"]), int(state["steps"])
        # Streams checkpointed before these were kept: their steps since the last restore, no frame waiting.
        self.steps_run = int(state.get("steps_run", self.steps))
        self.pushed, self.pending = int(state.get("pushed", 0)), int(state.get("pending", 0))
        self.used_total = int(state.get("used_total", 0))
        self.size = tuple(state["size"]) if state["size"] is not None else None  # type: ignore[assignment]
        self.method.load_state_dict(state["method"])
        if self.method.optimizer is not None and state["optimizer"] is not None:
            self.method.optimizer.load_state_dict(state["optimizer"])
        buf = state["buffer"]
        self.buffer.load_state_dict(
            {"data": None if buf["data"] is None else buf["data"].to(self.device), "count": buf["count"]}
        )
        self.monitor.load_state_dict(state["monitor"])
        self._healthy = state["healthy"]
        self.restores = list(state["restores"])

    def export(self, out_dir: str | Path, **options: Any) -> Any:
        """Export the current deliverable through the verified ONNX path (the export command's):
        ``options`` are :class:`~stvm_sdk.export.options.ExportOptions` fields (e.g. ``shape="128x256"``,
        ``precisions=("fp16",)``). Returns the :class:`~stvm_sdk.export.report.ExportReport`."""
        from stvm_sdk.export.pipeline import ExportOptions, export_model

        return export_model(self.deliverable(), ExportOptions(out_dir=Path(out_dir), **options))

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held: the buffer, the frozen source model, the anchor (source values of the trained
        weights), snapshots (the start and the last healthy state), the method's networks, optimiser."""

        def size(obj: Any) -> int:
            if isinstance(obj, Tensor):
                return obj.numel() * obj.element_size()
            if isinstance(obj, dict):
                return sum(size(v) for v in obj.values())
            return 0

        opt = self.method.optimizer

        return {
            "buffer": self.buffer.nbytes,
            "source_model": sum(size(t) for t in self.source.module.state_dict().values()),
            "anchor": size(self._anchor),
            "snapshots": size(self._initial) + size(self._healthy or {}),
            "method": size(self.method.state_dict()),
            "optimizer": size(opt.state_dict()["state"]) if opt is not None else 0,
        }


def _cpu_copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def resize_frame(frame: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Bilinear resize of a ``[3,H,W]`` frame to ``size`` (no-op for None or the same size)."""
    if size is None or tuple(frame.shape[-2:]) == tuple(size):
        return frame
    return nnf.interpolate(frame[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
