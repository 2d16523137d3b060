"""Replay at a camera's frame rate: which frames the predictor serves, and which it drops.

A constant-speed protocol: frame ``i`` arrives ``i / fps`` seconds after the first. When the predictor
is free before a frame arrives, it waits for it; when it is free after the *next* frame has arrived,
the frame is dropped (a car shows the newest frame, not a late one) and counted. Whatever runs between
two predictions (a synchronous adaptation, reading the next frame) is paid for in dropped frames, so a
slow method gets fewer frames, not more time.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Pacer:
    """Frame arrivals at ``fps`` per second; :meth:`admit` says whether the predictor serves a frame."""

    def __init__(
        self,
        fps: float,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.period = 1.0 / fps
        self.clock, self.sleep = clock, sleep
        self.start: float | None = None  # the first frame's arrival
        self.served = 0
        self.dropped = 0
        self.late_s = 0.0  # the last served frame's wait: from its arrival to the predictor starting it

    def arrival(self, i: int) -> float:
        """When frame ``i`` (0-based, in stream order) arrives."""
        assert self.start is not None
        return self.start + i * self.period

    def admit(self, i: int) -> bool:
        """The predictor is free for frame ``i``: True (after waiting for it to arrive, if early) to
        serve it, False to drop it because frame ``i + 1`` has already arrived."""
        now = self.clock()
        if self.start is None:
            self.start = now - i * self.period
        if now < self.arrival(i):
            self.sleep(self.arrival(i) - now)
            now = self.clock()
        if now >= self.arrival(i + 1):
            self.dropped += 1
            return False
        self.served += 1
        self.late_s = max(0.0, now - self.arrival(i))
        return True
