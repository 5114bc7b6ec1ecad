"""The /v1/jobs routes (the store and its events are central/job_store.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from central.job_store import JobStore
from central.schemas import (
    COMMON_ERRORS,
    JOB_BODY_DOC,
    JOB_EVENTS_DOC,
    ImageGenerationRequest,
    JobResource,
    error_responses,
)
from central.serving import edit_from_json, media_type, read_json
from shared.config import Settings
from shared.errors import InvalidInput, UnsupportedMediaType
from shared.pipeline.contract import validated
from shared.pipeline.types import EditInputs

SSE_PING_S = 15
# Reading a job runs no model: no 413, 415, 429 or upstream errors (422 stands in for
# FastAPI's own validation body, which our handler never sends).
READ_ERRORS = (401, 403, 404, 422, 500, 503)


def jobs_router(store: JobStore, settings: Settings) -> APIRouter:
    router = APIRouter(tags=["jobs"])

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
        if media_type(request) != "application/json":
            raise UnsupportedMediaType("send application/json", param="body")
        payload = await read_json(request)
        if not isinstance(payload, dict):
            raise InvalidInput("body must be a JSON object", param="body")
        kind = payload.get("kind", "generation")
        edit: EditInputs | None = None
        if kind == "generation":
            generation = validated(ImageGenerationRequest, payload)
            params, response_format = generation.to_params(settings), generation.response_format
        elif kind == "edit":
            body, params, edit = await edit_from_json(payload, settings)
            response_format = body.response_format
        else:
            raise InvalidInput('kind must be "generation" or "edit"', param="kind")
        job = store.submit(kind, params, edit, response_format)
        return JSONResponse(
            job.snapshot(),
            status_code=202,
            headers={"Location": job.url},
        )

    @router.get(
        "/v1/jobs/{job_id}",
        response_model=JobResource,
        response_model_exclude_unset=True,
        responses=error_responses(*READ_ERRORS),
    )
    async def get_job(job_id: str) -> JobResource:
        """Status, progress, and the result (generations shape) or error when finished."""
        return store.get(job_id).resource()

    @router.get(
        "/v1/jobs/{job_id}/events",
        response_class=EventSourceResponse,
        responses={**JOB_EVENTS_DOC, **error_responses(*READ_ERRORS)},
    )
    async def job_events(job_id: str) -> EventSourceResponse:
        """The job's events as they happen (current state first)."""
        job = store.get(job_id)

        async def stream() -> AsyncIterator[ServerSentEvent]:
            async for event in store.events(job):
                yield ServerSentEvent(data=json.dumps(event.data), event=event.name)

        return EventSourceResponse(stream(), ping=SSE_PING_S)

    @router.delete(
        "/v1/jobs/{job_id}",
        response_model=JobResource,
        response_model_exclude_unset=True,
        responses=error_responses(*READ_ERRORS),
    )
    async def cancel_job(job_id: str) -> JobResource:
        """Cancel the job (no-op once finished); answers its state afterwards."""
        return (await store.cancel(job_id)).resource()

    return router
