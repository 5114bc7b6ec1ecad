"""Section 4, overload: many clients against bounded queues; every request must end
200 or 503 and resident memory must stay flat."""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.harness import Record, load_average, log, ratio
from benchmarks.serving.common import (
    CLIENT_TIMEOUT_S,
    GENERATIONS,
    STAGE_MODULES,
    cores_used,
    cpu_snapshot,
    proc_status_kib,
    stats_ms,
    wxh,
)
from benchmarks.serving.records import OverloadPhase, OverloadRequest, as_json
from benchmarks.serving.stack import GatewaySpecs, Stack, StageSpecs, family_env, generation_body


class RssSampler:
    """Samples VmRSS of some processes every `interval` seconds, tagged by phase."""

    def __init__(self, pids: Mapping[str, int], interval: float = 0.25) -> None:
        self.pids = dict(pids)
        self.interval = interval
        self.phase = "idle"
        self.samples: list[tuple[str, str, int]] = []  # (phase, process, KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            phase = self.phase
            for name, pid in self.pids.items():
                kib = proc_status_kib(pid)
                if kib is not None:
                    self.samples.append((phase, name, kib))
            self._stop.wait(self.interval)

    def summary(self) -> Record:
        out: Record = {}
        for name in self.pids:
            entry: Record = {}
            for phase in dict.fromkeys(p for p, _, _ in self.samples):
                values = [k for p, n, k in self.samples if p == phase and n == name]
                if values:
                    entry[phase] = {
                        "median_mib": round(float(np.median(values)) / 1024, 1),
                        "max_mib": round(max(values) / 1024, 1),
                        "samples": len(values),
                    }
            entry["vm_hwm_mib_at_end"] = (
                round((proc_status_kib(self.pids[name], "VmHWM") or 0) / 1024, 1) or None
            )
            out[name] = entry
        return out


async def overload_phase(
    url: str,
    body: Mapping[str, Any],
    clients: int,
    duration_s: float,
    max_requests: int,
    pause_after_503_s: float,
) -> OverloadPhase:
    """Closed loop without cancelling: every request runs to its answer (or the client
    timeout), so a request that hangs shows up as a timeout."""
    records: list[OverloadRequest] = []
    refusals: dict[str, int] = {}
    t0 = time.perf_counter()
    stop_issuing = t0 + duration_s
    issued = 0
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as client:

        async def run_client() -> None:
            nonlocal issued
            while time.perf_counter() < stop_issuing and issued < max_requests:
                issued += 1
                started = time.perf_counter()
                status: int | str
                detail = ""
                try:
                    response = await client.post(f"{url}{GENERATIONS}", json=body)
                    status = response.status_code
                    if status == 200:
                        response.json()
                    else:
                        error = response.json().get("error") or {}
                        status = f"{status} {error.get('type')}"
                        message = str(error.get("message", ""))
                        where = (
                            message.split(" queue is full")[0]
                            if "queue is full" in message
                            else message[:60]
                        )
                        refusals[where] = refusals.get(where, 0) + 1
                except httpx.TimeoutException:
                    status = "timeout"
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                    detail = repr(exc)[:300]
                except ValueError:
                    status = "bad body"
                records.append(
                    OverloadRequest(
                        status=status,
                        start_s=round(started - t0, 3),
                        seconds=round(time.perf_counter() - started, 3),
                        detail=detail,
                    )
                )
                if status != 200 and pause_after_503_s:
                    await asyncio.sleep(pause_after_503_s)

        await asyncio.gather(*(run_client() for _ in range(clients)))
    counts: dict[str, int] = {}
    for r in records:
        counts[str(r.status)] = counts.get(str(r.status), 0) + 1
    ok = [r.seconds for r in records if r.status == 200]
    refused = [r.seconds for r in records if str(r.status).startswith("503")]
    elapsed = time.perf_counter() - t0
    return OverloadPhase(
        clients=clients,
        duration_s=round(elapsed, 1),
        requests=len(records),
        status_counts=counts,
        refused_by=refusals,
        ok_latency=stats_ms(ok),
        refused_latency=stats_ms(refused),
        ok_images_per_s=round(len(ok) / elapsed, 3),
        # Anything that was neither 200 nor 503, with when it started and how long it took.
        other_outcomes=[
            as_json(r) for r in records if r.status != 200 and not str(r.status).startswith("503")
        ][:20],
        all_200_or_503=all(r.status == 200 or str(r.status).startswith("503") for r in records),
    )


def section_overload(plan: Record, args: argparse.Namespace, log_dir: Path) -> Record:
    queue = str(plan["queue_size"])
    stages: StageSpecs = {kind: (kind, {"SDSERVE_QUEUE_SIZE": queue}) for kind in STAGE_MODULES}
    gateways: GatewaySpecs = {
        "central": ({k: k for k in STAGE_MODULES}, {"SDSERVE_QUEUE_SIZE": queue})
    }
    body = generation_body(plan["size"], plan["steps"])
    result: Record = {"config": {**plan, "size": wxh(plan["size"])}}
    with Stack("overload-tiny", family_env("tiny", plan["size"]), stages, gateways, log_dir) as st:
        with RssSampler(st.pids()) as sampler:

            async def run() -> None:
                async with httpx.AsyncClient(timeout=60) as client:
                    await client.post(f"{st.url('central')}{GENERATIONS}", json=body)
                await asyncio.sleep(2)
                sampler.phase = "moderate"
                log(f"overload: moderate load, {plan['moderate_clients']} clients")
                cpu, t = cpu_snapshot(st.pids()), time.perf_counter()
                moderate = await overload_phase(
                    st.url("central"),
                    body,
                    plan["moderate_clients"],
                    plan["moderate_s"],
                    10**9,
                    0.0,
                )
                moderate.load_1m = load_average()[0]
                moderate.cores_used = cores_used(
                    cpu, cpu_snapshot(st.pids()), time.perf_counter() - t
                )
                result["moderate"] = as_json(moderate)
                sampler.phase = "overload"
                log(f"overload: {plan['overload_clients']} clients, queues of {queue}")
                cpu, t = cpu_snapshot(st.pids()), time.perf_counter()
                overload = await overload_phase(
                    st.url("central"),
                    body,
                    plan["overload_clients"],
                    plan["overload_s"],
                    plan["max_requests"],
                    plan["pause_after_503_s"],
                )
                overload.load_1m = load_average()[0]
                overload.cores_used = cores_used(
                    cpu, cpu_snapshot(st.pids()), time.perf_counter() - t
                )
                result["overload"] = as_json(overload)
                sampler.phase = "after"
                await asyncio.sleep(3)
                # Still serving normally afterwards?
                async with httpx.AsyncClient(timeout=60) as client:
                    after = await client.post(f"{st.url('central')}{GENERATIONS}", json=body)
                result["after_status"] = after.status_code

            asyncio.run(run())
        st.check_alive()
        rss = sampler.summary()  # while the processes are alive (VmHWM)
    growth: Record = {}
    for name, entry in rss.items():
        moderate = entry.get("moderate", {}).get("max_mib")
        overload = entry.get("overload", {}).get("max_mib")
        growth[name] = ratio(overload, moderate)
    result["rss"] = rss
    result["rss_growth"] = growth
    for phase in ("moderate", "overload"):
        log(f"overload: {phase}: {result[phase]['status_counts']}")
    log(f"overload: RSS overload/moderate max: {growth}")
    return result
