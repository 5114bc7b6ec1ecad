"""Section 3, concurrency: closed-loop clients against a three-endpoints stack,
continuous batching on vs off."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.harness import Record, load_average, log
from benchmarks.serving.common import (
    CLIENT_TIMEOUT_S,
    GENERATIONS,
    cores_used,
    cpu_snapshot,
    mem_available_gib,
    proc_status_kib,
    stats_ms,
    wxh,
)
from benchmarks.serving.records import ConcurrencyLevel, LoopRequest, Timings, as_json
from benchmarks.serving.stack import (
    GatewaySpecs,
    Stack,
    StageSpecs,
    batch_rows,
    family_env,
    generation_body,
    rows_between,
    wait_idle,
)


async def closed_loop(
    url: str,
    body: Mapping[str, Any],
    clients: int,
    warmup_s: float,
    window_s: float,
) -> ConcurrencyLevel:
    """`clients` closed-loop clients for warmup + window seconds, then cancel the rest.

    Throughput counts the images of requests that completed inside the window; latency is
    over those requests. Requests still running at the end are cancelled (the server
    frees their rows at the next step) and not counted.
    """
    records: list[LoopRequest] = []
    t0 = time.perf_counter()
    stop_issuing = t0 + warmup_s + window_s
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as client:

        async def run_client(i: int) -> None:
            while time.perf_counter() < stop_issuing:
                started = time.perf_counter()
                status: int | str
                images = 0
                timings: Timings = {}
                try:
                    response = await client.post(f"{url}{GENERATIONS}", json=body)
                    status = response.status_code
                    if status == 200:
                        payload = response.json()
                        images = len(payload["data"])
                        timings = payload.get("timings", {})
                except httpx.TimeoutException:
                    status = "timeout"
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                records.append(
                    LoopRequest(
                        client=i,
                        start=started - t0,
                        end=time.perf_counter() - t0,
                        status=status,
                        images=images,
                        timings=timings,
                    )
                )

        tasks = [asyncio.create_task(run_client(i)) for i in range(clients)]
        await asyncio.sleep(max(0.0, stop_issuing - time.perf_counter()))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    lo, hi = warmup_s, warmup_s + window_s
    done = [r for r in records if r.status == 200 and lo <= r.end <= hi]
    latencies = [r.end - r.start for r in done]
    errors: dict[str, int] = {}
    for r in records:
        if r.status != 200:
            errors[str(r.status)] = errors.get(str(r.status), 0) + 1
    diffusion_queue = [float(r.timings.get("diffusion", {}).get("queue_ms", 0)) for r in done]
    diffusion_compute = [float(r.timings.get("diffusion", {}).get("compute_ms", 0)) for r in done]
    return ConcurrencyLevel(
        clients=clients,
        warmup_s=round(warmup_s, 1),
        window_s=round(window_s, 1),
        completed_in_window=len(done),
        images_per_s=round(sum(r.images for r in done) / window_s, 3),
        latency=stats_ms(latencies),
        diffusion_queue_ms_median=round(float(np.median(diffusion_queue)), 1) if done else None,
        diffusion_compute_ms_median=round(float(np.median(diffusion_compute)), 1) if done else None,
        errors=errors,
        requests_started=len(records),
    )


async def concurrency_levels(
    stack: Stack, modes: Mapping[str, str], cfg: Record, body: Mapping[str, Any]
) -> dict[str, list[Record]]:
    """Every level of clients, for each mode (gateway name -> its diffusion service)."""
    levels: dict[str, list[Record]] = {mode: [] for mode in modes}
    single_s: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=30) as client:
        # Warm every path once (the first requests of a process are slower).
        for mode in modes:
            await client.post(f"{stack.url(mode)}{GENERATIONS}", json=body, timeout=300)
        for i, clients in enumerate(cfg["clients"]):
            order = list(modes) if i % 2 == 0 else list(reversed(list(modes)))
            for mode in order:
                # Long enough for a closed loop to reach its steady state: at least one
                # expected latency (clients x a lone request's latency).
                lone = single_s.get(mode)
                expected = clients * lone if lone else 0.0
                if expected > 0.8 * CLIENT_TIMEOUT_S:
                    log(f"  {mode} {clients} clients: skipped (would time out)")
                    continue
                warmup = max(cfg["warmup_s"], expected)
                window = max(cfg["window_s"], cfg["window_factor"] * expected)
                urls = {
                    "text_encoder": stack.url("text_encoder"),
                    "diffusion": stack.url(modes[mode]),
                    "decoder": stack.url("decoder"),
                }
                before = {k: await batch_rows(client, u) for k, u in urls.items()}
                load = load_average()
                cpu_before, t_level = cpu_snapshot(stack.pids()), time.perf_counter()
                level = await closed_loop(stack.url(mode), body, clients, warmup, window)
                level.cores_used = cores_used(
                    cpu_before, cpu_snapshot(stack.pids()), time.perf_counter() - t_level
                )
                idle = await wait_idle(client, stack.url(modes[mode]), 180)
                after = {k: await batch_rows(client, u) for k, u in urls.items()}
                # Each service's /metrics labels its model by stage name.
                level.batching = {k: rows_between(before[k], after[k]).get(k, {}) for k in urls}
                level.load_1m_before = load[0]
                level.idle_wait_s = idle
                stack.check_alive()
                if clients == 1 and level.latency.get("median_ms"):
                    single_s[mode] = level.latency["median_ms"] / 1000
                levels[mode].append(as_json(level))
                lat = level.latency
                log(
                    f"  {mode} {clients:>2} clients: {level.images_per_s:.2f} img/s, "
                    f"p50 {lat.get('p50_ms')} ms, p95 {lat.get('p95_ms')} ms, "
                    f"n={lat.get('n')}, errors {level.errors}"
                )
    return levels


def section_concurrency(plan: Record, args: argparse.Namespace, log_dir: Path) -> Record:
    result: Record = {"families": {}}
    for family, cfg in plan.items():
        log(f"concurrency: {family} {wxh(cfg['size'])} steps={cfg['steps']}")
        # One text encoder and one decoder service; two diffusion services (continuous
        # batching on / off), each behind its own three-endpoints gateway.
        stages: StageSpecs = {
            "text_encoder": ("text_encoder", {}),
            "diffusion_cb": ("diffusion", {"SDSERVE_CONTINUOUS_BATCHING": "true"}),
            "diffusion_nocb": ("diffusion", {"SDSERVE_CONTINUOUS_BATCHING": "false"}),
            "decoder": ("decoder", {}),
        }
        modes = {"cb": "diffusion_cb", "nocb": "diffusion_nocb"}
        gateways: GatewaySpecs = {
            mode: ({"text_encoder": "text_encoder", "diffusion": d, "decoder": "decoder"}, {})
            for mode, d in modes.items()
        }
        body = generation_body(cfg["size"], cfg["steps"])
        with Stack(
            f"concurrency-{family}", family_env(family, cfg["size"]), stages, gateways, log_dir
        ) as stack:
            log(f"  MemAvailable {mem_available_gib()} GiB with both diffusion services up")
            levels = asyncio.run(concurrency_levels(stack, modes, cfg, body))
            with httpx.Client(timeout=30) as client:
                info = client.get(f"{stack.url('diffusion_cb')}/v1/info").json()
            rss = {
                name: round((proc_status_kib(pid) or 0) / 1024)
                for name, pid in stack.pids().items()
            }
        result["families"][family] = {
            "config": {**cfg, "size": wxh(cfg["size"])},
            "topology": "three-endpoints gateway (text encoder and decoder services shared "
            "by the two gateways; one diffusion service per mode)",
            "diffusion_info": {k: info.get(k) for k in ("execution", "batching", "sizes")},
            "startup_ready_s": stack.ready_s,
            "rss_mib_at_end": rss,
            "levels": levels,
        }
    return result
