"""Helpers for the gateway's in-process tests: its settings, a client, jobs and SSE."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from central.jobs.records import JobEvent, JobRecord
from central.jobs.store import JobStore
from shared.config import Settings
from shared.pipeline.types import DenoiseParams, GenerationParams

# The real chain with the three tiny stages local (all-in-one); steps up to 1000 so a
# test can keep a job running long enough to cancel it.
SETTINGS = Settings(model="tiny", weights="random", sizes=[(64, 64)], max_steps=1000, warm_up=False)


def params(steps: int = 6, seed: int | None = 11, n: int = 1) -> GenerationParams:
    return GenerationParams(
        prompt="a red bicycle",
        negative_prompt=None,
        denoise=DenoiseParams(
            width=64,
            height=64,
            steps=steps,
            guidance_scale=7.5,
            seed=seed,
            n=n,
        ),
    )


async def collect(store: JobStore, job_id: str, after: str | None = None) -> list[JobEvent]:
    return [event async for _, event in store.events(job_id, after)]


async def wait_for_step(
    store: JobStore, job_id: str, step: int, timeout: float = 30.0
) -> JobRecord:
    deadline = time.monotonic() + timeout
    while True:
        record = await store.get(job_id)
        if record.step >= step:
            return record
        assert not record.done, record.snapshot()
        assert time.monotonic() < deadline, f"job stuck at step {record.step}"
        await asyncio.sleep(0.01)


async def wait_until_done(store: JobStore, job_id: str, timeout: float = 60.0) -> JobRecord:
    deadline = time.monotonic() + timeout
    while not (record := await store.get(job_id)).done:
        assert time.monotonic() < deadline, f"job not done: {record.snapshot()}"
        await asyncio.sleep(0.02)
    return record


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost")


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def sse_ids(text: str) -> list[str]:
    """The `id:` of each event of a Server-Sent Events body, in order."""
    return [
        line.split(": ", 1)[1]
        for line in text.replace("\r\n", "\n").split("\n")
        if line.startswith("id: ")
    ]
