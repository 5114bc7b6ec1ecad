"""Where jobs live: the store interface, and the store in one process's memory.

Every store keeps, per job, its record (central/jobs/records.py), the request it was
posted with (JSON, to run it again) and its events in order, each with an id a client can
resume after (`Last-Event-ID`). The gateway replica that runs a job holds its *lease*;
writes about a running job are fenced by it (`update` and `finish` do nothing for a
replica that lost the lease), and a job whose lease lapsed is an orphan that any replica
may `claim` and run again. The store also counts what each API key holds (requests and
jobs in the `run` pool, open event streams in the `stream` pool), so a key's limits hold
across replicas.

`MemoryJobStore` is the embedded default: one gateway process, and a restart forgets
every job. `central/jobs/redis_store.py` is the same contract on a Redis server.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Literal

from central.jobs.records import JobEvent, JobRecord
from shared.errors import JobNotFound, QueueFull
from shared.key_slots import LocalKeySlots, Pool, key_full

RETRY_AFTER_S = 5


def not_found() -> JobNotFound:
    return JobNotFound(
        "no such job: it never existed, has expired, or the gateway that held it restarted",
        param="id",
    )


def jobs_full(max_jobs: int) -> QueueFull:
    return QueueFull(
        f"{max_jobs} jobs are queued or running; retry later", retry_after_s=RETRY_AFTER_S
    )


@dataclass
class Notice:
    """A message every replica hears: cancel a job, or look for orphans now."""

    kind: Literal["cancel", "orphaned"]
    job_id: str = ""


class JobStore(ABC):
    """The contract every job store keeps (tests/unit/central/jobs/test_store_contract)."""

    # How logs and /v1/info name it ("memory", or the Redis URL without its password).
    label: str
    kind: Literal["memory", "redis"]

    def __init__(self, *, max_jobs: int, ttl_s: float, lease_s: float) -> None:
        self.max_jobs = max_jobs
        self.ttl_s = ttl_s
        self.lease_s = lease_s

    async def aclose(self) -> None:  # noqa: B027 - nothing to close in memory
        """Let go of connections."""

    # --- jobs -----------------------------------------------------------------------

    @abstractmethod
    async def create(self, record: JobRecord, request: str, *, owner: str, key_limit: int) -> None:
        """Add a job (leased to `owner`, its `queued` event published), counting it
        against `record.key` when set. QueueFull when max_jobs are unfinished,
        TooManyRequests when the key is at `key_limit`."""

    @abstractmethod
    async def get(self, job_id: str) -> JobRecord:
        """The job's record, or JobNotFound."""

    @abstractmethod
    async def request(self, job_id: str) -> str:
        """The request the job was posted with (JSON, its seed fixed)."""

    @abstractmethod
    async def update(self, job_id: str, owner: str, event: JobEvent, record: JobRecord) -> bool:
        """Publish `event` and save `record`'s state, if `owner` holds the lease."""

    @abstractmethod
    async def finish(self, job_id: str, owner: str, event: JobEvent, record: JobRecord) -> bool:
        """As update, for the last event: the job is kept ttl_s more, its lease and its
        key's slot are freed."""

    @abstractmethod
    def events(self, job_id: str, after: str | None = None) -> AsyncIterator[tuple[str, JobEvent]]:
        """(id, event) from the start (or after the id `after`) until the last event."""

    @abstractmethod
    async def last_event(self, job_id: str, name: str) -> JobEvent | None:
        """The job's latest event of this name (its latest preview, say), if any."""

    @abstractmethod
    async def unfinished(self, key: str) -> list[JobRecord]:
        """The unfinished jobs counted against `key` ("": those of no key), oldest first."""

    # --- leases ---------------------------------------------------------------------

    @abstractmethod
    async def renew(self, owner: str, job_ids: list[str]) -> tuple[set[str], set[str]]:
        """Extend `owner`'s leases: (the ids whose lease another replica holds now, the
        ids asked to cancel)."""

    @abstractmethod
    async def release(self, owner: str, job_id: str) -> None:
        """Give the lease up (the job becomes an orphan at once)."""

    @abstractmethod
    async def orphans(self) -> list[str]:
        """Unfinished jobs that nobody holds a lease on."""

    @abstractmethod
    async def claim(self, job_id: str, owner: str) -> JobRecord | None:
        """Take the lease of an unfinished job nobody holds; None if that is not so."""

    # --- cancel and notices ---------------------------------------------------------

    @abstractmethod
    async def request_cancel(self, job_id: str) -> JobRecord:
        """Mark the job to be cancelled and tell every replica; the record as it was."""

    @abstractmethod
    def notices(self) -> AsyncIterator[Notice]:
        """Notices from every replica, for as long as the caller listens."""

    @abstractmethod
    async def announce_orphans(self) -> None:
        """Tell every replica there are orphans to claim (a replica handed jobs over)."""

    # --- what API keys hold ---------------------------------------------------------

    @abstractmethod
    async def acquire_slot(self, pool: Pool, slot: str, limit: int) -> str:
        """Take one of the key's `limit` places in `pool`: a token to release, or
        TooManyRequests. Held tokens are kept alive by `renew_slots`."""

    @abstractmethod
    async def release_slot(self, pool: Pool, slot: str, token: str) -> None: ...

    @abstractmethod
    async def renew_slots(self) -> None:
        """Keep the tokens this process holds alive (a dead process's lapse)."""

    # --- what API keys chose ----------------------------------------------------------

    @abstractmethod
    async def setting(self, key: str, name: str) -> str | None:
        """A setting the caller of `key` ("": of no key) chose (the AUTOMATIC1111 API's
        checkpoint, say), seen by every replica; None when never set."""

    @abstractmethod
    async def set_setting(self, key: str, name: str, value: str) -> None: ...


@dataclass
class _Entry:
    record: JobRecord
    request: str
    events: list[tuple[str, JobEvent]] = field(default_factory=list)
    owner: str | None = None
    lease_until: float = 0.0
    finished_at: float | None = None  # monotonic, for the TTL
    appended: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryJobStore(JobStore):
    """Jobs in this process: the contract of a store, kept in dictionaries."""

    label = "memory"
    kind: Literal["memory", "redis"] = "memory"

    def __init__(self, *, max_jobs: int, ttl_s: float, lease_s: float) -> None:
        super().__init__(max_jobs=max_jobs, ttl_s=ttl_s, lease_s=lease_s)
        self.jobs: dict[str, _Entry] = {}
        self.slots = LocalKeySlots()
        self.settings: dict[tuple[str, str], str] = {}
        self._sequence = 0
        self._listeners: list[asyncio.Queue[Notice]] = []

    # --- jobs -----------------------------------------------------------------------

    async def create(self, record: JobRecord, request: str, *, owner: str, key_limit: int) -> None:
        self._purge()
        if record.key and len(self.slots.tokens("run", record.key)) >= key_limit:
            raise key_full("run", key_limit)
        if len(self.jobs) >= self.max_jobs:
            finished = [e for e in self.jobs.values() if e.finished_at is not None]
            if not finished:
                raise jobs_full(self.max_jobs)
            oldest = min(finished, key=lambda e: e.finished_at or 0.0)
            del self.jobs[oldest.record.id]
        entry = _Entry(replace(record), request)
        self.jobs[record.id] = entry
        self._lease(entry, owner)
        if record.key:
            self.slots.take("run", record.key, key_limit, f"job:{record.id}")
        self._append(entry, record.queued_event())

    async def get(self, job_id: str) -> JobRecord:
        return replace(self._entry(job_id).record)

    async def request(self, job_id: str) -> str:
        return self._entry(job_id).request

    async def update(self, job_id: str, owner: str, event: JobEvent, record: JobRecord) -> bool:
        entry = self.jobs.get(job_id)
        if entry is None or not self._holds(entry, owner):
            return False
        entry.record = replace(record, cancel=entry.record.cancel)
        self._append(entry, event)
        return True

    async def finish(self, job_id: str, owner: str, event: JobEvent, record: JobRecord) -> bool:
        entry = self.jobs.get(job_id)
        if entry is None or not self._holds(entry, owner):
            return False
        entry.record = replace(record, cancel=entry.record.cancel)
        entry.finished_at = time.monotonic()
        entry.owner = None
        if record.key:
            await self.slots.release_slot("run", record.key, f"job:{job_id}")
        self._append(entry, event)
        return True

    async def events(
        self, job_id: str, after: str | None = None
    ) -> AsyncIterator[tuple[str, JobEvent]]:
        entry = self._entry(job_id)
        position = 0
        if after is not None:
            last = _sequence(after)
            position = sum(1 for event_id, _ in entry.events if _sequence(event_id) <= last)
        while True:
            while position < len(entry.events):
                event_id, event = entry.events[position]
                position += 1
                yield event_id, event
                if event.terminal:
                    return
            appended = entry.appended
            await appended.wait()

    async def last_event(self, job_id: str, name: str) -> JobEvent | None:
        for _, event in reversed(self._entry(job_id).events):
            if event.name == name:
                return event
        return None

    async def unfinished(self, key: str) -> list[JobRecord]:
        found = [e.record for e in self.jobs.values() if not e.record.done and e.record.key == key]
        return [replace(record) for record in sorted(found, key=lambda r: r.created)]

    def _append(self, entry: _Entry, event: JobEvent) -> None:
        self._sequence += 1
        entry.events.append((f"{self._sequence}-0", event))
        # Wake every reader, then give later readers a fresh event to wait on.
        appended, entry.appended = entry.appended, asyncio.Event()
        appended.set()

    # --- leases ---------------------------------------------------------------------

    async def renew(self, owner: str, job_ids: list[str]) -> tuple[set[str], set[str]]:
        lost, cancel = set(), set()
        for job_id in job_ids:
            entry = self.jobs.get(job_id)
            if entry is None or entry.record.done:
                continue
            if not self._holds(entry, owner):
                lost.add(job_id)
                continue
            if entry.record.cancel:
                cancel.add(job_id)
        return lost, cancel

    async def release(self, owner: str, job_id: str) -> None:
        entry = self.jobs.get(job_id)
        if entry is not None and entry.owner == owner:
            entry.owner = None

    async def orphans(self) -> list[str]:
        return [job_id for job_id, entry in self.jobs.items() if _orphaned(entry)]

    async def claim(self, job_id: str, owner: str) -> JobRecord | None:
        entry = self.jobs.get(job_id)
        if entry is None or not _orphaned(entry):
            return None
        self._lease(entry, owner)
        return replace(entry.record)

    def _lease(self, entry: _Entry, owner: str) -> None:
        entry.owner = owner
        entry.lease_until = time.monotonic() + self.lease_s

    def _holds(self, entry: _Entry, owner: str) -> bool:
        """Whether `owner` may write about the job, (re)taking a lapsed lease: it may
        unless the job is over or another replica holds a live lease on it."""
        if entry.record.done or (_leased(entry) and entry.owner != owner):
            return False
        self._lease(entry, owner)
        return True

    # --- cancel and notices ---------------------------------------------------------

    async def request_cancel(self, job_id: str) -> JobRecord:
        entry = self._entry(job_id)
        record = replace(entry.record)
        if not record.done:
            entry.record.cancel = True
            self._notify(Notice("cancel", job_id))
        return record

    async def notices(self) -> AsyncIterator[Notice]:
        queue: asyncio.Queue[Notice] = asyncio.Queue()
        self._listeners.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._listeners.remove(queue)

    async def announce_orphans(self) -> None:
        self._notify(Notice("orphaned"))

    def _notify(self, notice: Notice) -> None:
        for queue in self._listeners:
            queue.put_nowait(notice)

    # --- what API keys hold ---------------------------------------------------------

    async def acquire_slot(self, pool: Pool, slot: str, limit: int) -> str:
        return await self.slots.acquire_slot(pool, slot, limit)

    async def release_slot(self, pool: Pool, slot: str, token: str) -> None:
        await self.slots.release_slot(pool, slot, token)

    async def renew_slots(self) -> None:
        """Nothing lapses in one process."""

    # --- what API keys chose ----------------------------------------------------------

    async def setting(self, key: str, name: str) -> str | None:
        return self.settings.get((key, name))

    async def set_setting(self, key: str, name: str, value: str) -> None:
        self.settings[(key, name)] = value

    # --- housekeeping ---------------------------------------------------------------

    def _entry(self, job_id: str) -> _Entry:
        self._purge()
        entry = self.jobs.get(job_id)
        if entry is None:
            raise not_found()
        return entry

    def _purge(self) -> None:
        """Forget finished jobs older than the TTL."""
        now = time.monotonic()
        expired = [
            job_id
            for job_id, entry in self.jobs.items()
            if entry.finished_at is not None and now - entry.finished_at >= self.ttl_s
        ]
        for job_id in expired:
            del self.jobs[job_id]


def _leased(entry: _Entry) -> bool:
    """Whether a replica holds a live lease on the job."""
    return entry.owner is not None and entry.lease_until > time.monotonic()


def _orphaned(entry: _Entry) -> bool:
    """Unfinished, and nobody holds a live lease on it."""
    return not entry.record.done and not _leased(entry)


def _sequence(event_id: str) -> int:
    return int(event_id.partition("-")[0])
