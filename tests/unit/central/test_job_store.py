"""Central's job store: lifecycle, events, cancel, TTL, over a real in-process chain.

The chain is the real one with the three tiny stages local (all-in-one), loaded once
(tests/unit/central/conftest.py); each test runs its own event loop.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from central.job_store import SUBSCRIBER_BUFFER, Job, JobEvent, JobStore
from shared.errors import JobNotFound, UpstreamUnavailable
from shared.pipeline.chain import Chain
from tests.utils.gateway import SETTINGS, collect, params, wait_for_step

# ------------------------------------------------------------------------ lifecycle


def test_job_goes_queued_running_succeeded_with_events_in_order(chain: Chain) -> None:
    async def main() -> tuple[Job, list[JobEvent], list[str]]:
        store = JobStore(chain, SETTINGS)
        job = store.submit("generation", params(steps=6, n=2), None, "b64_json")
        assert job.status == "queued" and job.total == 6
        statuses: list[str] = []
        events: list[JobEvent] = []
        async for event in store.events(job):
            statuses.append(job.status)
            events.append(event)
        await job.task  # type: ignore[misc]
        return job, events, statuses

    job, events, statuses = asyncio.run(main())
    names = [e.name for e in events]
    assert names[0] == "queued" and names[-1] == "done"
    progress = [e.data["step"] for e in events if e.name == "progress"]
    assert progress == [1, 2, 3, 4, 5, 6]  # every step, in order
    assert all(e.data["total"] == 6 for e in events if e.name == "progress")
    previews = [e for e in events if e.name == "preview"]
    assert [p.data["step"] for p in previews] == [1, 2, 3, 4, 5]  # every ceil(6/10) step
    assert all(len(p.data["images"]) == 2 for p in previews)  # one per image
    preview = Image.open(io.BytesIO(base64.b64decode(previews[0].data["images"][0].split(",")[1])))
    assert preview.size == (16, 16)  # the latent grid: small
    # Each preview follows the progress event of its step.
    assert names.index("preview") == names.index("progress") + 1
    assert statuses[0] == "queued" and "running" in statuses and statuses[-1] == "succeeded"

    snapshot = job.snapshot()
    assert snapshot["status"] == "succeeded"
    assert snapshot["progress"] == {"step": 6, "total": 6}
    assert snapshot["started"] is not None and snapshot["finished"] >= snapshot["started"]
    result = snapshot["result"]
    assert [item["seed"] for item in result["data"]] == [11, 12]
    assert set(result["timings"]) == {"text_encoder", "diffusion", "decoder"}
    assert events[-1].data["result"] == result


# --------------------------------------------------------------------------- cancel


def test_cancel_frees_the_rows_and_skips_the_decode(chain: Chain) -> None:
    scheduler = chain.stages["diffusion"].scheduler
    decoder = chain.stages["decoder"].decode_batcher

    async def main() -> tuple[Job, list[JobEvent], int, int]:
        store = JobStore(chain, SETTINGS)
        cancelled_before = scheduler.stats.cancelled_jobs
        decodes_before = decoder.stats.model_calls
        job = store.submit("generation", params(steps=1000), None, "b64_json")
        listener = asyncio.ensure_future(collect(store, job))
        await wait_for_step(job, 3)
        cancelled = await store.cancel(job.id)
        assert cancelled is job and job.status == "cancelled"
        events = await asyncio.wait_for(listener, 10)
        # The scheduler drops the rows at its next step boundary.
        deadline = time.monotonic() + 10
        while scheduler.stats.cancelled_jobs == cancelled_before:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        return (
            job,
            events,
            scheduler.stats.cancelled_jobs - cancelled_before,
            decoder.stats.model_calls - decodes_before,
        )

    job, events, cancelled, decodes = asyncio.run(main())
    assert cancelled == 1 and decodes == 0
    assert scheduler.queue_depth == 0
    assert events[-1].name == "cancelled" and events[-1].data["status"] == "cancelled"
    assert 3 <= events[-1].data["step"] < 1000
    snapshot = job.snapshot()
    assert snapshot["status"] == "cancelled" and "result" not in snapshot
    assert snapshot["finished"] is not None


def test_a_job_cancelled_before_it_starts_is_cancelled(chain: Chain) -> None:
    async def main() -> Job:
        store = JobStore(chain, SETTINGS)
        job = store.submit("generation", params(), None, "b64_json")
        await store.cancel(job.id)  # its task has not run a single line yet
        return job

    job = asyncio.run(main())
    assert job.status == "cancelled" and job.step == 0


# -------------------------------------------------------------------- subscribers


def test_a_late_subscriber_gets_the_current_state_first(chain: Chain) -> None:
    async def main() -> tuple[list[JobEvent], list[JobEvent]]:
        store = JobStore(chain, SETTINGS)
        job = store.submit("generation", params(steps=300), None, "b64_json")
        await wait_for_step(job, 40)  # past a preview (every 30 steps)
        while_running = []
        async for event in store.events(job):
            while_running.append(event)
            if len(while_running) == 3:
                break
        await store.cancel(job.id)
        finished = await collect(store, job)
        return while_running, finished

    while_running, finished = asyncio.run(main())
    first, second, third = while_running
    assert first.name == "progress" and first.data["step"] >= 40
    assert first.data["status"] == "running"
    assert second.name == "preview" and second.data["step"] % 30 == 0
    assert third.name in ("progress", "preview")
    assert [e.name for e in finished] == ["cancelled"]


def test_a_slow_subscriber_misses_progress_but_never_the_end() -> None:
    job = Job(id="j", kind="generation", total=10_000)
    store = JobStore.__new__(JobStore)

    async def main() -> list[str]:
        queue: asyncio.Queue[JobEvent] = asyncio.Queue(maxsize=SUBSCRIBER_BUFFER)
        job.subscribers.append(queue)
        for step in range(1, 2 * SUBSCRIBER_BUFFER):
            job.step = step
            store._publish(job, job.progress_event())
        job.status = "cancelled"
        store._publish(job, job.final_event())
        names = []
        while not queue.empty():
            names.append(queue.get_nowait().name)
        return names

    names = asyncio.run(main())
    assert len(names) == SUBSCRIBER_BUFFER and names[-1] == "cancelled"


# ------------------------------------------------------------------ failure, bounds


def test_a_failing_stage_fails_the_job_with_its_error(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(latent: np.ndarray) -> Any:
        raise UpstreamUnavailable("decoder stage at http://decoder is unreachable")

    monkeypatch.setattr(chain.decoder, "decode", down)

    async def main() -> tuple[Job, list[JobEvent]]:
        store = JobStore(chain, SETTINGS)
        job = store.submit("generation", params(steps=2), None, "b64_json")
        return job, await collect(store, job)

    job, events = asyncio.run(main())
    assert job.status == "failed"
    error = {
        "type": "upstream_unavailable",
        "message": "decoder stage at http://decoder is unreachable",
    }
    assert events[-1].name == "error" and events[-1].data["error"] == error
    assert "result" not in job.snapshot() and job.snapshot()["error"] == error


def test_finished_jobs_are_forgotten_after_the_ttl(chain: Chain) -> None:
    settings = SETTINGS.model_copy(update={"job_ttl_s": 0.3})

    async def main() -> None:
        store = JobStore(chain, settings)
        job = store.submit("generation", params(steps=2), None, "b64_json")
        await collect(store, job)
        assert store.get(job.id) is job  # finished, within the TTL
        await asyncio.sleep(0.4)
        with pytest.raises(JobNotFound):
            store.get(job.id)
        assert job.id not in store.jobs

    asyncio.run(main())
