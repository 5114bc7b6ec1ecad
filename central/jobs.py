"""Jobs: generations that run on their own, with live progress, previews and cancel.

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
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from central.api import (
    ImageEditJson,
    ImageGenerationRequest,
    b64_bytes,
    edit_inputs,
    encode_png,
    generation_response,
    validated,
)
from shared.config import Settings
from shared.errors import (
    InvalidInput,
    QueueFull,
    SdserveError,
    UnsupportedMediaType,
    error_body,
)
from shared.pipeline.chain import Chain
from shared.pipeline.stage import Progress
from shared.pipeline.types import EditInputs, GenerationParams
from shared.sampler import img2img_steps

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobKind = Literal["generation", "edit"]
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
SSE_PING_S = 15


class JobNotFound(SdserveError):
    """404: no job has this id (it never existed, expired, or central restarted)."""

    status_code = 404
    error_type = "not_found"


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
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
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
        """The job as GET /v1/jobs/{id} shows it."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": "job",
            "kind": self.kind,
            "status": self.status,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "progress": {"step": self.step, "total": self.total},
            "url": self.url,
            "events_url": f"{self.url}/events",
        }
        if self.result is not None:
            body["result"] = self.result
        if self.error is not None:
            body["error"] = self.error
        return body

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
            return JobEvent("done", {**self._base(), "result": self.result})
        if self.status == "failed":
            return JobEvent("error", {**self._base(), "error": self.error})
        return JobEvent("cancelled", self._base())


def _data_url(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


class JobStore:
    """The jobs of one central process, in memory, bounded in number."""

    def __init__(self, chain: Chain, settings: Settings) -> None:
        self.chain = chain
        self.settings = settings
        self.max_jobs = settings.max_jobs
        self.ttl_s = settings.job_ttl_s
        self.chain_info = {"model": settings.model, "weights": settings.weights_label}
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
        self.chain.check(params)
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
            result = await self.chain.generate(
                params, edit, progress=Progress(on_step, on_preview, every)
            )
            pngs = await asyncio.to_thread(lambda: [encode_png(image) for image in result.images])
        except asyncio.CancelledError:
            self._finish(job, "cancelled")
            raise
        except SdserveError as exc:
            self._finish(job, "failed", error=error_body(exc.error_type, exc.message, exc.param))
        except Exception:
            log.exception("job %s failed", job.id)
            self._finish(
                job, "failed", error=error_body("internal_error", "internal error; see the log")
            )
        else:
            response = generation_response(result, pngs, response_format, self.chain_info)
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
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        if job.done:
            return
        job.status = status
        job.result = result
        job.error = None if error is None else error["error"]
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


# ------------------------------------------------------------------------- routes

JOB_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A generations body (`kind` omitted or `generation`), or an edits "
        'JSON body (base64 `image`, greyscale `mask`: white = repaint) with `"kind": "edit"`.',
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {
                            **ImageGenerationRequest.model_json_schema(),
                            "title": "GenerationJob",
                        },
                        {
                            **ImageEditJson.model_json_schema(),
                            "title": "EditJob",
                            "properties": {
                                "kind": {"type": "string", "enum": ["edit"]},
                                **ImageEditJson.model_json_schema()["properties"],
                            },
                            "required": ["kind", "prompt", "image"],
                        },
                    ]
                }
            }
        },
    }
}

EVENTS_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `queued`, `progress` ({step, total}), `preview` "
        "({step, total, images: [PNG data URLs]}), then `done` ({result}), `error` ({error}) "
        "or `cancelled`; each `data` is JSON with the job's id, status, step and total.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def register_job_routes(app: FastAPI, chain: Chain, settings: Settings) -> JobStore:
    """Add the /v1/jobs routes to central's app; jobs are cancelled when it stops."""
    store = JobStore(chain, settings)
    app.state.jobs = store
    # Before anything else shuts down (the chain's clients): jobs end as cancelled.
    app.router.on_shutdown.insert(0, store.aclose)

    @app.post("/v1/jobs", status_code=202, tags=["jobs"], openapi_extra=JOB_BODY_DOC)
    async def submit_job(request: Request) -> JSONResponse:
        """Start a generation or an edit; follow it at `events_url` or poll `url`."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type != "application/json":
            raise UnsupportedMediaType("send application/json", param="body")
        try:
            payload = await request.json()
        except ValueError:
            raise InvalidInput("body is not valid JSON", param="body") from None
        if not isinstance(payload, dict):
            raise InvalidInput("body must be a JSON object", param="body")
        kind = payload.get("kind", "generation")
        edit: EditInputs | None = None
        if kind == "generation":
            generation = validated(ImageGenerationRequest, payload)
            params, response_format = generation.to_params(settings), generation.response_format
        elif kind == "edit":
            body = validated(ImageEditJson, payload)
            params, edit = edit_inputs(
                body,
                settings,
                b64_bytes(body.image, param="image"),
                b64_bytes(body.mask, param="mask") if body.mask else None,
                mask_polarity="white-repaints",
            )
            response_format = body.response_format
        else:
            raise InvalidInput('kind must be "generation" or "edit"', param="kind")
        job = store.submit(kind, params, edit, response_format)
        return JSONResponse(job.snapshot(), status_code=202, headers={"Location": job.url})

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    async def get_job(job_id: str) -> dict[str, Any]:
        """Status, progress, and the result (generations shape) or error when finished."""
        return store.get(job_id).snapshot()

    @app.get(
        "/v1/jobs/{job_id}/events",
        tags=["jobs"],
        response_class=EventSourceResponse,
        responses=EVENTS_DOC,
    )
    async def job_events(job_id: str) -> EventSourceResponse:
        """The job's events as they happen (current state first)."""
        job = store.get(job_id)

        async def stream() -> AsyncIterator[ServerSentEvent]:
            async for event in store.events(job):
                yield ServerSentEvent(data=json.dumps(event.data), event=event.name)

        return EventSourceResponse(stream(), ping=SSE_PING_S)

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"])
    async def cancel_job(job_id: str) -> dict[str, Any]:
        """Cancel the job (no-op once finished); answers its state afterwards."""
        return (await store.cancel(job_id)).snapshot()

    return store
