"""Jobs: generations that run on their own, with live progress, previews and cancel.

The store and its event fan-out; the routes (central/routes/jobs.py) are:

    POST   /v1/jobs              a generations body, or {"kind": "edit", ...} with an
                                 edits JSON body -> 202 {"id", "status", "url",
                                 "events_url", ...}; 503 + Retry-After when full
    GET    /v1/jobs/{id}         status, progress {step, total}, result or error
    GET    /v1/jobs/{id}/events  Server-Sent Events: queued, progress, preview, then one
                                 of done, error, cancelled (the stream then ends); a
                                 late subscriber gets the current state first
    DELETE /v1/jobs/{id}         cancel: the chain is cancelled (diffusion rows are freed
                                 at the next step, decode is skipped)

Jobs live in central's memory only: a restart forgets them (404; clients resubmit). At
most SDSERVE_MAX_JOBS are held; a finished job is kept for SDSERVE_JOB_TTL_S, or until
its room is needed for a new job (oldest finished first). Ids are random
(secrets.token_urlsafe) and only ever used as dictionary keys.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from central.schemas import (
    ErrorDetail,
    ImagesResponse,
    JobKind,
    JobProgress,
    JobResource,
    JobStatus,
)
from central.serving import encode_png, encode_pngs, images_response
from shared.config import Settings
from shared.errors import JobNotFound, QueueFull, SdserveError
from shared.pipeline.catalog import Catalog
from shared.pipeline.stage import Progress
from shared.pipeline.types import EditInputs, GenerationParams
from shared.sampler import img2img_steps

log = logging.getLogger(__name__)

FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
TERMINAL_EVENTS: frozenset[str] = frozenset({"done", "error", "cancelled"})

# A job sends about this many previews, whatever its number of steps.
PREVIEWS_PER_JOB = 10
# Events a slow subscriber may fall behind by; progress beyond that is dropped for it
# (the final event never is).
SUBSCRIBER_BUFFER = 256
# How long DELETE waits for the chain to unwind before it answers.
CANCEL_WAIT_S = 10.0
RETRY_AFTER_S = 5


@dataclass(frozen=True)
class JobEvent:
    name: str  # queued | progress | preview | done | error | cancelled
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.name in TERMINAL_EVENTS


@dataclass(eq=False)
class Job:
    id: str
    kind: JobKind
    total: int
    created: float = field(default_factory=time.time)
    status: JobStatus = "queued"
    step: int = 0
    started: float | None = None
    finished: float | None = None
    finished_at: float | None = None  # monotonic, for the TTL
    result: ImagesResponse | None = None
    error: ErrorDetail | None = None
    previews: list[str] = field(default_factory=list)  # PNG data URLs, one per image
    preview_step: int = 0
    task: asyncio.Task[None] | None = None
    subscribers: list[asyncio.Queue[JobEvent]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"/v1/jobs/{self.id}"

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    def snapshot(self) -> dict[str, Any]:
        """The job as GET /v1/jobs/{id} shows it, as JSON."""
        return self.resource().model_dump(mode="json", exclude_unset=True)

    def resource(self) -> JobResource:
        """The job as GET /v1/jobs/{id} shows it (render with `exclude_unset`)."""
        resource = JobResource(
            id=self.id,
            object="job",
            kind=self.kind,
            status=self.status,
            created=self.created,
            started=self.started,
            finished=self.finished,
            progress=JobProgress(step=self.step, total=self.total),
            url=self.url,
            events_url=f"{self.url}/events",
        )
        # Assigned only when present, so exclude_unset leaves them out until then.
        if self.result is not None:
            resource.result = self.result
        if self.error is not None:
            resource.error = self.error
        return resource

    def _base(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "step": self.step, "total": self.total}

    def progress_event(self) -> JobEvent:
        return JobEvent("progress", self._base())

    def preview_event(self) -> JobEvent:
        data = {"id": self.id, "step": self.preview_step, "total": self.total}
        return JobEvent("preview", {**data, "images": self.previews})

    def state_events(self) -> list[JobEvent]:
        """What a subscriber arriving now is told first: where the job stands."""
        if self.status == "queued":
            return [JobEvent("queued", self._base())]
        if self.status == "running":
            return [self.progress_event()] + ([self.preview_event()] if self.previews else [])
        return [self.final_event()]

    def final_event(self) -> JobEvent:
        if self.status == "succeeded":
            return JobEvent("done", {**self._base(), "result": _json(self.result)})
        if self.status == "failed":
            return JobEvent("error", {**self._base(), "error": _json(self.error)})
        return JobEvent("cancelled", self._base())


def _json(model: ImagesResponse | ErrorDetail | None) -> dict[str, Any] | None:
    return None if model is None else model.model_dump(mode="json", exclude_unset=True)


def _data_url(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


def _error_detail(error_type: str, message: str, param: str | None = None) -> ErrorDetail:
    # param only when there is one, as in every other error body.
    detail = ErrorDetail(type=error_type, message=message)
    if param is not None:
        detail.param = param
    return detail


class JobStore:
    """The jobs of one central process, in memory, bounded in number."""

    def __init__(self, catalog: Catalog, settings: Settings) -> None:
        self.catalog = catalog
        self.settings = settings
        self.max_jobs = settings.max_jobs
        self.ttl_s = settings.job_ttl_s
        self.jobs: dict[str, Job] = {}

    # --- lifecycle ----------------------------------------------------------------

    def submit(
        self,
        kind: JobKind,
        params: GenerationParams,
        edit: EditInputs | None,
        response_format: str,
    ) -> Job:
        """Start a job (validated first: bad parameters are a 422, not a failed job)."""
        self.catalog.check(params)
        self._make_room()
        total = params.denoise.steps
        if edit is not None:
            total = img2img_steps(params.denoise.steps, params.denoise.strength)
        job = Job(id=secrets.token_urlsafe(16), kind=kind, total=total)
        self.jobs[job.id] = job
        job.task = asyncio.create_task(self._run(job, params, edit, response_format))
        job.task.add_done_callback(lambda task: self._settle(job, task))
        self._publish(job, JobEvent("queued", job._base()))
        return job

    def get(self, job_id: str) -> Job:
        self._purge()
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFound(
                "no such job: it never existed, has expired, or the gateway restarted",
                param="id",
            )
        return job

    async def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        task = job.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=CANCEL_WAIT_S)
        return job

    async def aclose(self) -> None:
        """Cancel every unfinished job (central is stopping)."""
        tasks = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _purge(self) -> None:
        """Forget finished jobs older than the TTL."""
        now = time.monotonic()
        expired = [
            job_id
            for job_id, job in self.jobs.items()
            if job.finished_at is not None and now - job.finished_at >= self.ttl_s
        ]
        for job_id in expired:
            del self.jobs[job_id]

    def _make_room(self) -> None:
        self._purge()
        if len(self.jobs) < self.max_jobs:
            return
        finished = [j for j in self.jobs.values() if j.finished_at is not None]
        if not finished:
            raise QueueFull(
                f"{self.max_jobs} jobs are queued or running; retry later",
                retry_after_s=RETRY_AFTER_S,
            )
        oldest = min(finished, key=lambda j: j.finished_at or 0.0)
        del self.jobs[oldest.id]

    # --- running ------------------------------------------------------------------

    async def _run(
        self, job: Job, params: GenerationParams, edit: EditInputs | None, response_format: str
    ) -> None:
        def on_step(step: int, total: int) -> None:
            if job.status == "running" and (step, total) == (job.step, job.total):
                return  # RePaint resamples repeat a step
            if job.status == "queued":
                job.status = "running"
                job.started = time.time()
            job.step, job.total = step, total
            self._publish(job, job.progress_event())

        def on_preview(step: int, total: int, preview: np.ndarray) -> None:
            job.previews = [_data_url(image) for image in preview]
            job.preview_step = step
            self._publish(job, job.preview_event())

        every = max(1, math.ceil(job.total / PREVIEWS_PER_JOB))
        try:
            result = await self.catalog.generate(
                params, edit, progress=Progress(on_step, on_preview, every)
            )
            pngs = await encode_pngs(result.images)
        except asyncio.CancelledError:
            self._finish(job, "cancelled")
            raise
        except SdserveError as exc:
            self._finish(job, "failed", error=_error_detail(exc.error_type, exc.message, exc.param))
        except Exception:
            log.exception("job %s failed", job.id)
            self._finish(
                job, "failed", error=_error_detail("internal_error", "internal error; see the log")
            )
        else:
            response = images_response(result, pngs, response_format)
            self._finish(job, "succeeded", result=response)

    def _settle(self, job: Job, task: asyncio.Task[None]) -> None:
        # A task cancelled before it ever ran never reached _run's handler.
        if not job.done and task.cancelled():
            self._finish(job, "cancelled")

    def _finish(
        self,
        job: Job,
        status: JobStatus,
        *,
        result: ImagesResponse | None = None,
        error: ErrorDetail | None = None,
    ) -> None:
        if job.done:
            return
        job.status = status
        job.result = result
        job.error = error
        job.finished = time.time()
        job.finished_at = time.monotonic()
        job.previews = []  # the images (or nothing) replace them
        self._publish(job, job.final_event())

    # --- events -------------------------------------------------------------------

    def _publish(self, job: Job, event: JobEvent) -> None:
        for queue in job.subscribers:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                if not event.terminal:
                    continue  # a slow reader misses some progress, never the end
                queue.get_nowait()
                queue.put_nowait(event)

    async def events(self, job: Job) -> AsyncIterator[JobEvent]:
        """The job's current state, then each event as it happens, until the last."""
        queue: asyncio.Queue[JobEvent] = asyncio.Queue(maxsize=SUBSCRIBER_BUFFER)
        for event in job.state_events():
            queue.put_nowait(event)
        job.subscribers.append(queue)
        try:
            while True:
                event = await queue.get()
                yield event
                if event.terminal:
                    return
        finally:
            job.subscribers.remove(queue)
