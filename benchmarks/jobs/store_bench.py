"""Section `store`: the job stores themselves, in this process, as the gateway's runner and
its event streams use them.

- lifecycle: `create`, `steps` x `update` (a progress event and the record's state), then
  `finish` with a done event carrying a result, by `submitters` concurrent coroutines,
  each starting its next job when the last one finished; jobs per second.
- event latency: one job followed by `subscribers` coroutines iterating `events(id)`;
  the writer calls `update(...)` with a progress event and the time from that call to
  each subscriber's iterator yielding the event is one sample. The next event is written
  once every subscriber has had the last one (so this is the idle path, not a backlog).

Both stores are the real classes with the gateway's default limits (`Settings()`), the
Redis one on a local redis-server. Rounds alternate the stores (and rotate the
configurations) so load from other processes hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import time
from collections.abc import Sequence
from typing import TypeVar

from benchmarks.harness import Record, load_average, log, ratio
from benchmarks.jobs.common import STORES, median, stats_ms
from benchmarks.jobs.redis_server import RedisServer
from central.jobs import open_store
from central.jobs.records import JobRecord
from central.jobs.store import JobStore
from shared.config import Settings

OWNER = "bench-replica"
# What a finished 64x64 job's done event carries: one PNG as base64 (16 KiB of random
# bytes stand in for it; a noisy 64x64 RGB PNG is about 12 KiB).
RESULT = {
    "created": 0,
    "data": [
        {
            "b64_json": base64.b64encode(random.Random(0).randbytes(12 * 1024)).decode(),
            "seed": 1,
        }
    ],
}
REQUEST = json.dumps({"prompt": "a photograph of an astronaut riding a horse", "seed": 1})
# A stuck subscriber must not hang the benchmark.
DELIVERY_TIMEOUT_S = 10.0

T = TypeVar("T")


def store_settings(url: str) -> Settings:
    return Settings(job_store=url)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used (/proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- lifecycle


async def run_job(store: JobStore, steps: int) -> None:
    """One job's life as the runner writes it: create, a progress event per step, done."""
    record = JobRecord.new("generation", total=steps)
    await store.create(record, REQUEST, owner=OWNER, key_limit=4)
    record.status, record.started = "running", time.time()
    for step in range(1, steps + 1):
        # The runner's writer waits for each step (a memory store's calls never suspend,
        # so without this one submitter would run alone until the deadline).
        await asyncio.sleep(0)
        record.step = step
        if not await store.update(record.id, OWNER, record.progress_event(), record):
            raise RuntimeError(f"update of job {record.id} was refused")
    record.status, record.result, record.finished = "succeeded", RESULT, time.time()
    if not await store.finish(record.id, OWNER, record.final_event(), record):
        raise RuntimeError(f"finish of job {record.id} was refused")


async def lifecycle_round(
    store: JobStore, submitters: int, steps: int, duration_s: float
) -> Record:
    """`submitters` closed loops of whole jobs for `duration_s` (then each finishes the job
    it is in): jobs per second over the whole time, and each job's wall time."""
    job_s: list[float] = []
    started = time.perf_counter()
    stop = started + duration_s

    async def submitter() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await run_job(store, steps)
            job_s.append(time.perf_counter() - t0)

    cpu0 = cpu_seconds(os.getpid())
    await asyncio.gather(*(submitter() for _ in range(submitters)))
    elapsed = time.perf_counter() - started
    cpu1 = cpu_seconds(os.getpid())
    return {
        "jobs": len(job_s),
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(len(job_s) / elapsed, 1),
        "job_ms_median": round(1000 * (median(job_s) or 0.0), 3),
        "benchmark_cores": round((cpu1 - cpu0) / elapsed, 2) if cpu0 and cpu1 else None,
    }


# --------------------------------------------------------------------------- latency


async def latency_round(store: JobStore, subscribers: int, events: int, gap_s: float) -> Record:
    """One job, `subscribers` followers, `events` progress updates: the seconds from each
    `update` call to each subscriber's iterator yielding that event."""
    record = JobRecord.new("generation", total=events)
    await store.create(record, REQUEST, owner=OWNER, key_limit=4)
    sent: dict[int, float] = {}
    received: dict[int, list[float]] = {step: [] for step in range(1, events + 1)}
    subscribed = 0
    all_subscribed = asyncio.Event()
    delivered = asyncio.Event()

    async def follow() -> None:
        nonlocal subscribed
        async for _, event in store.events(record.id):
            now = time.perf_counter()
            if event.name == "queued":
                subscribed += 1
                if subscribed == subscribers:
                    all_subscribed.set()
            elif event.name == "progress":
                step = int(event.data["step"])
                received[step].append(now - sent[step])
                if len(received[step]) == subscribers:
                    delivered.set()

    followers = [asyncio.create_task(follow()) for _ in range(subscribers)]
    update_s: list[float] = []
    try:
        await asyncio.wait_for(all_subscribed.wait(), DELIVERY_TIMEOUT_S)
        record.status, record.started = "running", time.time()
        for step in range(1, events + 1):
            record.step = step
            delivered.clear()
            sent[step] = t0 = time.perf_counter()
            await store.update(record.id, OWNER, record.progress_event(), record)
            update_s.append(time.perf_counter() - t0)
            await asyncio.wait_for(delivered.wait(), DELIVERY_TIMEOUT_S)
            await asyncio.sleep(gap_s)
        record.status, record.result, record.finished = "succeeded", RESULT, time.time()
        await store.finish(record.id, OWNER, record.final_event(), record)
        await asyncio.wait_for(asyncio.gather(*followers), DELIVERY_TIMEOUT_S)
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    return {
        "samples_s": [s for step in sorted(received) for s in received[step]],
        "last_subscriber_s": [max(received[step]) for step in sorted(received)],
        "update_call_s": update_s,
    }


# --------------------------------------------------------------------------- the section


def rotated(items: Sequence[T], shift: int) -> list[T]:
    shift %= len(items)
    return [*items[shift:], *items[:shift]]


async def run_config(kind: str, level: int, store: JobStore, plan: Record) -> Record:
    if kind == "lifecycle":
        return await lifecycle_round(store, level, plan["steps"], plan["duration_s"])
    return await latency_round(store, level, plan["events"], plan["gap_s"])


async def measure(plan: Record, stores: dict[str, JobStore], redis_pid: int | None) -> Record:
    """Every configuration on every store, `rounds` times: the configurations rotate from
    round to round and so does which store goes first."""
    lifecycle: dict[str, dict[str, list[Record]]] = {
        name: {str(c): [] for c in plan["submitters"]} for name in stores
    }
    latency: dict[str, dict[str, dict[str, list[float]]]] = {
        name: {
            str(s): {"samples_s": [], "last_subscriber_s": [], "update_call_s": []}
            for s in plan["subscribers"]
        }
        for name in stores
    }
    # Redis server CPU seconds and wall seconds while the redis store ran, per config.
    redis_cpu: dict[str, list[float]] = {}
    # Warm-up: connections opened, Lua scripts loaded into Redis, code paths run once.
    for store in stores.values():
        await lifecycle_round(store, 2, plan["steps"], 0.3)
        await latency_round(store, 2, 5, plan["gap_s"])
    configs = [("lifecycle", c) for c in plan["submitters"]]
    configs += [("latency", n) for n in plan["subscribers"]]
    for round_ in range(plan["rounds"]):
        for kind, level in rotated(configs, round_):
            for name in rotated(list(stores), round_):
                cpu0, t0 = (cpu_seconds(redis_pid) if redis_pid else None), time.perf_counter()
                result = await run_config(kind, level, stores[name], plan)
                cpu1, t1 = (cpu_seconds(redis_pid) if redis_pid else None), time.perf_counter()
                if name == "redis" and cpu0 is not None and cpu1 is not None:
                    spent = redis_cpu.setdefault(f"{kind} {level}", [0.0, 0.0])
                    spent[0] += cpu1 - cpu0
                    spent[1] += t1 - t0
                if kind == "lifecycle":
                    lifecycle[name][str(level)].append(result)
                else:
                    for key, values in result.items():
                        latency[name][str(level)][key] += values
        log(f"  store round {round_ + 1}/{plan['rounds']} done (load {load_average()[0]})")
    return {
        "lifecycle": summarize_lifecycle(lifecycle),
        "latency": summarize_latency(latency),
        "redis_server_cores": {
            key: round(cpu / seconds, 2) for key, (cpu, seconds) in redis_cpu.items()
        },
    }


def summarize_lifecycle(rounds: dict[str, dict[str, list[Record]]]) -> Record:
    """Per store and level: the median round's jobs/s, and Redis / memory."""
    out: Record = {}
    for name, levels in rounds.items():
        out[name] = {}
        for level, results in levels.items():
            rates = [r["jobs_per_s"] for r in results]
            out[name][level] = {
                "jobs_per_s_median": round(median(rates) or 0.0, 1),
                "jobs_per_s_rounds": rates,
                "jobs": sum(r["jobs"] for r in results),
                "job_ms_median": round(median([r["job_ms_median"] for r in results]) or 0, 3),
                "benchmark_cores_median": median(
                    [r["benchmark_cores"] for r in results if r["benchmark_cores"] is not None]
                ),
            }
    if "memory" in out and "redis" in out:
        out["redis_vs_memory"] = {
            level: ratio(out["redis"][level]["jobs_per_s_median"], entry["jobs_per_s_median"])
            for level, entry in out["memory"].items()
        }
    return out


def summarize_latency(samples: dict[str, dict[str, dict[str, list[float]]]]) -> Record:
    out: Record = {}
    for name, levels in samples.items():
        out[name] = {
            level: {
                "delivery": stats_ms(s["samples_s"]),
                "last_subscriber": stats_ms(s["last_subscriber_s"]),
                "update_call": stats_ms(s["update_call_s"]),
            }
            for level, s in levels.items()
        }
    if "memory" in out and "redis" in out:
        out["redis_vs_memory"] = {
            level: {
                stat: ratio(
                    out["redis"][level]["delivery"].get(stat),
                    entry["delivery"].get(stat),
                )
                for stat in ("median_ms", "p95_ms")
            }
            for level, entry in out["memory"].items()
        }
    return out


async def measure_with_stores(plan: Record, redis: RedisServer) -> Record:
    urls = {"memory": "memory", "redis": redis.url}
    stores = {name: open_store(store_settings(urls[name])) for name in STORES}
    try:
        return await measure(plan, stores, redis.proc.pid if redis.proc else None)
    finally:
        for store in stores.values():
            await store.aclose()


def section_store(plan: Record, args: argparse.Namespace) -> Record:
    with RedisServer(args.redis_fsync) as redis:
        log(f"store: redis-server {redis.version} at {redis.url} ({redis.settings})")
        measured = asyncio.run(measure_with_stores(plan, redis))
        defaults = Settings()
        return {
            "config": plan,
            "store_limits": {
                "max_jobs": defaults.max_jobs,
                "job_ttl_s": defaults.job_ttl_s,
                "job_lease_s": defaults.job_lease_s,
            },
            "redis_server": {"version": redis.version, "settings": redis.settings},
            **measured,
        }
