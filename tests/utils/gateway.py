"""Helpers for the gateway's in-process tests: its settings, a client, jobs and SSE."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from central.job_store import Job, JobEvent, JobStore
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


async def collect(store: JobStore, job: Job) -> list[JobEvent]:
    return [event async for event in store.events(job)]


async def wait_for_step(job: Job, step: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while job.step < step:
        assert not job.done, job.snapshot()
        assert time.monotonic() < deadline, f"job stuck at step {job.step}"
        await asyncio.sleep(0.01)


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://central")


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        events.append((fields["event"], json.loads(fields["data"])))
    return events
