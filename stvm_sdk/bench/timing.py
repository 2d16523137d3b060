"""Latency measurement: warm-up, per-call timings (CUDA events on GPU), percentiles, peak memory.

On a shared CPU a neighbour's burst can slow whichever backend happens to run at that moment, so
:func:`measure_interleaved` runs the backends round-robin in short chunks: every backend sees the
same machine load, which keeps their *ratios* honest even when absolute times drift.

Every row gets a ``label`` (:func:`label_rows`) that tells it from the other rows of the table: two
ONNX Runtime rows of one model say which is the static graph and which the dynamic one, which was
exported on the fly, which precision or exporter each is.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stvm_sdk.runners.base import Runner


@dataclass
class Stats:
    """Latency statistics of one backend, in milliseconds per batch."""

    backend: str
    precision: str
    model: str
    batch: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput: float  # images per second at the mean latency
    peak_mem_mb: float | None
    device: str
    ratio_to_torch: float | None = None
    # What the artifact is, where it tells rows apart (None: not a graph, or not known).
    shape: str | None = None  # "static 512x1024" or "dynamic" (the graph's or engine's input)
    exporter: str | None = None  # e.g. "legacy, opset 17"
    origin: str | None = None  # "exported on the fly" for a checkpoint timed in ONNX Runtime
    variant: str = ""  # the facts above in which this row differs from rows of the same backend
    label: str = ""  # one line naming the row among the others (:func:`label_rows`)

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


BACKEND_NAMES = {"torch": "PyTorch eager", "ort": "ONNX Runtime", "trt": "TensorRT"}
_FACTS = ("shape", "exporter", "origin")


def label_rows(rows: list[Stats]) -> list[Stats]:
    """Give each row a ``label`` that tells it from the others: its file (when the rows come from
    several), backend and precision, and ``variant``: the facts (static/dynamic input, exporter and
    opset, exported on the fly) in which it differs from other rows of the same backend."""
    several_files = len({r.model for r in rows}) > 1
    for r in rows:
        peers = [o for o in rows if o.backend == r.backend]
        differs = [f for f in _FACTS if len({getattr(o, f) for o in peers}) > 1]
        r.variant = ", ".join(str(getattr(r, f)) for f in differs if getattr(r, f))
        parts = [BACKEND_NAMES.get(r.backend, r.backend), r.precision, *([r.variant] if r.variant else [])]
        r.label = f"{r.model} ({', '.join(parts)})" if several_files else ", ".join(parts)
    seen: Counter[str] = Counter(r.label for r in rows)
    nth: Counter[str] = Counter()
    for r in rows:  # the same file, backend and facts twice (given twice): number them
        if seen[r.label] > 1:
            nth[r.label] += 1
            r.label = f"{r.label} #{nth[r.label]}"
    return rows


def summarize(
    times_ms: Sequence[float], runner: Runner, model: str, batch: int, peak_mb: float | None
) -> Stats:
    t = np.asarray(times_ms, dtype=np.float64)
    mean = float(t.mean())
    p50, p90, p99 = (float(np.percentile(t, q)) for q in (50, 90, 99))
    return Stats(
        runner.backend,
        runner.precision,
        model,
        batch,
        mean,
        p50,
        p90,
        p99,
        1000.0 * batch / mean,
        peak_mb,
        runner.device,
    )


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _RssSampler:
    """Samples the process's resident memory every few ms; ``peak`` is the highest value seen."""

    def __init__(self, period_s: float = 0.005) -> None:
        self.peak, self._stop, self.period = 0.0, threading.Event(), period_s
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            self._stop.wait(self.period)

    def __enter__(self) -> _RssSampler:
        if os.path.exists("/proc/self/statm"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def timed_call(runner: Runner, x: Any) -> float:
    """One call of ``runner.run(x)`` in ms; on CUDA timed with events around the launch."""
    if runner.device == "cuda":
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        runner.run(x)
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    runner.run(x)
    return (time.perf_counter() - t0) * 1000.0


def open_and_warm(
    open_fn: Callable[[], Runner], x01: np.ndarray, warmup: int
) -> tuple[Runner, Any, float | None]:
    """Open a runner and warm it up; return it, its prepared input and its memory footprint in MB.

    The footprint is the peak resident (CPU) or allocated (CUDA, torch-owned) memory while it was
    opened and warmed up, minus what the process held before: weights, arenas and workspaces of
    this backend alone (measured before the next backend is opened).
    """
    cuda = _cuda_available()
    base_rss = _rss_mb()
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated() / 2**20
    with _RssSampler() as sampler:
        runner = open_fn()
        x = runner.prepare(x01)
        for _ in range(max(1, warmup)):
            timed_call(runner, x)
        sampler.peak = max(sampler.peak, _rss_mb())
    if runner.device == "cuda" and cuda:
        return runner, x, torch.cuda.max_memory_allocated() / 2**20 - base_cuda
    return runner, x, max(0.0, sampler.peak - base_rss)


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def measure_interleaved(
    runners: Sequence[Runner], prepared: Sequence[Any], *, iters: int, batch: int,
    names: Sequence[str] | None = None, memory: Sequence[float | None] | None = None,
) -> list[Stats]:  # fmt: skip
    """Time ``iters`` calls per runner, in rounds of a few consecutive calls per runner.

    Each round starts with one untimed call: thread pools of the previous runtime (OpenMP's spin for a
    while after a call) then no longer steal cores from the one being timed. That call is shorter than
    ONNX Runtime's spinning (~30 ms), so `stvm bench` opens its sessions not to spin after a run
    (:func:`stvm_sdk.runners.ort.no_spinning_after_run`).

    Args:
        runners: warmed-up backends to compare; ``prepared``: their inputs (the same images).
        iters: timed calls per runner.
        batch: images per call (for throughput).
        names: model label per runner; ``memory``: footprint per runner (from :func:`open_and_warm`).
    """
    chunk = max(1, min(10, iters // 4))
    times: list[list[float]] = [[] for _ in runners]
    while len(times[0]) < iters:
        for i, (r, x) in enumerate(zip(runners, prepared, strict=True)):
            r.run(x)
            for _ in range(min(chunk, iters - len(times[i]))):
                times[i].append(timed_call(r, x))
    rows = []
    for i, r in enumerate(runners):
        mem = memory[i] if memory else None
        rows.append(summarize(times[i], r, names[i] if names else Path(r.path).name, batch, mem))
    return label_rows(add_ratios(rows))


def add_ratios(rows: list[Stats]) -> list[Stats]:
    """``ratio_to_torch`` = mean latency / mean latency of the eager torch row (None without one)."""
    ref = next((r for r in rows if r.backend == "torch"), None)
    for r in rows:
        r.ratio_to_torch = r.mean_ms / ref.mean_ms if ref else None
    return rows
