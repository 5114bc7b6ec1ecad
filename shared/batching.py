"""Running model work off the event loop, behind a bounded queue.

Each stage owns one `ModelWorker`: a single thread that runs model calls in arrival
order (Keras models are not called concurrently), with a cap on how many calls may wait.
A full queue refuses at once with QueueFull (503 + Retry-After) instead of letting
memory grow without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from shared.errors import QueueFull

T = TypeVar("T")


@dataclass(frozen=True)
class Timing:
    """Where one stage call's time went, in milliseconds."""

    queue_ms: float
    compute_ms: float

    def headers(self) -> dict[str, str]:
        return {"X-Queue-Ms": f"{self.queue_ms:.2f}", "X-Compute-Ms": f"{self.compute_ms:.2f}"}


class ModelWorker:
    def __init__(self, name: str, *, queue_size: int) -> None:
        self.name = name
        self.queue_size = queue_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        self._pending = 0

    @property
    def pending(self) -> int:
        """Calls waiting or running: the queue depth the autoscaler watches."""
        return self._pending

    async def run(self, fn: Callable[[], T]) -> tuple[T, Timing]:
        if self._pending >= self.queue_size:
            raise QueueFull(f"{self.name} queue is full ({self.queue_size} waiting)")
        self._pending += 1
        enqueued = time.perf_counter()

        def timed() -> tuple[T, float, float]:
            started = time.perf_counter()
            result = fn()
            return result, started, time.perf_counter()

        try:
            loop = asyncio.get_running_loop()
            result, started, finished = await loop.run_in_executor(self._executor, timed)
        finally:
            self._pending -= 1
        return result, Timing(
            queue_ms=(started - enqueued) * 1000, compute_ms=(finished - started) * 1000
        )

    def run_blocking(self, fn: Callable[[], T]) -> T:
        """Run on the model thread from synchronous code (start-up, warm-up)."""
        return self._executor.submit(fn).result()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
