"""Section 1, topologies: the same requests through all-in-one, three-endpoints and
hybrid gateways, one at a time."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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
    REMOTE_STAGES,
    SD_INTERLEAVE_MIN_GIB,
    SEED,
    TOPOLOGIES,
    mem_available_gib,
    proc_status_kib,
    stats_ms,
    wxh,
)
from benchmarks.serving.records import TopologyRequest, as_json
from benchmarks.serving.stack import GatewaySpecs, Stack, StageSpecs, family_env, generation_body


def png_digest(payload: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    for item in payload.get("data", []):
        h.update(item.get("b64_json", "").encode())
    return h.hexdigest()[:16]


async def sequential_rounds(
    urls: Mapping[str, str], body: Mapping[str, Any], warmup: int, repeats: int
) -> list[TopologyRequest]:
    """One request at a time; each round visits every gateway, in a rotating order so that
    load drift and ordering effects hit every topology alike."""
    records: list[TopologyRequest] = []
    names = list(urls)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S * 5) as client:
        for r in range(warmup + repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                started = time.perf_counter()
                response = await client.post(f"{urls[name]}{GENERATIONS}", json=body)
                elapsed = time.perf_counter() - started
                if response.status_code != 200:
                    raise RuntimeError(f"{name}: HTTP {response.status_code}: {response.text}")
                payload = response.json()
                records.append(
                    TopologyRequest(
                        topology=name,
                        round=r,
                        warmup=r < warmup,
                        e2e_ms=round(elapsed * 1000, 1),
                        timings=payload.get("timings", {}),
                        digest=png_digest(payload),
                        load_1m=load_average()[0],
                    )
                )
                log(f"  {name} round {r}: {elapsed * 1000:.0f} ms")
    return records


def summarize_topologies(records: list[TopologyRequest]) -> Record:
    measured = [r for r in records if not r.warmup]
    out: Record = {}
    for topology in TOPOLOGIES:
        rows = [r for r in measured if r.topology == topology]
        if not rows:
            continue
        e2e = [r.e2e_ms / 1000 for r in rows]
        stages: Record = {}
        stage_total = [0.0] * len(rows)
        for stage in ("text_encoder", "diffusion", "decoder"):
            parts: Record = {}
            for key in ("queue_ms", "compute_ms", "transfer_ms"):
                values = [float(r.timings.get(stage, {}).get(key, 0.0)) for r in rows]
                parts[key] = round(float(np.median(values)), 1)
            totals = [sum(float(r.timings.get(stage, {}).get(k, 0.0)) for k in parts) for r in rows]
            parts["total_ms"] = round(float(np.median(totals)), 1)
            stages[stage] = parts
            stage_total = [a + b for a, b in zip(stage_total, totals, strict=True)]
        other = [r.e2e_ms - t for r, t in zip(rows, stage_total, strict=True)]
        compute = [
            sum(
                float(r.timings.get(s, {}).get("compute_ms", 0.0))
                for s in ("text_encoder", "diffusion", "decoder")
            )
            for r in rows
        ]
        overhead = [r.e2e_ms - c for r, c in zip(rows, compute, strict=True)]
        out[topology] = {
            "e2e": stats_ms(e2e),
            "stages": stages,
            # Model compute of the three stages, and everything else (serving overhead:
            # batch waits, HTTP, npz, validation, PNG, JSON).
            "compute_ms": round(float(np.median(compute)), 1),
            "overhead_ms": round(float(np.median(overhead)), 1),
            # Client <-> gateway HTTP, validation, PNG encoding and the JSON response.
            "gateway_other_ms": round(float(np.median(other)), 1),
            "transfer_total_ms": round(
                float(
                    np.median(
                        [
                            sum(
                                float(r.timings.get(s, {}).get("transfer_ms", 0.0))
                                for s in ("text_encoder", "diffusion", "decoder")
                            )
                            for r in rows
                        ]
                    )
                ),
                1,
            ),
        }
    aio = out.get("all-in-one", {})
    base = aio.get("e2e", {}).get("median_ms")
    for entry in out.values():
        entry["ratio_to_all_in_one"] = ratio(entry["e2e"].get("median_ms"), base)
        # The same ratio at equal model compute (all-in-one's): what the topology itself
        # adds, free of load drift between measurements of different topologies.
        if aio:
            entry["ratio_at_equal_compute"] = ratio(
                aio["compute_ms"] + entry["overhead_ms"], aio["compute_ms"] + aio["overhead_ms"]
            )
    digests = {r.digest for r in records}
    out["_identical_images"] = len(digests) == 1
    return out


def section_topologies(plan: Record, args: argparse.Namespace, log_dir: Path) -> Record:
    result: Record = {"families": {}}
    for family, cfg in plan.items():
        log(f"topologies: {family} {wxh(cfg['size'])} n={cfg['n']} steps={cfg['steps']}")
        # Every topology alive at once and requests interleaved, so load drift from other
        # processes hits all of them alike. For sd-v1 that is two UNets (all-in-one's
        # central, and the diffusion service that three-endpoints and hybrid share); with
        # too little memory, or --sd-layout sequential, all-in-one runs first and the
        # other two after it (one UNet alive at a time).
        groups = [list(TOPOLOGIES)]
        layout_note = "interleaved"
        if family != "tiny":
            available = mem_available_gib() or 0.0
            if args.sd_layout == "sequential" or available < SD_INTERLEAVE_MIN_GIB:
                groups = [["all-in-one"], ["three-endpoints", "hybrid"]]
                layout_note = (
                    "sequential (--sd-layout sequential)"
                    if args.sd_layout == "sequential"
                    else f"sequential: MemAvailable {available} GiB < {SD_INTERLEAVE_MIN_GIB}"
                )
        records: list[TopologyRequest] = []
        startup: Record = {}
        describe: Record = {}
        rss: Record = {}
        for group in groups:
            needed = sorted({k for t in group for k in REMOTE_STAGES[t]})
            stages: StageSpecs = {kind: (kind, {}) for kind in needed}
            gateways: GatewaySpecs = {t: ({k: k for k in REMOTE_STAGES[t]}, {}) for t in group}
            mem = mem_available_gib()
            log(f"  starting {group} (MemAvailable {mem} GiB)")
            with Stack(
                f"topologies-{family}-{'+'.join(group)}",
                family_env(family, cfg["size"]),
                stages,
                gateways,
                log_dir,
            ) as stack:
                startup["+".join(group)] = stack.ready_s
                log(f"  MemAvailable {mem_available_gib()} GiB with {group} up")
                with httpx.Client(timeout=30) as client:
                    describe[group[0]] = client.get(f"{stack.url(group[0])}/v1/stages").json()
                urls = {t: stack.url(t) for t in group}
                body = generation_body(cfg["size"], cfg["steps"], cfg["n"], SEED)
                group_records = asyncio.run(
                    sequential_rounds(urls, body, cfg["warmup"], cfg["repeats"])
                )
                records.extend(group_records)
                for name, pid in stack.pids().items():
                    rss[f"{'+'.join(group)}: {name}"] = round((proc_status_kib(pid) or 0) / 1024)
        execution = {}
        for stage_info in describe.values():
            for name, info in stage_info.items():
                if isinstance(info, dict) and "execution" in info:
                    execution[name] = info["execution"]
        result["families"][family] = {
            "config": {**cfg, "size": wxh(cfg["size"]), "groups": groups},
            "layout": layout_note,
            "startup_ready_s": startup,
            "rss_mib": rss,
            "execution": execution,
            "summary": summarize_topologies(records),
            "requests": [as_json(r) for r in records],
        }
    return result
