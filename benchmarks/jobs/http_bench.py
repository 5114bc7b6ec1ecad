"""Section `http`: two real gateways, one per store, driven over HTTP.

`python -m central` all-in-one (tiny, random weights, 64x64, no warm-up at start-up),
started with `shared.service_process.ServiceProcess` as `sdserve up` starts it, once with
`SDSERVE_JOB_STORE=memory` and once with the URL of a local redis-server; both are alive
at once and measured in turns.

- sequential: one job at a time (`POST /v1/jobs`, then its `events_url` followed until the
  last event): the POST's latency (202), the time from sending the POST to the first
  `progress` event on the stream, and to the `done` event.
- burst: `burst` jobs posted at once, each followed on its own event stream; jobs per
  second = jobs / (first POST sent .. last `done` received), and the same times per job.

A step's own moment is not visible from outside the gateway, so the step-to-subscriber
latency is the `store` section's; here the store's share shows in the POST and in the
time to the first progress event.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from benchmarks.harness import Record, load_average, log, ratio
from benchmarks.jobs.common import PROMPT, STORES, median, stats_ms
from benchmarks.jobs.redis_server import RedisServer
from benchmarks.jobs.store_bench import cpu_seconds, rotated
from shared.service_process import ServiceProcess

CLIENT_TIMEOUT_S = 120.0
TERMINAL = ("done", "error", "cancelled")


@dataclasses.dataclass
class JobTimes:
    """One job as the client saw it, in seconds since its POST was sent."""

    status: int  # the POST's HTTP status
    posted_s: float
    first_progress_s: float | None
    last_event_s: float | None
    last_event: str  # done, error, cancelled, or what went wrong
    events: int
    start: float  # perf_counter when the POST was sent


def gateway_env(plan: Record, job_store: str) -> dict[str, str]:
    return {
        "SDSERVE_MODEL": "tiny",
        "SDSERVE_WEIGHTS": "random",
        "SDSERVE_SIZES": plan["size"],
        "SDSERVE_WARM_UP": "false",
        "SDSERVE_JOB_STORE": job_store,
    }


def job_body(plan: Record, seed: int) -> dict[str, Any]:
    return {
        "prompt": PROMPT,
        "size": plan["size"],
        "n": 1,
        "steps": plan["steps"],
        "seed": seed,
        "response_format": "b64_json",
    }


async def run_job(client: httpx.AsyncClient, url: str, body: Mapping[str, Any]) -> JobTimes:
    """POST a job and follow its event stream to the last event."""
    start = time.perf_counter()
    response = await client.post(f"{url}/v1/jobs", json=body)
    posted = time.perf_counter() - start
    times = JobTimes(response.status_code, posted, None, None, "not posted", 0, start)
    if response.status_code != 202:
        times.last_event = f"POST {response.status_code}: {response.text[:200]}"
        return times
    events_url = url + response.json()["events_url"]
    times.last_event = "stream ended early"
    async with aconnect_sse(client, "GET", events_url) as source:
        async for sse in source.aiter_sse():
            now = time.perf_counter() - start
            times.events += 1
            if sse.event == "progress" and times.first_progress_s is None:
                times.first_progress_s = now
            if sse.event in TERMINAL:
                times.last_event_s, times.last_event = now, sse.event
                break
    return times


def summarize_jobs(jobs: list[JobTimes]) -> Record:
    ok = [j for j in jobs if j.last_event == "done"]
    outcomes: dict[str, int] = {}
    for j in jobs:
        outcomes[j.last_event] = outcomes.get(j.last_event, 0) + 1
    return {
        "jobs": len(jobs),
        "outcomes": outcomes,
        "events_per_job_median": median([j.events for j in ok]),
        "post": stats_ms([j.posted_s for j in ok], 1),
        "first_progress": stats_ms([j.first_progress_s for j in ok if j.first_progress_s], 1),
        "done": stats_ms([j.last_event_s for j in ok if j.last_event_s], 1),
    }


async def burst(client: httpx.AsyncClient, url: str, plan: Record, seed: int) -> Record:
    """`plan["burst"]` jobs at once: jobs/s from the first POST to the last done event."""
    jobs = await asyncio.gather(
        *(run_job(client, url, job_body(plan, seed + i)) for i in range(plan["burst"]))
    )
    first = min(j.start for j in jobs)
    last = max(j.start + (j.last_event_s or 0.0) for j in jobs)
    done = sum(1 for j in jobs if j.last_event == "done")
    return {"seconds": last - first, "jobs_per_s": done / (last - first), "jobs": list(jobs)}


async def measure(plan: Record, urls: dict[str, str], pids: dict[str, int]) -> Record:
    sequential: dict[str, list[JobTimes]] = {name: [] for name in urls}
    bursts: dict[str, list[Record]] = {name: [] for name in urls}
    cores: dict[str, dict[str, list[float]]] = {name: {} for name in urls}
    limits = httpx.Limits(max_connections=2 * plan["burst"] + 8)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
        # Warm-up, not counted: the first jobs trace the models' graphs (no warm-up at
        # start-up), a burst traces the batch sizes continuous batching makes.
        for name, url in urls.items():
            await run_job(client, url, job_body(plan, 1))
            await burst(client, url, plan, 1)
            log(f"  http {name}: warmed up")
        seed = 100
        for round_ in range(plan["rounds"]):
            for i in range(plan["sequential"]):
                for name in rotated(list(urls), round_ + i):
                    seed += 1
                    sequential[name].append(await run_job(client, urls[name], job_body(plan, seed)))
            for name in rotated(list(urls), round_):
                before = {who: cpu_seconds(pid) for who, pid in pids.items()}
                t0 = time.perf_counter()
                result = await burst(client, urls[name], plan, seed)
                seconds = time.perf_counter() - t0
                seed += plan["burst"]
                for who, pid in pids.items():
                    now, then = cpu_seconds(pid), before[who]
                    if now is not None and then is not None:
                        cores[name].setdefault(who, []).append((now - then) / seconds)
                bursts[name].append(result)
                log(
                    f"  http round {round_ + 1}/{plan['rounds']} {name}: "
                    f"{result['jobs_per_s']:.2f} jobs/s (load {load_average()[0]})"
                )
    return summarize_http(sequential, bursts, cores)


def summarize_http(
    sequential: dict[str, list[JobTimes]],
    bursts: dict[str, list[Record]],
    cores: dict[str, dict[str, list[float]]],
) -> Record:
    out: Record = {}
    for name in sequential:
        rates = [b["jobs_per_s"] for b in bursts[name]]
        out[name] = {
            "sequential": summarize_jobs(sequential[name]),
            "burst": {
                "jobs_per_s_median": round(median(rates) or 0.0, 2),
                "jobs_per_s_rounds": [round(r, 2) for r in rates],
                **summarize_jobs([j for b in bursts[name] for j in b["jobs"]]),
                "cores_median": {
                    who: round(median(values) or 0.0, 2) for who, values in cores[name].items()
                },
            },
        }
    if "memory" in out and "redis" in out:
        m, r = out["memory"], out["redis"]
        out["redis_vs_memory"] = {
            "burst_jobs_per_s": ratio(
                r["burst"]["jobs_per_s_median"], m["burst"]["jobs_per_s_median"]
            ),
            **{
                f"{mode}_{what}_median": ratio(
                    r[mode][what].get("median_ms"), m[mode][what].get("median_ms")
                )
                for mode in ("sequential", "burst")
                for what in ("post", "first_progress", "done")
            },
        }
    return out


def section_http(plan: Record, args: argparse.Namespace) -> Record:
    log_dir = Path(tempfile.mkdtemp(prefix="sdserve-jobs-bench-"))
    log(f"http: gateway logs in {log_dir}")
    with RedisServer(args.redis_fsync) as redis:
        stores = {"memory": "memory", "redis": redis.url}
        gateways = {
            name: ServiceProcess(
                "central",
                env=gateway_env(plan, stores[name]),
                log_path=log_dir / f"central-{name}.log",
                wait_ready=False,
            )
            for name in STORES
        }
        started = time.perf_counter()
        ready_s: dict[str, float] = {}
        try:
            for gateway in gateways.values():
                gateway.start()
            for name, gateway in gateways.items():
                gateway.wait_ready()
                ready_s[name] = round(time.perf_counter() - started, 1)
            log(f"http: gateways ready in {ready_s} s")
            pids = {
                f"gateway ({name})": gateway.proc.pid
                for name, gateway in gateways.items()
                if gateway.proc is not None
            }
            if redis.proc is not None:
                pids["redis-server"] = redis.proc.pid
            pids["benchmark client"] = os.getpid()
            measured = asyncio.run(measure(plan, {n: g.url for n, g in gateways.items()}, pids))
        finally:
            for gateway in gateways.values():
                gateway.stop()
        return {
            "config": plan,
            "redis_server": {"version": redis.version, "settings": redis.settings},
            "gateway_env": gateway_env(plan, "<memory | redis URL>"),
            "startup_ready_s": ready_s,
            **measured,
        }
