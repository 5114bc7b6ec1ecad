"""The /v1/jobs routes (jobs run in central/jobs/runner.py, live in central/jobs/store.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from central.bodies import require_json
from central.jobs.records import check_event_id
from central.jobs.runner import JobRunner
from central.schemas import (
    COMMON_ERRORS,
    JOB_BODY_DOC,
    JOB_EVENTS_DOC,
    JobResource,
    error_responses,
)
from central.serving import read_json

SSE_PING_S = 15
# Reading a job runs no model: no 413 or 415 (422 stands in for FastAPI's own validation
# body, which our handler never sends; 429 is for event streams beyond the key's limit,
# 503 for a job store that cannot be reached).
READ_ERRORS = (401, 403, 404, 422, 500, 503)


def api_key(request: Request) -> str | None:
    """The digest naming the caller's API key (set by ApiKeyGuard; None when keys are off)."""
    return getattr(request.state, "api_key_slot", None)


def jobs_router(runner: JobRunner) -> APIRouter:
    router = APIRouter(tags=["jobs"])
    store = runner.store

    @router.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobResource,
        response_model_exclude_unset=True,
        responses=error_responses(*COMMON_ERRORS, 415),
        openapi_extra=JOB_BODY_DOC,
    )
    async def submit_job(request: Request) -> JSONResponse:
        """Start a generation or an edit; follow it at `events_url` or poll `url`."""
        require_json(request)
        # The job counts against the API key until it ends, and only that key sees it.
        record = await runner.submit(await read_json(request), api_key(request))
        return JSONResponse(record.snapshot(), status_code=202, headers={"Location": record.url})

    @router.get(
        "/v1/jobs/{job_id}",
        response_model=JobResource,
        response_model_exclude_unset=True,
        responses=error_responses(*READ_ERRORS),
    )
    async def get_job(job_id: str, request: Request) -> JobResource:
        """Status, progress, and the result (generations shape) or error when finished."""
        return (await runner.get(job_id, api_key(request))).resource()

    @router.get(
        "/v1/jobs/{job_id}/events",
        response_class=EventSourceResponse,
        responses={**JOB_EVENTS_DOC, **error_responses(*READ_ERRORS, 429)},
    )
    async def job_events(
        job_id: str, request: Request, last_event_id: str | None = Header(default=None)
    ) -> EventSourceResponse:
        """The job's events from the start, or after `Last-Event-ID` (a reconnect), on
        any gateway replica."""
        after = None if last_event_id is None else check_event_id(last_event_id)
        await runner.get(job_id, api_key(request))  # 404 (or 503) now, not in the stream

        async def stream() -> AsyncIterator[ServerSentEvent]:
            async for event_id, event in store.events(job_id, after):
                yield ServerSentEvent(data=event.encoded(), event=event.name, id=event_id)

        return EventSourceResponse(stream(), ping=SSE_PING_S)

    @router.delete(
        "/v1/jobs/{job_id}",
        response_model=JobResource,
        response_model_exclude_unset=True,
        responses=error_responses(*READ_ERRORS),
    )
    async def cancel_job(job_id: str, request: Request) -> JobResource:
        """Cancel the job wherever it runs (no-op once finished); answers its state after."""
        return (await runner.cancel(job_id, api_key(request))).resource()

    return router
