"""Adaptation beside prediction: the prediction path never waits for a training step.

:class:`AsyncAdapter` wraps an :class:`~stvm_sdk.stream.online.OnlineAdapter`. The caller's thread
predicts every frame with the last *published* copy of the deliverable and hands the frame (and its
prediction) to a worker thread; the worker owns the adapter, adapts, judges health windows, restores,
and publishes a new copy of the deliverable after each change. Publishing swaps one reference under a
lock, so a prediction runs on one version of the weights from start to end; the version number
(0: the weights the stream started from, +1 per publication) is reported with each frame and window.

When frames arrive faster than the worker adapts, it adapts (statistics and a training step) on the
newest waiting frame; the others join the ring buffer, where later batches draw them, and every frame's
prediction still reaches the health window. At most ``buffer`` frames' images wait for the worker (the
oldest image is let go first, its prediction still observed): memory stays bounded on any stream.

What is guaranteed:

- the prediction of a frame never waits for adaptation (only for the lock around one reference swap),
  except in :meth:`AsyncAdapter.paused` (checkpoints, the deliverable, the end of the stream), which
  waits for the worker's running step to end;
- every frame predicted is observed by the health rule in stream order, and a restore is published
  before the next step;
- :meth:`AsyncAdapter.state_dict` is a consistent state (every frame predicted before it taken in);
  a resumed asynchronous stream continues from it, but not bit for bit: which frames share a training
  step depends on how fast the worker ran. The synchronous :class:`OnlineAdapter` stays bit-identical
  on resume.

On a CPU the two threads split the cores (the worker gets half, at least one), so a step and a
prediction run side by side. Publishing copies the weights into one of three preallocated copies in
a single C++ call: a Python-heavy deep copy would hold the interpreter lock while a prediction waits for
it (measured here: that alone took STvM's prediction p99 on lraspp from 58 to 111 ms; with the copy,
65 ms). Pausing the worker while a frame is predicted (at every module call) was tried and measured no
better (p99 68 ms, a quarter fewer steps), so the worker never waits. Pure torch and threading: no
files, no printing.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from stvm_sdk.stream.online import FrameResult, OnlineAdapter

ADAPT_TIMES_KEPT = 10_000


@dataclass
class _Item:
    """One predicted frame on its way to the worker."""

    labels: Tensor  # the prediction [H,W] (uint8/int16/int64 by class count)
    confidence: float
    version: int  # the published weights that predicted it
    image: Tensor | None  # [3,H,W] when the frame is one to adapt on and still held


def _compact(labels: Tensor, num_classes: int) -> Tensor:
    if num_classes <= 256:
        return labels.to(torch.uint8)
    return labels.to(torch.int16) if num_classes <= 32767 else labels


class AsyncAdapter:
    """Predict with the published deliverable; a worker thread adapts (see the module docstring).

    Args:
        adapter: the synchronous adapter the worker drives (owned by the worker from now on: call
            only this wrapper's methods until :meth:`close`).
        worker_threads: intra-op threads of the worker on a CPU (default: half the cores, at least 1;
            the caller's thread keeps the rest).
    """

    def __init__(self, adapter: OnlineAdapter, *, worker_threads: int | None = None) -> None:
        self.adapter = adapter
        self.version = 0
        # Three copies of the deliverable: the published one, the one a prediction may still be using,
        # and one free to be written (publishing copies tensors in one C++ call, never Python-heavy
        # deep copies that would hold the interpreter lock while a prediction waits for it).
        self._copies = [self._copy() for _ in range(3)]
        self._published: nn.Module = self._copies[0]
        self._in_use: nn.Module | None = None  # the copy the caller is predicting with
        self._lock = threading.Condition()
        self._inbox: deque[_Item] = deque()
        self._held_images = 0
        self._outbox: deque[dict[str, Any]] = deque()
        self._busy = False  # the worker is adapting (not waiting for frames)
        self._stop = False
        self._error: BaseException | None = None
        self.predicted = 0  # frames predicted (offered to the worker)
        self.not_taken = 0  # frames to adapt on whose image was let go before the worker took it
        self.adapt_s: deque[float] = deque(maxlen=ADAPT_TIMES_KEPT)  # seconds per worker adaptation
        self._window_versions: list[int] = []
        threads = torch.get_num_threads()
        self._main_threads = threads
        self._worker_threads = 0
        if adapter.device.type == "cpu":
            self._worker_threads = worker_threads or max(1, threads // 2)
            self._main_threads = max(1, threads - self._worker_threads) if threads > 1 else 1
            torch.set_num_threads(self._main_threads)
        self._thread = threading.Thread(target=self._run, name="stvm-adapt", daemon=True)
        self._thread.start()

    # --- the caller's side -----------------------------------------------------------------------------

    @property
    def network(self) -> nn.Module:
        """The published deliverable (what predicts now). Read it, do not keep it: a copy is rewritten
        once two publications have passed it by (predict through :meth:`step`, or :meth:`deliverable`
        for a model of one's own)."""
        with self._lock:
            return self._published

    def step(self, frame: Tensor) -> FrameResult:
        """Predict ``frame [3,H,W]`` in [0,1] with the published weights; hand it to the worker.
        ``window`` is the next health record the worker closed (at most one per call; :meth:`drain`
        returns the rest at the end); ``adapt_s`` is 0: adaptation is not on this thread."""
        self._raise()
        with self._lock:
            net, version, busy = self._published, self.version, self._busy
            self._in_use = net
        t0 = time.perf_counter()
        labels, conf = self.adapter.predict_with_confidence(frame, net)
        t1 = time.perf_counter()
        adapted = self.adapter.wants(self.predicted)
        k = self.adapter.source.num_classes
        item = _Item(_compact(labels, k), conf, version, frame.detach().clone() if adapted else None)
        with self._lock:
            busy = busy or self._busy
            self._inbox.append(item)
            if item.image is not None:
                self._held_images += 1
                if self._held_images > self.adapter.scfg.buffer:  # the oldest waiting image goes
                    oldest = next(i for i in self._inbox if i.image is not None)
                    oldest.image = None
                    self._held_images -= 1
                    self.not_taken += 1
            window = self._outbox.popleft() if self._outbox else None
            self._lock.notify_all()
        self.predicted += 1
        return FrameResult(labels, conf, t1 - t0, 0.0, adapted, window, version=version, busy=busy)

    def drain(self) -> list[dict[str, Any]]:
        """Wait until the worker has taken in every frame predicted; the windows not yet returned."""
        with self.paused():
            out = list(self._outbox)
            self._outbox.clear()
        return out

    @contextlib.contextmanager
    def paused(self) -> Iterator[OnlineAdapter]:
        """The adapter, with every frame predicted taken in and the worker idle until the block ends
        (checkpoints, the deliverable). Waits for at most the running step and the frames waiting;
        only the caller's thread hands the worker frames, so none arrive while it is inside."""
        with self._lock:
            while (self._inbox or self._busy) and self._error is None and self._thread.is_alive():
                self._lock.wait(0.05)
            self._raise()
            yield self.adapter

    def state_dict(self) -> dict[str, Any]:
        """The adapter's state with every frame predicted so far taken in, and the version published."""
        with self.paused() as adapter:
            return {**adapter.state_dict(), "version": self.version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self.paused() as adapter:
            adapter.load_state_dict(state)
            self.predicted = adapter.frames
            self._publish(int(state.get("version", 0)))

    def deliverable(self) -> Any:
        with self.paused() as adapter:
            return adapter.deliverable()

    def close(self) -> list[dict[str, Any]]:
        """Take in every frame predicted, then stop the worker; returns the health windows not yet
        returned by :meth:`step`. Idempotent; raises the worker's error."""
        windows: list[dict[str, Any]] = []
        if self._thread.is_alive():
            try:
                windows = self.drain()
            finally:
                with self._lock:
                    self._stop = True
                    self._lock.notify_all()
                self._thread.join()
                torch.set_num_threads(self._main_threads + self._worker_threads)
        self._raise()
        return windows

    def __getattr__(self, name: str) -> Any:
        # Read-only views of the adapter: cfg, scfg, role, source, restores, steps_run, memory_bytes, ...
        adapter = self.__dict__.get("adapter")
        if adapter is None:
            raise AttributeError(name)
        return getattr(adapter, name)

    # --- the worker --------------------------------------------------------------------------------------

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _copy(self) -> nn.Module:
        net = copy.deepcopy(self.adapter.network)
        for p in net.parameters():
            p.requires_grad_(False)
        return net.eval()

    def _publish(self, version: int | None = None) -> None:
        with self._lock:
            net = next(c for c in self._copies if c is not self._published and c is not self._in_use)
        src = list(self.adapter.network.state_dict().values())
        dst = list(net.state_dict().values())
        with torch.no_grad():
            torch._foreach_copy_(dst, src)
        with self._lock:
            self.version = self.version + 1 if version is None else version
            self._published = net

    def _run(self) -> None:
        if self._worker_threads:
            torch.set_num_threads(self._worker_threads)  # this thread's own intra-op threads
        try:
            while True:
                with self._lock:
                    while not self._stop and not self._inbox:
                        self._lock.wait()
                    if self._stop and not self._inbox:
                        return
                    items = list(self._inbox)
                    self._inbox.clear()
                    self._held_images = 0
                    self._busy = True
                try:
                    self._take(items)
                finally:
                    with self._lock:
                        self._busy = False
                        self._lock.notify_all()
        except BaseException as exc:  # raised on the caller's thread at its next call
            with self._lock:
                self._error = exc
                self._busy = False
                self._inbox.clear()
                self._lock.notify_all()

    def _take(self, items: list[_Item]) -> None:
        """Take in the waiting frames in order: the newest image gets a step, the others the buffer."""
        a = self.adapter
        newest = max((n for n, it in enumerate(items) if it.image is not None), default=-1)
        changed = False
        for n, it in enumerate(items):
            restores = len(a.restores)
            t0 = time.perf_counter()
            adapted, window = a.learn(it.image, it.labels.long(), it.confidence, step=n == newest)
            if adapted and n == newest:
                self.adapt_s.append(time.perf_counter() - t0)
                changed = True
            if len(a.restores) != restores:  # the frames predicted next use the restored weights
                self._publish()
                changed = False
            self._window_versions.append(it.version)
            if window is not None:
                window["versions"] = [min(self._window_versions), max(self._window_versions)]
                self._window_versions = []
                with self._lock:
                    self._outbox.append(window)
        if changed:
            self._publish()
