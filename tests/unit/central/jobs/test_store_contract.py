"""The job store contract, run against both stores: memory, and a real redis-server.

Each test runs its own event loop; the Redis database is flushed before each test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from central.jobs.records import JobEvent, JobRecord, check_event_id, preview_event
from central.jobs.redis_store import LAST_EVENT_BATCH, RedisJobStore
from central.jobs.store import JobStore, MemoryJobStore, Notice
from shared.errors import (
    InvalidInput,
    JobNotFound,
    JobStoreUnavailable,
    QueueFull,
    TooManyRequests,
)
from shared.service_process import free_port
from tests.utils.redis_server import RedisServer

LEASE_S = 0.6
TTL_S = 30.0
MAX_JOBS = 3

StoreFactory = Callable[..., JobStore]


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    """Builds a store of the parametrized kind (inside the test's event loop)."""
    if request.param == "memory":
        yield lambda **limits: MemoryJobStore(**_limits(limits))
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    assert server.command("FLUSHALL").startswith(b"+OK")
    yield lambda **limits: RedisJobStore(server.url, "redis", **_limits(limits))


def _limits(overrides: dict[str, Any]) -> dict[str, Any]:
    return {"max_jobs": MAX_JOBS, "ttl_s": TTL_S, "lease_s": LEASE_S, **overrides}


def run(
    make_store: StoreFactory, scenario: Callable[[JobStore], Awaitable[None]], **limits: Any
) -> None:
    async def main() -> None:
        store = make_store(**limits)
        try:
            await scenario(store)
        finally:
            await store.aclose()

    asyncio.run(main())


async def new_job(store: JobStore, owner: str = "A", key: str | None = None) -> JobRecord:
    record = JobRecord.new("generation", total=4, key=key)
    await store.create(record, json.dumps({"prompt": "x", "seed": 7}), owner=owner, key_limit=2)
    return record


async def drain(events: AsyncIterator[tuple[str, JobEvent]]) -> list[tuple[str, JobEvent]]:
    return [item async for item in events]


async def step(store: JobStore, record: JobRecord, n: int, owner: str = "A") -> bool:
    record.status, record.step = "running", n
    return await store.update(record.id, owner, record.progress_event(), record)


async def finish(store: JobStore, record: JobRecord, owner: str = "A") -> bool:
    record.status, record.result = "succeeded", {"data": []}
    return await store.finish(record.id, owner, record.final_event(), record)


# ----------------------------------------------------------------- records and events


def test_a_job_is_stored_with_its_request_and_queued_event(make_store: StoreFactory) -> None:
    async def scenario(store: JobStore) -> None:
        record = await new_job(store)
        stored = await store.get(record.id)
        assert stored == record and stored.status == "queued" and stored.attempt == 1
        assert json.loads(await store.request(record.id)) == {"prompt": "x", "seed": 7}
        await finish(store, record)
        events = await drain(store.events(record.id))
        assert [e.name for _, e in events] == ["queued", "done"]
        assert events[0][1].data == {"id": record.id, "status": "queued", "step": 0, "total": 4}
        with pytest.raises(JobNotFound):
            await store.get("no-such-job")

    run(make_store, scenario)


def test_events_replay_from_the_start_or_resume_after_an_id(make_store: StoreFactory) -> None:
    async def scenario(store: JobStore) -> None:
        record = await new_job(store)
        for n in (1, 2, 3):
            assert await step(store, record, n)
        assert await finish(store, record)
        events = await drain(store.events(record.id))
        assert [e.name for _, e in events] == ["queued", "progress", "progress", "progress", "done"]
        ids = [event_id for event_id, _ in events]
        assert len(set(ids)) == 5 and all(check_event_id(i) == i for i in ids)
        resumed = await drain(store.events(record.id, after=ids[1]))
        assert [e.data["step"] for _, e in resumed] == [2, 3, 3]
        assert [i for i, _ in resumed] == ids[2:]
        # The saved state follows the writes.
        stored = await store.get(record.id)
        assert (stored.status, stored.step, stored.result) == ("succeeded", 3, {"data": []})

    run(make_store, scenario)


def test_the_latest_event_of_a_kind_is_found_however_far_back(make_store: StoreFactory) -> None:
    async def scenario(store: JobStore) -> None:
        record = await new_job(store)
        assert await store.last_event(record.id, "preview") is None  # none yet
        for n in (1, 2):
            await store.update(
                record.id, "A", preview_event(record.id, n, 4, [f"image-{n}"]), record
            )
        # More progress events since than a Redis read takes at a time.
        for n in range(LAST_EVENT_BATCH + 5):
            assert await step(store, record, n)
        latest = await store.last_event(record.id, "preview")
        assert latest is not None and latest.data["images"] == ["image-2"]
        progress = await store.last_event(record.id, "progress")
        assert progress is not None and progress.data["step"] == LAST_EVENT_BATCH + 4
        assert await store.last_event(record.id, "done") is None

    run(make_store, scenario)


def test_unfinished_jobs_are_listed_per_key_oldest_first(make_store: StoreFactory) -> None:
    async def scenario(store: JobStore) -> None:
        first = await new_job(store, key="key-one")
        anonymous = await new_job(store)
        second = await new_job(store, key="key-one")
        assert await step(store, second, 2)
        mine = await store.unfinished("key-one")
        assert [r.id for r in mine] == [first.id, second.id]
        assert (mine[1].status, mine[1].step, mine[1].total) == ("running", 2, 4)
        assert mine[0] == await store.get(first.id)
        assert [r.id for r in await store.unfinished("")] == [anonymous.id]
        assert await store.unfinished("key-two") == []
        await finish(store, first)
        assert [r.id for r in await store.unfinished("key-one")] == [second.id]

    run(make_store, scenario, max_jobs=5)


def test_a_keys_settings_are_its_own(make_store: StoreFactory) -> None:
    async def scenario(store: JobStore) -> None:
        assert await store.setting("key-one", "sd_model_checkpoint") is None
        await store.set_setting("key-one", "sd_model_checkpoint", "tiny-alt")
        await store.set_setting("", "sd_model_checkpoint", "tiny")
        assert await store.setting("key-one", "sd_model_checkpoint") == "tiny-alt"
        assert await store.setting("", "sd_model_checkpoint") == "tiny"
        assert await store.setting("key-two", "sd_model_checkpoint") is None
        await store.set_setting("key-one", "sd_model_checkpoint", "tiny")
        assert await store.setting("key-one", "sd_model_checkpoint") == "tiny"

    run(make_store, scenario)


def test_a_subscriber_gets_events_as_they_are_published(make_store: StoreFactory) -> None:
    async def scenario(store: JobStore) -> None:
        record = await new_job(store)
        reader = asyncio.ensure_future(drain(store.events(record.id)))
        await asyncio.sleep(0.1)
        assert not reader.done()
        await step(store, record, 1)
        await finish(store, record)
        events = await asyncio.wait_for(reader, timeout=10)
        assert [e.name for _, e in events] == ["queued", "progress", "done"]

    run(make_store, scenario)


def test_an_event_id_that_is_not_ours_is_refused() -> None:
    for bad in ("", "abc", "1-2-3", "../etc", "9" * 30 + "-0"):
        with pytest.raises(InvalidInput) as caught:
            check_event_id(bad)
        assert caught.value.param == "Last-Event-ID"


# ------------------------------------------------------------------ bounds and expiry


def test_at_most_max_jobs_are_unfinished_and_the_oldest_finished_makes_room(
    make_store: StoreFactory,
) -> None:
    async def scenario(store: JobStore) -> None:
        first, *_ = [await new_job(store) for _ in range(MAX_JOBS)]
        with pytest.raises(QueueFull) as caught:
            await new_job(store)
        assert caught.value.headers()["Retry-After"]
        await finish(store, first)
        await new_job(store)  # evicts the finished one
        with pytest.raises(JobNotFound):
            await store.get(first.id)

    run(make_store, scenario)


def test_a_finished_job_is_forgotten_after_the_ttl(make_store: StoreFactory) -> None:
    async def scenario(store: JobStore) -> None:
        record = await new_job(store)
        await finish(store, record)
        assert (await store.get(record.id)).status == "succeeded"
        await asyncio.sleep(1.3)
        with pytest.raises(JobNotFound):
            await store.get(record.id)

    run(make_store, scenario, ttl_s=1.0)


def test_a_key_holds_at_most_its_limit_of_jobs_and_requests(make_store: StoreFactory) -> None:
    async def scenario(store: JobStore) -> None:
        first = await new_job(store, key="k")  # key_limit=2
        token = await store.acquire_slot("run", "k", 2)  # a request in flight
        with pytest.raises(TooManyRequests):
            await new_job(store, key="k")
        with pytest.raises(TooManyRequests):
            await store.acquire_slot("run", "k", 2)
        await new_job(store, key="other")  # another key is not affected
        await store.release_slot("run", "k", token)
        second = await new_job(store, key="k")
        await finish(store, first)  # a finished job frees its place
        await store.acquire_slot("run", "k", 2)
        # Streams are a pool of their own.
        streams = [await store.acquire_slot("stream", "k", 2) for _ in range(2)]
        with pytest.raises(TooManyRequests) as caught:
            await store.acquire_slot("stream", "k", 2)
        assert "event streams" in caught.value.message
        await store.release_slot("stream", "k", streams[0])
        await store.acquire_slot("stream", "k", 2)
        assert second.key == "k"

    run(make_store, scenario)


# ------------------------------------------------------------------------------ leases


def test_a_lapsed_lease_makes_an_orphan_that_one_replica_claims(make_store: StoreFactory) -> None:
    async def scenario(store: JobStore) -> None:
        record = await new_job(store, owner="A")
        assert await store.orphans() == []
        assert await store.claim(record.id, "B") is None  # A's lease is live
        await asyncio.sleep(LEASE_S * 1.5)  # A stops renewing (it died)
        assert await store.orphans() == [record.id]
        claimed = await store.claim(record.id, "B")
        assert claimed is not None and claimed.id == record.id
        assert await store.claim(record.id, "C") is None  # B holds it now
        # A's writes are fenced off, and its renewal says it lost the job.
        assert not await step(store, record, 1, owner="A")
        lost, _ = await store.renew("A", [record.id])
        assert lost == {record.id}
        assert await step(store, record, 1, owner="B")
        assert await store.orphans() == []

    run(make_store, scenario)


def test_renewing_keeps_the_lease_and_release_hands_it_over_at_once(
    make_store: StoreFactory,
) -> None:
    async def scenario(store: JobStore) -> None:
        record = await new_job(store, owner="A")
        for _ in range(3):
            await asyncio.sleep(LEASE_S / 2)
            assert await store.renew("A", [record.id]) == (set(), set())
        assert await store.orphans() == []
        await store.release("B", record.id)  # not B's to release
        assert await store.orphans() == []
        await store.release("A", record.id)
        assert await store.orphans() == [record.id]
        assert await store.claim(record.id, "B") is not None

    run(make_store, scenario)


def test_a_finished_job_is_no_orphan_and_takes_no_more_writes(make_store: StoreFactory) -> None:
    async def scenario(store: JobStore) -> None:
        record = await new_job(store, owner="A")
        await finish(store, record)
        await asyncio.sleep(LEASE_S * 1.5)
        assert await store.orphans() == []
        assert await store.claim(record.id, "B") is None
        assert not await step(store, record, 1, owner="A")
        assert not await finish(store, record, owner="A")
        assert [e.name for _, e in await drain(store.events(record.id))] == ["queued", "done"]

    run(make_store, scenario)


# ---------------------------------------------------------------------- cancel, notices


def test_cancel_marks_the_job_and_tells_every_replica(make_store: StoreFactory) -> None:
    async def scenario(store: JobStore) -> None:
        record = await new_job(store, owner="A")
        heard: list[Notice] = []

        async def listen() -> None:
            async for notice in store.notices():
                heard.append(notice)

        listener = asyncio.ensure_future(listen())
        await asyncio.sleep(0.2)  # subscribed
        before = await store.request_cancel(record.id)
        assert before.status == "queued" and not before.cancel
        assert (await store.get(record.id)).cancel
        # The owner also hears it on renewal (a notice can be missed).
        assert await store.renew("A", [record.id]) == (set(), {record.id})
        # The owner's later writes keep the flag.
        await step(store, record, 1)
        assert (await store.get(record.id)).cancel
        await store.announce_orphans()
        for _ in range(100):
            if len(heard) == 2:
                break
            await asyncio.sleep(0.05)
        listener.cancel()
        assert heard == [Notice("cancel", record.id), Notice("orphaned")]
        with pytest.raises(JobNotFound):
            await store.request_cancel("no-such-job")
        await finish(store, record)
        assert (await store.request_cancel(record.id)).status == "succeeded"

    run(make_store, scenario)


# --------------------------------------------------------------------- redis is down


def test_an_unreachable_redis_is_named_not_a_500() -> None:
    async def main() -> None:
        store = RedisJobStore(
            f"redis://127.0.0.1:{free_port()}/0", "redis", max_jobs=3, ttl_s=30, lease_s=1
        )
        try:
            for call in (
                lambda: store.get("x"),
                lambda: new_job(store),
                lambda: store.acquire_slot("run", "k", 2),
                lambda: store.orphans(),
            ):
                with pytest.raises(JobStoreUnavailable) as caught:
                    await call()
                assert "job store" in caught.value.message
                assert caught.value.headers()["Retry-After"]
        finally:
            await store.aclose()

    asyncio.run(main())


def test_many_subscribers_of_a_job_share_its_feed_and_starve_nothing(
    make_store: StoreFactory,
) -> None:
    """More subscribers than a Redis client has connections: one read per job feeds
    them all, and the store's other calls go on meanwhile."""

    async def scenario(store: JobStore) -> None:
        record = await new_job(store)
        readers = [asyncio.ensure_future(drain(store.events(record.id))) for _ in range(150)]
        await asyncio.sleep(0.3)
        for n in (1, 2):
            assert await step(store, record, n)
        assert (await store.get(record.id)).step == 2
        await finish(store, record)
        results = await asyncio.wait_for(asyncio.gather(*readers), timeout=20)
        assert all([e.name for _, e in events] == ["queued", "progress", "progress", "done"]
                   for events in results)  # fmt: skip
        assert not getattr(store, "_feeds", {})  # the feed goes with its last reader

    run(make_store, scenario)
