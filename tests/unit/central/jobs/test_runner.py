"""The job runner over a real in-process chain (the three tiny stages local, loaded once:
tests/unit/central/conftest.py): lifecycle, events, cancel, failure, and replicas taking
over each other's jobs through one store (memory, or a real redis-server).

Each test runs its own event loop.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from PIL import Image

from central.jobs import JobRunner, open_store
from central.jobs.records import JobEvent
from central.jobs.store import MemoryJobStore
from shared.config import Settings
from shared.errors import UpstreamUnavailable
from shared.pipeline.catalog import Catalog
from shared.pipeline.chain import Chain
from tests.utils.gateway import SETTINGS, collect, wait_for_step, wait_until_done
from tests.utils.redis_server import RedisServer

BODY = {"prompt": "a red bicycle", "size": "64x64", "guidance_scale": 7.5, "seed": 11}

SettingsFor = Callable[..., Settings]


@pytest.fixture(params=["memory", "redis"])
def settings_for(request: pytest.FixtureRequest) -> Iterator[SettingsFor]:
    """Settings for runners sharing one store of the parametrized kind."""
    store = "memory"
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        assert server.command("FLUSHALL").startswith(b"+OK")
        store = server.url
    yield lambda **update: SETTINGS.model_copy(update={"job_store": store, **update})


@pytest.fixture
def memory_settings() -> SettingsFor:
    return lambda **update: SETTINGS.model_copy(update=update)


@asynccontextmanager
async def runners(
    chain: Chain, settings: Settings, count: int = 1
) -> AsyncIterator[list[JobRunner]]:
    """`count` runners (gateway replicas) sharing one store, heartbeats running."""
    store = open_store(settings)
    started = [JobRunner(Catalog(settings, chains={"tiny": chain}), settings, store)]
    # Replicas of a Redis store each have their own client, as separate processes do.
    for _ in range(count - 1):
        other = store if store.kind == "memory" else open_store(settings)
        started.append(JobRunner(Catalog(settings, chains={"tiny": chain}), settings, other))
    for runner in started:
        await runner.start()
    try:
        yield started
    finally:
        for runner in started:
            await runner.aclose()


def crash(runner: JobRunner) -> None:
    """As if the process died: nothing renews, writes or releases any more."""
    for task in runner._background:
        task.cancel()
    for job in runner.local.values():
        job.leaving = "crashed"
        for task in (job.compute, job.writer):
            if task is not None:
                task.cancel()


def pixels(result: dict[str, Any]) -> list[np.ndarray]:
    return [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))))
        for item in result["data"]
    ]


# ------------------------------------------------------------------------ lifecycle


def test_job_goes_queued_running_succeeded_with_events_in_order(
    chain: Chain, settings_for: SettingsFor
) -> None:
    async def main() -> tuple[list[JobEvent], dict[str, Any]]:
        async with runners(chain, settings_for()) as (runner,):
            record = await runner.submit({**BODY, "steps": 6, "n": 2})
            assert record.status == "queued" and record.total == 6
            events = await collect(runner.store, record.id)
            return events, (await runner.store.get(record.id)).snapshot()

    events, snapshot = asyncio.run(main())
    names = [e.name for e in events]
    assert names[0] == "queued" and names[-1] == "done"
    progress = [e.data["step"] for e in events if e.name == "progress"]
    assert progress == [1, 2, 3, 4, 5, 6]  # every step, in order
    assert all(e.data["status"] == "running" for e in events if e.name == "progress")
    previews = [e for e in events if e.name == "preview"]
    assert [p.data["step"] for p in previews] == [1, 2, 3, 4, 5]  # every ceil(6/10) step
    assert all(len(p.data["images"]) == 2 for p in previews)  # one per image
    preview = Image.open(io.BytesIO(base64.b64decode(previews[0].data["images"][0].split(",")[1])))
    assert preview.size == (16, 16)  # the latent grid: small
    # Each preview follows the progress event of its step.
    assert names.index("preview") == names.index("progress") + 1

    assert snapshot["status"] == "succeeded" and snapshot["attempt"] == 1
    assert snapshot["progress"] == {"step": 6, "total": 6}
    assert snapshot["started"] is not None and snapshot["finished"] >= snapshot["started"]
    result = snapshot["result"]
    assert [item["seed"] for item in result["data"]] == [11, 12]
    assert set(result["timings"]) == {"text_encoder", "diffusion", "decoder"}
    assert events[-1].data["result"] == result


def test_a_job_without_a_seed_gets_one_at_submission_and_keeps_it(
    chain: Chain, memory_settings: SettingsFor
) -> None:
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        async with runners(chain, memory_settings()) as (runner,):
            body = {key: value for key, value in BODY.items() if key != "seed"}
            record = await runner.submit({**body, "steps": 2})
            stored = json.loads(await runner.store.request(record.id))
            return stored, (await wait_until_done(runner.store, record.id)).snapshot()

    stored, snapshot = asyncio.run(main())
    assert isinstance(stored["seed"], int)
    assert snapshot["result"]["data"][0]["seed"] == stored["seed"]


def test_a_late_subscriber_replays_from_the_start(chain: Chain, settings_for: SettingsFor) -> None:
    async def main() -> list[JobEvent]:
        async with runners(chain, settings_for()) as (runner,):
            record = await runner.submit({**BODY, "steps": 300})
            await wait_for_step(runner.store, record.id, 40)
            await runner.cancel(record.id)
            return await collect(runner.store, record.id)

    events = asyncio.run(main())
    assert events[0].name == "queued" and events[-1].name == "cancelled"
    steps = [e.data["step"] for e in events if e.name == "progress"]
    assert steps[:40] == list(range(1, 41))  # nothing missed before the subscriber came
    assert events[-1].data["step"] >= 40


# --------------------------------------------------------------------------- cancel


def test_cancel_frees_the_rows_and_skips_the_decode(
    chain: Chain, memory_settings: SettingsFor
) -> None:
    scheduler = chain.stages["diffusion"].scheduler
    decoder = chain.stages["decoder"].decode_batcher

    async def main() -> tuple[dict[str, Any], list[JobEvent], int, int]:
        async with runners(chain, memory_settings()) as (runner,):
            cancelled_before = scheduler.stats.cancelled_jobs
            decodes_before = decoder.stats.model_calls
            record = await runner.submit({**BODY, "steps": 1000})
            listener = asyncio.ensure_future(collect(runner.store, record.id))
            await wait_for_step(runner.store, record.id, 3)
            cancelled = await runner.cancel(record.id)
            assert cancelled.status == "cancelled"
            events = await asyncio.wait_for(listener, 10)
            # The scheduler drops the rows at its next step boundary.
            deadline = time.monotonic() + 10
            while scheduler.stats.cancelled_jobs == cancelled_before:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            return (
                cancelled.snapshot(),
                events,
                scheduler.stats.cancelled_jobs - cancelled_before,
                decoder.stats.model_calls - decodes_before,
            )

    snapshot, events, cancelled, decodes = asyncio.run(main())
    assert cancelled == 1 and decodes == 0
    assert scheduler.queue_depth == 0
    assert events[-1].name == "cancelled" and events[-1].data["status"] == "cancelled"
    assert 3 <= events[-1].data["step"] < 1000
    assert snapshot["status"] == "cancelled" and "result" not in snapshot
    assert snapshot["finished"] is not None


def test_a_job_cancelled_before_it_starts_is_cancelled(
    chain: Chain, memory_settings: SettingsFor
) -> None:
    async def main() -> dict[str, Any]:
        async with runners(chain, memory_settings()) as (runner,):
            record = await runner.submit({**BODY, "steps": 6})
            return (await runner.cancel(record.id)).snapshot()  # before it ran a line

    snapshot = asyncio.run(main())
    assert snapshot["status"] == "cancelled" and snapshot["progress"]["step"] == 0


# ------------------------------------------------------------------------- failure


def test_a_failing_stage_fails_the_job_with_its_error(
    chain: Chain, memory_settings: SettingsFor, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*args: Any, **kwargs: Any) -> Any:
        raise UpstreamUnavailable("decoder stage is unreachable")

    monkeypatch.setattr(chain.stages["decoder"], "run", down)

    async def main() -> tuple[dict[str, Any], list[JobEvent]]:
        async with runners(chain, memory_settings()) as (runner,):
            record = await runner.submit({**BODY, "steps": 2})
            events = await collect(runner.store, record.id)
            return (await runner.store.get(record.id)).snapshot(), events

    snapshot, events = asyncio.run(main())
    assert snapshot["status"] == "failed"
    error = {
        "type": "upstream_unavailable",
        "message": "decoder stage is unreachable",
    }
    assert events[-1].name == "error" and events[-1].data["error"] == error
    assert "result" not in snapshot and snapshot["error"] == error


# ------------------------------------------------------------ replicas taking over


def test_a_dead_replicas_job_is_run_again_elsewhere_to_the_same_image(
    chain: Chain, settings_for: SettingsFor
) -> None:
    settings = settings_for(job_lease_s=0.6)

    async def main() -> tuple[list[JobEvent], dict[str, Any], dict[str, Any]]:
        async with runners(chain, settings, count=2) as (first, second):
            reference = await first.submit({**BODY, "steps": 60})
            expected = (await wait_until_done(first.store, reference.id)).snapshot()
            record = await first.submit({**BODY, "steps": 60})
            await wait_for_step(first.store, record.id, 5)
            crash(first)
            finished = await wait_until_done(second.store, record.id)
            return await collect(second.store, record.id), finished.snapshot(), expected

    events, finished, expected = asyncio.run(main())
    names = [e.name for e in events]
    assert names.count("restarted") == 1 and names[-1] == "done"
    restarted = events[names.index("restarted")]
    assert restarted.data["attempt"] == 2 and restarted.data["step"] == 0
    after = [e.data["step"] for e in events[names.index("restarted") :] if e.name == "progress"]
    assert after == list(range(1, 61))  # from the start again
    assert finished["attempt"] == 2 and finished["status"] == "succeeded"
    for got, want in zip(pixels(finished["result"]), pixels(expected["result"]), strict=True):
        assert np.array_equal(got, want)


def test_a_draining_replica_hands_its_job_over_at_once(chain: Chain, redis_server: Any) -> None:
    assert redis_server.command("FLUSHALL").startswith(b"+OK")
    # A long lease: only the hand-over (not a lapse) can move the job in time.
    settings = SETTINGS.model_copy(update={"job_store": redis_server.url, "job_lease_s": 30.0})

    async def main() -> tuple[list[JobEvent], dict[str, Any], float]:
        async with runners(chain, settings, count=2) as (first, second):
            second._connected_since = time.monotonic() - 60  # past its start-up hold-off
            record = await first.submit({**BODY, "steps": 200})
            await wait_for_step(first.store, record.id, 3)
            drained = time.monotonic()
            first.drain()
            finished = await wait_until_done(second.store, record.id, timeout=60)
            took = time.monotonic() - drained
            return await collect(second.store, record.id), finished.snapshot(), took

    events, finished, took = asyncio.run(main())
    assert [e.name for e in events].count("restarted") == 1
    assert finished["status"] == "succeeded" and finished["attempt"] == 2
    assert took < 25  # well before the 30 s lease would have lapsed


def test_a_job_whose_replicas_keep_dying_fails_after_its_attempts(
    chain: Chain, memory_settings: SettingsFor
) -> None:
    settings = memory_settings(job_lease_s=0.6, job_attempts=1)

    async def main() -> dict[str, Any]:
        async with runners(chain, settings, count=2) as (first, second):
            record = await first.submit({**BODY, "steps": 300})
            await wait_for_step(first.store, record.id, 2)
            crash(first)
            return (await wait_until_done(second.store, record.id)).snapshot()

    snapshot = asyncio.run(main())
    assert snapshot["status"] == "failed"
    assert snapshot["error"]["type"] == "job_interrupted"
    assert "SDSERVE_JOB_ATTEMPTS" in snapshot["error"]["message"]


def test_cancel_reaches_the_replica_running_the_job_or_ends_an_orphan(
    chain: Chain, settings_for: SettingsFor
) -> None:
    settings = settings_for(job_lease_s=0.6)

    async def main() -> tuple[dict[str, Any], dict[str, Any], list[JobEvent]]:
        async with runners(chain, settings, count=3) as (first, second, third):
            running = await first.submit({**BODY, "steps": 1000})
            await wait_for_step(first.store, running.id, 2)
            cancelled = (await second.cancel(running.id)).snapshot()
            # An orphan (its replica died) that nobody has claimed yet: the canceller
            # claims it and ends it. (The others' heartbeats stop, or they would claim it.)
            for task in [*second._background, *third._background]:
                task.cancel()
            orphan = await first.submit({**BODY, "steps": 1000})
            await wait_for_step(first.store, orphan.id, 2)
            crash(first)
            await asyncio.sleep(0.7)  # its lease lapses
            ended = (await third.cancel(orphan.id)).snapshot()
            return cancelled, ended, await collect(third.store, orphan.id)

    cancelled, ended, events = asyncio.run(main())
    assert cancelled["status"] == "cancelled" and cancelled["progress"]["step"] >= 2
    assert ended["status"] == "cancelled"
    assert events[-1].name == "cancelled" and "restarted" not in [e.name for e in events]


class SlowStore(MemoryJobStore):
    """A store whose writes take a while, so the writer lags well behind the model."""

    async def update(self, *args: Any) -> bool:
        await asyncio.sleep(0.02)
        return await super().update(*args)


def test_a_writer_lagging_behind_the_model_still_writes_every_event_and_the_end(
    chain: Chain, memory_settings: SettingsFor
) -> None:
    settings = memory_settings()

    async def main() -> tuple[list[JobEvent], dict[str, Any]]:
        store = SlowStore(max_jobs=4, ttl_s=60, lease_s=10)
        runner = JobRunner(Catalog(settings, chains={"tiny": chain}), settings, store)
        await runner.start()
        try:
            record = await runner.submit({**BODY, "steps": 20})
            events = await asyncio.wait_for(collect(store, record.id), timeout=60)
            return events, (await store.get(record.id)).snapshot()
        finally:
            await runner.aclose()

    events, snapshot = asyncio.run(main())
    assert [e.data["step"] for e in events if e.name == "progress"] == list(range(1, 21))
    # Each write saved the state of its own step, not the finished one.
    assert all(e.data["status"] == "running" for e in events if e.name == "progress")
    assert events[-1].name == "done" and snapshot["status"] == "succeeded"
