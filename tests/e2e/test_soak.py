"""Soak: a few hundred requests through three endpoints; no part's memory keeps growing."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx

from shared.service_process import ServiceProcess, run_services

TINY = {"SDSERVE_MODEL": "tiny", "SDSERVE_SIZES": "64x64"}  # embedded weights
WARM_UP = int(os.environ.get("SDSERVE_SOAK_WARMUP", "40"))
REQUESTS = int(os.environ.get("SDSERVE_SOAK_REQUESTS", "200"))
CONCURRENCY = 4


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def _drive(url: str, count: int, offset: int) -> list[int]:
    statuses: list[int] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(offset + i)

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                response = await client.post(
                    "/v1/images/generations",
                    # Distinct prompts, so the tokenizer cache and batches vary too.
                    json={
                        "prompt": f"soak {i} {'x' * (i % 13)}",
                        "steps": 2,
                        "seed": i,
                        "n": 1 + i % 2,
                    },
                )
                statuses.append(response.status_code)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return statuses


def test_memory_stays_flat_over_hundreds_of_requests(tmp_path):
    stages = {
        name: ServiceProcess(f"services.{name}", TINY, log_path=tmp_path / f"{name}.log")
        for name in ("text_encoder", "diffusion", "decoder")
    }
    with run_services(*stages.values()):
        urls = {f"SDSERVE_{name.upper()}_URL": svc.url for name, svc in stages.items()}
        with ServiceProcess("central", {**TINY, **urls}, log_path=tmp_path / "c.log") as central:
            parts = {"central": central, **stages}
            assert set(asyncio.run(_drive(central.url, WARM_UP, 0))) == {200}
            before = {name: _rss_bytes(p.proc.pid) for name, p in parts.items()}
            statuses = asyncio.run(_drive(central.url, REQUESTS, WARM_UP))
            after = {name: _rss_bytes(p.proc.pid) for name, p in parts.items()}
    assert statuses.count(200) == REQUESTS
    growth = {name: after[name] / before[name] - 1 for name in parts}
    report = ", ".join(
        f"{n} {before[n] / 2**20:.0f}->{after[n] / 2**20:.0f} MiB ({growth[n]:+.1%})" for n in parts
    )
    print(report)
    assert all(g < 0.10 for g in growth.values()), report
