"""Running model work off the event loop, behind a bounded queue.

Each stage owns one `ModelWorker`: a single thread that runs model calls in arrival
order (Keras models are not called concurrently), with a cap on how many calls may wait.
A full queue refuses at once with QueueFull (503 + Retry-After) instead of letting
memory grow without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from shared.errors import QueueFull
from shared.tracing import batched_call_span, current_span_context

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
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
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
            result, started, finished = await loop.run_in_executor(self.executor, timed)
        finally:
            self._pending -= 1
        return result, Timing(
            queue_ms=(started - enqueued) * 1000, compute_ms=(finished - started) * 1000
        )

    def run_blocking(self, fn: Callable[[], T]) -> T:
        """Run on the model thread from synchronous code (start-up, warm-up)."""
        return self.executor.submit(fn).result()

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------------------
# Diffusion: step-level continuous batching


StepFunction = Callable[[Any, list[Any]], None]
ProgressCallback = Callable[[int, int], None]


@dataclass(eq=False)
class _StepJob:
    """One request's rows inside the scheduler."""

    rows: list[Any]  # shared.sampler.Row, all of one latent shape
    group: Hashable  # rows of different groups (sizes) never share a model call
    future: asyncio.Future[None]
    enqueued: float
    on_step: ProgressCallback | None = None
    started: float | None = None
    cancelled: bool = False
    trace_context: Any = None  # the request's span, linked from each model call

    @property
    def done(self) -> bool:
        return all(r.done for r in self.rows)

    @property
    def progress(self) -> tuple[int, int]:
        row = max(self.rows, key=lambda r: r.position)
        total = row.steps_done + row.position + 1
        return row.steps_done, total


@dataclass
class BatchStats:
    """What the scheduler did, for tests, benchmarks and metrics."""

    model_calls: int = 0
    rows_per_call: list[int] = field(default_factory=list)
    cancelled_jobs: int = 0
    # Metrics hooks (shared.metrics): rows of each model call, and each request's timing.
    on_call: list[Callable[[int], None]] = field(default_factory=list)
    on_request: list[Callable[[Timing], None]] = field(default_factory=list)

    def record(self, rows: int) -> None:
        self.model_calls += 1
        self.rows_per_call.append(rows)
        del self.rows_per_call[:-1000]  # keep the recent history only
        for hook in self.on_call:
            hook(rows)

    def request_done(self, timing: Timing) -> Timing:
        for hook in self.on_request:
            hook(timing)
        return timing


class StepScheduler:
    """Runs many requests' denoising rows together, one model call per step.

    A request's rows join the running batch at the next step boundary and leave as soon as
    they are done; each row keeps its own timestep, context, guidance and schedule, so
    rows at different steps share a call. Rows are grouped (by latent shape): each call
    serves the group of the oldest waiting request. Up to `max_rows` rows per call, taken
    first come first served (`fcfs`) or one row per request in turn (`fair`). With
    `continuous=False` one request runs to completion before the next starts (the
    baseline the benchmarks compare against).
    """

    def __init__(
        self,
        worker: ModelWorker,
        step: StepFunction,
        *,
        max_rows: int,
        queue_size: int,
        admission: str = "fcfs",
        continuous: bool = True,
    ) -> None:
        self.worker = worker
        self.step = step
        self.max_rows = max_rows
        self.queue_size = queue_size
        self.admission = admission
        self.continuous = continuous
        self.stats = BatchStats()
        self._jobs: list[_StepJob] = []  # admission order
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        """Requests waiting or running: what the autoscaler watches."""
        return len(self._jobs)

    async def run(
        self, rows: list[Any], group: Hashable, on_step: ProgressCallback | None = None
    ) -> Timing:
        """Denoise `rows` in place; returns when they are all done (or raises)."""
        if len(self._jobs) >= self.queue_size:
            raise QueueFull(f"{self.worker.name} queue is full ({self.queue_size} requests)")
        loop = asyncio.get_running_loop()
        job = _StepJob(rows, group, loop.create_future(), time.perf_counter(), on_step)
        job.trace_context = current_span_context()
        self._jobs.append(job)
        if self._loop_task is None or self._loop_task.done() or self._wakeup is None:
            # (Re)started per event loop: asyncio primitives belong to the loop they run on.
            self._wakeup = asyncio.Event()
            self._loop_task = loop.create_task(self._loop(self._wakeup))
        self._wakeup.set()
        try:
            await asyncio.shield(job.future)
        except asyncio.CancelledError:
            # The caller went away (client disconnect, cancel): free its rows at the
            # next step boundary instead of computing an answer nobody reads.
            job.cancelled = True
            raise
        finished = time.perf_counter()
        started = job.started or finished
        return self.stats.request_done(
            Timing((started - job.enqueued) * 1000, (finished - started) * 1000)
        )

    def _select(self) -> tuple[list[_StepJob], list[Any]]:
        live = [j for j in self._jobs if not j.cancelled and not j.done]
        if not live:
            return [], []
        group = live[0].group
        candidates = [j for j in live if j.group == group]
        if not self.continuous:
            candidates = candidates[:1]
        chosen_rows: list[Any] = []
        chosen_jobs: list[_StepJob] = []
        if self.admission == "fair":
            queues = [[r for r in j.rows if not r.done] for j in candidates]
            while len(chosen_rows) < self.max_rows and any(queues):
                for job, queue in zip(candidates, queues, strict=True):
                    if queue and len(chosen_rows) < self.max_rows:
                        chosen_rows.append(queue.pop(0))
                        if job not in chosen_jobs:
                            chosen_jobs.append(job)
        else:
            for job in candidates:
                for row in job.rows:
                    if not row.done and len(chosen_rows) < self.max_rows:
                        chosen_rows.append(row)
                        if job not in chosen_jobs:
                            chosen_jobs.append(job)
        return chosen_jobs, chosen_rows

    def _retire(self) -> None:
        """Answer finished requests and drop cancelled ones (at a step boundary)."""
        remaining = []
        for job in self._jobs:
            if job.cancelled:
                self.stats.cancelled_jobs += 1
                if not job.future.done():
                    job.future.cancel()
            elif job.done:
                if not job.future.done():
                    job.future.set_result(None)
            else:
                remaining.append(job)
        self._jobs = remaining

    async def _loop(self, wakeup: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._retire()
            jobs, rows = self._select()
            if not rows:
                if not self._jobs:
                    return
                wakeup.clear()
                await wakeup.wait()
                continue
            now = time.perf_counter()
            for job in jobs:
                job.started = job.started or now
            group = jobs[0].group
            try:
                with batched_call_span(
                    f"{self.worker.name} step", len(rows), [j.trace_context for j in jobs]
                ):
                    await loop.run_in_executor(self.worker.executor, self.step, group, rows)
            except Exception as exc:
                # A failed model call fails every request that had rows in it.
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                self._jobs = [j for j in self._jobs if j not in jobs]
                continue
            self.stats.record(len(rows))
            for job in jobs:
                if job.on_step is not None and not job.cancelled:
                    job.on_step(*job.progress)


# --------------------------------------------------------------------------------------
# Text encoder and decoder: request-level dynamic batching

Item = TypeVar("Item")
Output = TypeVar("Output")


@dataclass(eq=False)
class _BatchRequest(Generic[Item, Output]):
    items: list[Item]
    group: Hashable
    future: asyncio.Future[list[Output]]
    enqueued: float
    started: float | None = None
    trace_context: Any = None


class DynamicBatcher(Generic[Item, Output]):
    """Gathers concurrent requests into one model call (up to `max_batch` items, waiting
    at most `max_wait_s` for company), runs it on the worker thread and hands each
    request its slice. The model function must return one output per item: anything
    else, or an exception, fails every request of that batch.
    """

    def __init__(
        self,
        worker: ModelWorker,
        fn: Callable[[Hashable, list[Item]], list[Output]],
        *,
        max_batch: int,
        max_wait_s: float,
        queue_size: int,
    ) -> None:
        self.worker = worker
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.stats = BatchStats()
        self._pending: list[_BatchRequest[Item, Output]] = []
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    async def submit(
        self, items: list[Item], group: Hashable = None
    ) -> tuple[list[Output], Timing]:
        if len(self._pending) >= self.queue_size:
            raise QueueFull(f"{self.worker.name} queue is full ({self.queue_size} requests)")
        loop = asyncio.get_running_loop()
        request: _BatchRequest[Item, Output] = _BatchRequest(
            items, group, loop.create_future(), time.perf_counter(), None, current_span_context()
        )
        self._pending.append(request)
        if self._loop_task is None or self._loop_task.done() or self._wakeup is None:
            self._wakeup = asyncio.Event()
            self._loop_task = loop.create_task(self._loop(self._wakeup))
        self._wakeup.set()
        outputs = await request.future
        finished = time.perf_counter()
        started = request.started or finished
        timing = Timing((started - request.enqueued) * 1000, (finished - started) * 1000)
        return outputs, self.stats.request_done(timing)

    def _take(self) -> list[_BatchRequest[Item, Output]]:
        group = self._pending[0].group
        taken: list[_BatchRequest[Item, Output]] = []
        size = 0
        for request in self._pending:
            if request.group != group or request.future.done():
                continue
            if taken and size + len(request.items) > self.max_batch:
                break
            taken.append(request)
            size += len(request.items)
        self._pending = [r for r in self._pending if r not in taken and not r.future.done()]
        return taken

    async def _loop(self, wakeup: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            # Give concurrent requests a moment to arrive, unless the batch is full.
            deadline = self._pending[0].enqueued + self.max_wait_s
            while sum(len(r.items) for r in self._pending) < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                wakeup.clear()
                try:
                    await asyncio.wait_for(wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            items = [item for request in batch for item in request.items]
            now = time.perf_counter()
            for request in batch:
                request.started = now
            try:
                with batched_call_span(
                    f"{self.worker.name} call", len(items), [r.trace_context for r in batch]
                ):
                    outputs = await loop.run_in_executor(
                        self.worker.executor, self.fn, batch[0].group, items
                    )
                if len(outputs) != len(items):
                    raise RuntimeError(
                        f"{self.worker.name} model returned {len(outputs)} outputs "
                        f"for {len(items)} inputs"
                    )
            except Exception as exc:
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            self.stats.record(len(items))
            offset = 0
            for request in batch:
                count = len(request.items)
                if not request.future.done():
                    request.future.set_result(outputs[offset : offset + count])
                offset += count
