"""Latency measurement: warm-up, per-call timings (CUDA events on GPU), percentiles, peak memory.

On a shared CPU a neighbour's burst can slow whichever backend happens to run at that moment, so
:func:`measure_interleaved` runs the backends round-robin, one call each per round: every backend
sees the same machine load, which keeps their *ratios* honest even when absolute times drift.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stvm_sdk.bench.runners import Runner


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

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


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


def measure_interleaved(
    runners: Sequence[Runner], x01: np.ndarray, *, warmup: int, iters: int, names: Sequence[str] | None = None
) -> list[Stats]:
    """Warm every runner up, then time ``iters`` rounds of one call per runner.

    Args:
        runners: backends to compare; each gets the same images.
        x01: images ``float32 [B,3,H,W]`` in [0,1].
        warmup: untimed calls per runner (kernel selection, arena growth, caches).
        iters: timed calls per runner.
        names: model label per runner (for the rows).
    """
    prepared = [r.prepare(x01) for r in runners]
    for r, x in zip(runners, prepared, strict=True):
        for _ in range(warmup):
            timed_call(r, x)
    cuda_peak = _reset_cuda_peak(runners)
    times: list[list[float]] = [[] for _ in runners]
    peaks = [0.0 for _ in runners]
    with _RssSampler() as sampler:
        for _ in range(iters):
            for i, (r, x) in enumerate(zip(runners, prepared, strict=True)):
                sampler.peak = 0.0
                times[i].append(timed_call(r, x))
                peaks[i] = max(peaks[i], sampler.peak, _rss_mb())
    rows = []
    for i, r in enumerate(runners):
        peak = cuda_peak() if r.device == "cuda" and cuda_peak else peaks[i]
        rows.append(summarize(times[i], r, (names[i] if names else r.path.name), x01.shape[0], peak))
    return add_ratios(rows)


def _reset_cuda_peak(runners: Sequence[Runner]) -> Any:
    if not any(r.device == "cuda" for r in runners):
        return None
    import torch

    torch.cuda.reset_peak_memory_stats()
    return lambda: torch.cuda.max_memory_allocated() / 2**20


def add_ratios(rows: list[Stats]) -> list[Stats]:
    """``ratio_to_torch`` = mean latency / mean latency of the eager torch row (None without one)."""
    ref = next((r for r in rows if r.backend == "torch"), None)
    for r in rows:
        r.ratio_to_torch = r.mean_ms / ref.mean_ms if ref else None
    return rows
