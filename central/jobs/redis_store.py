"""The job store on a Redis (or Valkey) server that every gateway replica shares.

Keys (prefix `sdserve:`), all of one job under `job:{id}`:

    job:{id}            hash: the record (central/jobs/records.py) and `request`
    job:{id}:events     stream: the job's events; stream ids are the SSE event ids
    job:{id}:lease      string: the replica running it; expires unless renewed
    jobs                sorted set: every job; score = when it finished, +inf until then
    key:{pool}:{slot}   sorted set: what an API key holds; score = when the token lapses
                        (+inf for a job's token, freed when the job finishes)
    setting:{name}:{slot}  string: a setting an API key's caller chose (no slot: none)
    notices             pub/sub channel: "cancel:{id}", "orphaned"

Every step that must not race another replica (admitting a job within max_jobs and the
key's limit, a fenced write, a claim) is one Lua script, which Redis runs atomically.
Scripts name some keys themselves (a job's keys from its id), so this needs a standalone
server or a primary, not Redis Cluster. Times come from the server (`TIME`), so replicas'
clocks need not agree.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from central.jobs.records import RECORD_FIELDS, JobEvent, JobRecord
from central.jobs.redis_scripts import SCRIPTS
from central.jobs.store import JobStore, Notice, jobs_full, not_found
from shared.errors import JobStoreUnavailable
from shared.key_slots import Pool, key_full

log = logging.getLogger(__name__)

PREFIX = "sdserve:"
NOTICES = PREFIX + "notices"
# A blocked XREAD wakes this often to see whether its job still exists.
READ_BLOCK_MS = 2000
# Events read at a time, newest first, looking for a job's latest event of a kind.
LAST_EVENT_BATCH = 64
# While Redis is unreachable, a subscriber's stream waits this long between tries.
RECONNECT_S = 0.5
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)

T = TypeVar("T")


def unavailable() -> JobStoreUnavailable:
    return JobStoreUnavailable(
        "the job store (Redis) is unreachable; jobs wait in it and carry on when it is "
        "back: retry shortly"
    )


class RedisJobStore(JobStore):
    kind: Literal["memory", "redis"] = "redis"

    def __init__(
        self, url: str, label: str, *, max_jobs: int, ttl_s: float, lease_s: float
    ) -> None:
        super().__init__(max_jobs=max_jobs, ttl_s=ttl_s, lease_s=lease_s)
        self.label = label

        # No retries inside the client: a call fails fast and we answer 503 (or retry
        # on our own schedule), rather than stalling a request for seconds.
        def client(max_connections: int) -> aioredis.Redis:
            # A burst of calls waits (up to 5 s) for a free connection, not an error.
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=5,
                decode_responses=True,
                socket_connect_timeout=2.0,
                socket_timeout=READ_BLOCK_MS / 1000 + 3.0,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=30,
            )
            return aioredis.Redis.from_pool(pool)

        self.redis = client(64)
        # The feeds' blocking reads have a pool of their own, one connection per job
        # followed here (at most max_jobs), so they never starve the other calls.
        self._reader = client(max_jobs + 4)
        self._feeds: dict[str, _Feed] = {}
        self._scripts = {
            name: self.redis.register_script(source) for name, source in SCRIPTS.items()
        }
        # Tokens this process holds, renewed by renew_slots: {(zset, token)}.
        self._held: set[tuple[str, str]] = set()

    async def aclose(self) -> None:
        for feed in self._feeds.values():
            if feed.task is not None:
                feed.task.cancel()
        await self.redis.aclose()
        await self._reader.aclose()

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        try:
            return await make()
        except UNREACHABLE as exc:
            raise unavailable() from exc

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._call(lambda: self._scripts[name](keys=keys, args=args))

    @property
    def _lease_ms(self) -> int:
        return int(self.lease_s * 1000)

    # --- jobs -----------------------------------------------------------------------

    async def create(self, record: JobRecord, request: str, *, owner: str, key_limit: int) -> None:
        job = _job_key(record.id)
        fields = {**record.fields(), "request": request}
        outcome = await self._script(
            "create",
            [PREFIX + "jobs", job, job + ":events", job + ":lease"],
            [
                PREFIX,
                record.id,
                owner,
                self._lease_ms,
                int(self.ttl_s * 1000),
                self.max_jobs,
                _slot_key("run", record.key) if record.key else "",
                key_limit,
                record.queued_event().encoded(),
                *_pairs(fields),
            ],
        )
        if outcome == "full":
            raise jobs_full(self.max_jobs)
        if outcome == "key_full":
            raise key_full("run", key_limit)

    async def get(self, job_id: str) -> JobRecord:
        fields: dict[str, str] = await self._call(
            lambda: self.redis.hgetall(_job_key(job_id))  # type: ignore[arg-type,return-value]
        )
        if not fields:
            raise not_found()
        return JobRecord.from_fields(fields)

    async def request(self, job_id: str) -> str:
        request = await self._call(lambda: self.redis.hget(_job_key(job_id), "request"))
        if request is None:
            raise not_found()
        return str(request)

    async def update(self, job_id: str, owner: str, event: JobEvent, record: JobRecord) -> bool:
        job = _job_key(job_id)
        event_id = await self._script(
            "update",
            [job + ":lease", job, job + ":events"],
            [owner, self._lease_ms, event.name, event.encoded(), *_pairs(_state(record))],
        )
        return bool(event_id)

    async def finish(self, job_id: str, owner: str, event: JobEvent, record: JobRecord) -> bool:
        job = _job_key(job_id)
        event_id = await self._script(
            "finish",
            [job + ":lease", job, job + ":events", PREFIX + "jobs"],
            [
                owner,
                int(self.ttl_s * 1000),
                event.name,
                event.encoded(),
                PREFIX,
                job_id,
                *_pairs(_state(record)),
            ],
        )
        return bool(event_id)

    async def events(
        self, job_id: str, after: str | None = None
    ) -> AsyncIterator[tuple[str, JobEvent]]:
        """What the stream holds now (one XRANGE), then what the job's feed brings."""
        stream = _job_key(job_id) + ":events"
        last = after or "0-0"
        while True:
            try:
                history: Any = await self.redis.xrange(stream, f"({after}" if after else "-")
                break
            except UNREACHABLE:
                await asyncio.sleep(RECONNECT_S)
        for event_id, fields in history:
            last, event = event_id, JobEvent.decoded(fields["name"], fields["data"])
            yield event_id, event
            if event.terminal:
                return
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = self._feeds[job_id] = _Feed(last)
            feed.task = asyncio.create_task(self._follow(job_id, feed))
        feed.readers += 1
        try:
            seen = _stream_id(last)
            while True:
                for event_id, event in feed.entries:
                    if _stream_id(event_id) <= seen:
                        continue
                    seen = _stream_id(event_id)
                    yield event_id, event
                    if event.terminal:
                        return
                if feed.ended:
                    return  # the job expired while we waited
                appended = feed.appended
                await appended.wait()
        finally:
            feed.readers -= 1
            if not feed.readers and self._feeds.get(job_id) is feed:
                del self._feeds[job_id]
                if feed.task is not None:
                    feed.task.cancel()

    async def last_event(self, job_id: str, name: str) -> JobEvent | None:
        stream, end = _job_key(job_id) + ":events", "+"

        def at_or_before(end: str) -> Callable[[], Awaitable[Any]]:
            return lambda: self.redis.xrevrange(stream, end, "-", count=LAST_EVENT_BATCH)

        while True:
            batch: Any = await self._call(at_or_before(end))
            for _, fields in batch:
                if fields["name"] == name:
                    return JobEvent.decoded(fields["name"], fields["data"])
            if len(batch) < LAST_EVENT_BATCH:
                return None
            end = f"({batch[-1][0]}"

    async def unfinished(self, key: str) -> list[JobRecord]:
        names = list(RECORD_FIELDS)
        rows = await self._script("unfinished", [PREFIX + "jobs"], [PREFIX, key, *names])
        records = [
            JobRecord.from_fields({n: v for n, v in zip(names, row, strict=True) if v is not None})
            for row in rows
        ]
        return sorted(records, key=lambda record: record.created)

    async def _follow(self, job_id: str, feed: _Feed) -> None:
        """One blocking read per followed job in this process, whatever its number of
        subscribers (so open event streams do not each hold a Redis connection)."""
        job = _job_key(job_id)
        while not feed.ended:
            try:
                batches: Any = await self._reader.xread(
                    {job + ":events": feed.last}, block=READ_BLOCK_MS
                )
                exists = bool(batches) or await self.redis.exists(job)
            except UNREACHABLE:
                # Subscribers' streams stay open: the job carries on when Redis is back.
                await asyncio.sleep(RECONNECT_S)
                continue
            except Exception:
                log.exception("reading the events of job %s failed", job_id)
                await asyncio.sleep(RECONNECT_S)
                continue
            for _, entries in batches:
                for event_id, fields in entries:
                    event = JobEvent.decoded(fields["name"], fields["data"])
                    feed.entries.append((event_id, event))
                    feed.last = event_id
                    feed.ended = feed.ended or event.terminal
            feed.ended = feed.ended or not exists
            appended, feed.appended = feed.appended, asyncio.Event()
            appended.set()

    # --- leases ---------------------------------------------------------------------

    async def renew(self, owner: str, job_ids: list[str]) -> tuple[set[str], set[str]]:
        if not job_ids:
            return set(), set()
        lost, cancel = await self._script("renew", [], [PREFIX, owner, self._lease_ms, *job_ids])
        return set(lost), set(cancel)

    async def release(self, owner: str, job_id: str) -> None:
        job = _job_key(job_id)
        await self._script("release", [job + ":lease", job], [owner])

    async def orphans(self) -> list[str]:
        return list(await self._script("orphans", [PREFIX + "jobs"], [PREFIX]))

    async def claim(self, job_id: str, owner: str) -> JobRecord | None:
        job = _job_key(job_id)
        flat = await self._script("claim", [job + ":lease", job], [owner, self._lease_ms])
        return JobRecord.from_fields(_dict(flat)) if flat else None

    # --- cancel and notices ---------------------------------------------------------

    async def request_cancel(self, job_id: str) -> JobRecord:
        flat = await self._script("cancel", [_job_key(job_id)], [NOTICES, job_id])
        if not flat:
            raise not_found()
        return JobRecord.from_fields(_dict(flat))

    async def notices(self) -> AsyncIterator[Notice]:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(NOTICES)
                while True:
                    message = await pubsub.get_message(timeout=READ_BLOCK_MS / 1000)
                    if message is None:
                        continue
                    kind, _, job_id = str(message["data"]).partition(":")
                    if kind in ("cancel", "orphaned"):
                        yield Notice(kind, job_id)  # type: ignore[arg-type]
            except UNREACHABLE:
                await asyncio.sleep(RECONNECT_S)
            finally:
                await pubsub.aclose()

    async def announce_orphans(self) -> None:
        await self._call(lambda: self.redis.publish(NOTICES, "orphaned"))

    # --- what API keys hold ---------------------------------------------------------

    async def acquire_slot(self, pool: Pool, slot: str, limit: int) -> str:
        token = secrets.token_hex(8)
        zset = _slot_key(pool, slot)
        if not await self._script("acquire", [zset], [token, limit, self._lease_ms]):
            raise key_full(pool, limit)
        self._held.add((zset, token))
        return token

    async def release_slot(self, pool: Pool, slot: str, token: str) -> None:
        zset = _slot_key(pool, slot)
        self._held.discard((zset, token))  # not renewed any more: it lapses if this fails
        await self._call(lambda: self.redis.zrem(zset, token))

    async def renew_slots(self) -> None:
        held = list(self._held)
        if held:
            pairs = [part for zset, token in held for part in (zset, token)]
            await self._script("renew_slots", [], [self._lease_ms, *pairs])

    # --- what API keys chose ----------------------------------------------------------

    async def setting(self, key: str, name: str) -> str | None:
        value = await self._call(lambda: self.redis.get(_setting_key(key, name)))
        return None if value is None else str(value)

    async def set_setting(self, key: str, name: str, value: str) -> None:
        await self._call(lambda: self.redis.set(_setting_key(key, name), value))


@dataclass(eq=False)
class _Feed:
    """A job's events as this process reads them, for every subscriber here."""

    last: str  # the id to read after
    entries: list[tuple[str, JobEvent]] = field(default_factory=list)
    appended: asyncio.Event = field(default_factory=asyncio.Event)
    readers: int = 0
    ended: bool = False  # its last event is in, or the job is gone
    task: asyncio.Task[None] | None = None


def _stream_id(event_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = event_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def _job_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def _slot_key(pool: Pool, slot: str) -> str:
    return f"{PREFIX}key:{pool}:{slot}"


def _setting_key(key: str, name: str) -> str:
    return f"{PREFIX}setting:{name}:{key}"


def _state(record: JobRecord) -> dict[str, str]:
    """What a running job's writes may change (never the cancel flag or its key)."""
    fields = record.fields()
    del fields["cancel"], fields["key"], fields["id"], fields["kind"], fields["created"]
    return fields


def _pairs(fields: dict[str, str]) -> list[str]:
    return [part for item in fields.items() for part in item]


def _dict(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))
