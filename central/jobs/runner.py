"""Runs jobs on this gateway replica, against a store every replica may share.

A job runs where it was posted. Its computation reports steps and previews into an outbox;
one writer per job publishes them to the store in order (fenced by the job's lease), and
when the store is unreachable it keeps trying with the latest progress only, so a job
carries on through a Redis restart. A heartbeat renews this replica's leases and the API
key tokens it holds, hears of cancels it missed, and claims orphans: jobs whose replica
died (its lease lapsed) or drained (it gave its leases up on SIGTERM). A claimed job is
run again from the start, with its stored seed, so it ends in the same image; its
subscribers see a `restarted` event.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from central.jobs.records import JobEvent, JobRecord, preview_event
from central.jobs.spec import JobSpec, parse_job, stored_job
from central.jobs.store import JobStore, not_found
from central.serving import encode_png, encode_pngs, images_response
from shared.config import Settings
from shared.errors import JobStoreUnavailable, SdserveError
from shared.pipeline.catalog import Catalog
from shared.pipeline.stage import Progress
from shared.progress import preview_every

log = logging.getLogger(__name__)

# How long DELETE waits for the job to end before it answers.
CANCEL_WAIT_S = 10.0
# How long a (re)connected replica waits before it claims orphans, as a share of the
# lease: after a Redis outage every owner must have renewed first.
CLAIM_HOLDOFF_LEASES = 1.0
# Unwritten events a job may pile up before progress and previews are coalesced.
OUTBOX_BACKLOG = 32
# Between tries of a write while the store is unreachable.
WRITE_RETRY_S = 0.5


@dataclass(eq=False)
class LocalJob:
    """A job this replica runs: its record as it stands here, and what is unwritten."""

    record: JobRecord
    spec: JobSpec
    # Unwritten events, each with the record as it stood when it happened (the writer may
    # lag the computation: a progress event must not save a finished state).
    outbox: deque[tuple[JobEvent, JobRecord]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    compute: asyncio.Task[None] | None = None
    writer: asyncio.Task[None] | None = None
    # Why it stops here without a last event: handed over (drain), or lost its lease.
    leaving: str | None = None

    def post(self, event: JobEvent) -> None:
        # Far behind (the store is slow or away): the latest progress or preview replaces
        # the unwritten ones of its kind; a subscriber needs where the job is, not each step.
        if event.name in ("progress", "preview") and len(self.outbox) >= OUTBOX_BACKLOG:
            stale = [entry for entry in self.outbox if entry[0].name == event.name]
            for old in stale:
                self.outbox.remove(old)
        self.outbox.append((event, replace(self.record)))
        self.wake.set()


def _data_url(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


def _error(error_type: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"type": error_type, "message": message, **({"param": param} if param else {})}


class JobRunner:
    """This replica's side of the jobs API: submit, cancel, follow, and the heartbeat."""

    def __init__(self, catalog: Catalog, settings: Settings, store: JobStore) -> None:
        self.catalog = catalog
        self.settings = settings
        self.store = store
        self.replica = secrets.token_hex(6)
        self.local: dict[str, LocalJob] = {}
        self.heartbeat_s = settings.job_lease_s / 3
        self._background: list[asyncio.Task[None]] = []
        self._scan_now = asyncio.Event()
        self._connected_since: float | None = time.monotonic()
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._background = [
            asyncio.create_task(self._heartbeat(), name="jobs-heartbeat"),
            asyncio.create_task(self._listen(), name="jobs-notices"),
        ]

    def drain_soon(self) -> None:
        """`drain`, from a signal handler: run it on the event loop."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.drain)

    def drain(self) -> None:
        """SIGTERM: hand this replica's jobs to the others now (a shared store only;
        in memory nobody could take them, so they run on through the grace period)."""
        if self.store.kind == "redis" and not self._draining:
            self._draining = True
            if self.local:
                log.info("draining: handing %d jobs over to other replicas", len(self.local))
            for job in list(self.local.values()):
                self._leave(job, "handed over")

    async def aclose(self) -> None:
        """Shutting down: a shared store's jobs are handed over, a memory store's end
        cancelled; then the background work stops."""
        if self.store.kind == "redis":
            self.drain()
        else:
            for job in list(self.local.values()):
                if job.compute is not None:
                    job.compute.cancel()
        writers = [job.writer for job in self.local.values() if job.writer is not None]
        if writers:
            # A write that cannot reach the store is given up on: the lease lapses and
            # another replica takes the job over.
            await asyncio.wait(writers, timeout=5.0)
        for task in [*writers, *self._background]:
            task.cancel()
        await asyncio.gather(*writers, *self._background, return_exceptions=True)
        await self.store.aclose()

    # --- the API --------------------------------------------------------------------

    async def submit(self, body: Any, key: str | None = None) -> JobRecord:
        """Validate and start a job (bad parameters are a 422, not a failed job)."""
        spec = await parse_job(body, self.catalog.settings_for)
        self.catalog.check(spec.params)
        record = JobRecord.new(spec.kind, spec.total, key)
        await self.store.create(
            record,
            spec.encoded(),
            owner=self.replica,
            key_limit=self.settings.max_concurrent_per_key,
        )
        self._start(LocalJob(record, spec))
        return record

    async def get(self, job_id: str, key: str | None) -> JobRecord:
        """The job, for the API key that made it: another key is told there is no such
        job (404, as for an id that never existed)."""
        record = await self.store.get(job_id)
        if record.key and record.key != key:
            raise not_found()
        return record

    async def cancel(self, job_id: str, key: str | None = None) -> JobRecord:
        """Cancel wherever it runs; answer its state once it has ended (or after a wait)."""
        await self.get(job_id, key)
        record = await self.store.request_cancel(job_id)
        if record.done:
            return record
        local = self.local.get(job_id)
        if local is not None and local.compute is not None:
            local.compute.cancel()
        else:
            # Nobody may be running it (its replica died): claim it and end it here.
            claimed = await self.store.claim(job_id, self.replica)
            if claimed is not None:
                await self._end_claimed(claimed, "cancelled")
        deadline = time.monotonic() + CANCEL_WAIT_S
        while not record.done and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            record = await self.store.get(job_id)
        return record

    # --- running --------------------------------------------------------------------

    def _start(self, job: LocalJob) -> None:
        self.local[job.record.id] = job
        job.compute = asyncio.create_task(self._compute(job), name=f"job-{job.record.id}")
        job.compute.add_done_callback(lambda task: self._computed(job, task))
        job.writer = asyncio.create_task(self._write(job), name=f"job-writer-{job.record.id}")

    async def _compute(self, job: LocalJob) -> None:
        record, spec = job.record, job.spec

        def on_step(step: int, total: int) -> None:
            if record.status == "running" and (step, total) == (record.step, record.total):
                return  # RePaint resamples repeat a step
            if record.status == "queued":
                record.status = "running"
                record.started = time.time()
            record.step, record.total = step, total
            job.post(record.progress_event())

        def on_preview(step: int, total: int, preview: np.ndarray) -> None:
            images = [_data_url(image) for image in preview]
            job.post(preview_event(record.id, step, total, images))

        every = preview_every(record.total)
        try:
            result = await self.catalog.generate(
                spec.params, spec.edit, progress=Progress(on_step, on_preview, every)
            )
            pngs = await encode_pngs(result.images)
        except asyncio.CancelledError:
            if job.leaving is None:
                self._settle(job, "cancelled")
            raise
        except SdserveError as exc:
            self._settle(job, "failed", error=_error(exc.error_type, exc.message, exc.param))
        except Exception:
            log.exception("job %s failed", record.id)
            self._settle(
                job, "failed", error=_error("internal_error", "internal error; see the log")
            )
        else:
            response = images_response(result, pngs, spec.response_format)
            self._settle(
                job, "succeeded", result=response.model_dump(mode="json", exclude_unset=True)
            )

    def _computed(self, job: LocalJob, task: asyncio.Task[None]) -> None:
        # A task cancelled before it ran a line never reached _compute's handler.
        if task.cancelled() and job.leaving is None and not job.record.done:
            self._settle(job, "cancelled")
        job.wake.set()

    def _settle(
        self,
        job: LocalJob,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        record = job.record
        record.status = status  # type: ignore[assignment]
        record.result, record.error = result, error
        record.finished = time.time()
        job.post(record.final_event())

    async def _write(self, job: LocalJob) -> None:
        """Publish the job's events in order, then let go of it here."""
        try:
            while True:
                if not job.outbox:
                    if job.leaving is not None and job.compute is not None and job.compute.done():
                        break  # stopped here without a last event
                    job.wake.clear()
                    await job.wake.wait()
                    continue
                event, snapshot = job.outbox.popleft()
                if not await self._publish(job, event, snapshot):
                    if job.leaving is None:
                        log.warning(
                            "job %s: another replica holds it now; stopping here", job.record.id
                        )
                        self._leave(job, "lost its lease")
                    break
                if event.terminal:
                    return
            if job.leaving == "handed over":
                with contextlib.suppress(JobStoreUnavailable):
                    await self.store.release(self.replica, job.record.id)
                    await self.store.announce_orphans()
        finally:
            self.local.pop(job.record.id, None)

    async def _publish(self, job: LocalJob, event: JobEvent, snapshot: JobRecord) -> bool:
        """One write, tried until the store takes it; False when the job is not ours."""
        while True:
            try:
                if event.terminal:
                    return await self.store.finish(job.record.id, self.replica, event, snapshot)
                return await self.store.update(job.record.id, self.replica, event, snapshot)
            except JobStoreUnavailable:
                await asyncio.sleep(WRITE_RETRY_S)
                if job.leaving is not None and not event.terminal:
                    return True  # moot: it stops here, and whoever takes it over restarts
                if any(later.name == event.name for later, _ in job.outbox):
                    return True  # superseded by a later one of its kind

    def _leave(self, job: LocalJob, why: str) -> None:
        """Stop running the job here without ending it (another replica will)."""
        if job.compute is not None and job.compute.done():
            return  # it has ended: its last event is being written
        job.leaving = why
        if job.compute is not None:
            job.compute.cancel()
        # Unwritten progress is moot: whoever takes it over starts again.
        job.outbox.clear()
        job.wake.set()

    # --- taking over ------------------------------------------------------------------

    async def _take_over(self, job_id: str) -> None:
        record = await self.store.claim(job_id, self.replica)
        if record is None:
            return  # another replica was quicker, or it ended
        if record.cancel:
            await self._end_claimed(record, "cancelled")
            return
        if record.attempt >= self.settings.job_attempts:
            await self._end_claimed(record, "failed")
            return
        try:
            spec = await stored_job(await self.store.request(job_id), self.catalog.settings_for)
        except SdserveError as exc:  # the deployment changed under it (a model removed)
            record.error = _error(exc.error_type, exc.message, exc.param)
            await self._end_claimed(record, "failed")
            return
        record.attempt += 1
        record.status, record.step, record.started = "queued", 0, None
        log.info("job %s: taken over, attempt %d", job_id, record.attempt)
        reason = "the gateway replica running it stopped; running it again from the start"
        if await self.store.update(job_id, self.replica, record.restarted_event(reason), record):
            self._start(LocalJob(record, spec))

    async def _end_claimed(self, record: JobRecord, status: str) -> None:
        """End a job this replica claimed but will not run."""
        record.status = status  # type: ignore[assignment]
        record.finished = time.time()
        if status == "failed" and record.error is None:
            record.error = _error(
                "job_interrupted",
                f"the gateway replicas running this job stopped {record.attempt} times; "
                "giving up (SDSERVE_JOB_ATTEMPTS)",
            )
        await self.store.finish(record.id, self.replica, record.final_event(), record)

    # --- background -------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self._beat()
            except JobStoreUnavailable:
                self._connected_since = None
            except Exception:
                log.exception("job heartbeat failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._scan_now.wait(), timeout=self.heartbeat_s)
            self._scan_now.clear()

    async def _beat(self) -> None:
        lost, cancel = await self.store.renew(self.replica, list(self.local))
        if self._connected_since is None:
            self._connected_since = time.monotonic()
            log.info("job store reachable again")
        for job_id in lost:
            if job_id in self.local:
                log.warning("job %s: another replica holds its lease now; stopping here", job_id)
                self._leave(self.local[job_id], "lost its lease")
        for job_id in cancel:
            local = self.local.get(job_id)
            if local is not None and local.compute is not None:
                local.compute.cancel()
        await self.store.renew_slots()
        holdoff = CLAIM_HOLDOFF_LEASES * self.settings.job_lease_s
        if self._draining or time.monotonic() - self._connected_since < holdoff:
            return
        for job_id in await self.store.orphans():
            if job_id not in self.local:
                await self._take_over(job_id)

    async def _listen(self) -> None:
        async for notice in self.store.notices():
            if notice.kind == "cancel":
                local = self.local.get(notice.job_id)
                if local is not None and local.compute is not None:
                    local.compute.cancel()
            else:
                self._scan_now.set()
