"""Jobs: generations that run on their own, with live progress, previews and cancel.

    POST   /v1/jobs              a generations body, or {"kind": "edit", ...} with an
                                 edits JSON body -> 202 {"id", "status", "url",
                                 "events_url", ...}; 503 + Retry-After when full, 429
                                 when the API key has its limit of jobs and requests
    GET    /v1/jobs/{id}         status, progress {step, total}, attempt, result or error
    GET    /v1/jobs/{id}/events  Server-Sent Events, each with an id: queued, progress,
                                 preview, restarted (another replica runs it again), then
                                 one of done, error, cancelled (the stream then ends). A
                                 stream replays from the start, or from `Last-Event-ID`
    DELETE /v1/jobs/{id}         cancel, wherever it runs: diffusion rows are freed at
                                 the next step, decode is skipped

Where jobs live is SDSERVE_JOB_STORE: `memory` (this process; a restart forgets them)
or a Redis URL (every gateway replica shares them; see central/jobs/redis_store.py).
The runner (central/jobs/runner.py) runs them, renews their leases, and takes over the
jobs of replicas that stopped.
"""

from __future__ import annotations

from central.jobs.runner import JobRunner
from central.jobs.store import JobStore, MemoryJobStore
from shared.config import Settings


def open_store(settings: Settings) -> JobStore:
    """The store SDSERVE_JOB_STORE names (a Redis one connects on first use)."""
    max_jobs, ttl_s, lease_s = settings.max_jobs, settings.job_ttl_s, settings.job_lease_s
    if settings.job_store == "memory":
        return MemoryJobStore(max_jobs=max_jobs, ttl_s=ttl_s, lease_s=lease_s)
    from central.jobs.redis_store import RedisJobStore

    return RedisJobStore(
        settings.job_store,
        settings.job_store_label,
        max_jobs=max_jobs,
        ttl_s=ttl_s,
        lease_s=lease_s,
    )


__all__ = ["JobRunner", "JobStore", "MemoryJobStore", "open_store"]
