"""Section 7, replicas: one and two diffusion replicas behind one gateway (hybrid: text
encoder and decoder in the gateway), and two with one killed mid-run. Per run: each
replica's share of the calls, retries by reason, client latency and errors.

On 2 CPUs two replicas cannot double throughput (they share the cores); what this shows
is that the gateway balances them and that losing one costs no request."""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness import Record, fmt, log
from benchmarks.serving.common import CLIENT_TIMEOUT_S, GENERATIONS, PROMPT, stats_ms, wxh
from shared.service_process import ServiceProcess, run_services

RUNS = (("one replica", 1, False), ("two replicas", 2, False), ("two, one killed", 2, True))


def section_replicas(plan: Record, args: argparse.Namespace, log_dir: Path) -> Record:
    env = {
        "SDSERVE_MODEL": "tiny",
        "SDSERVE_SIZES": wxh(plan["size"]),
        # Warm, as in production: a replica that traces its graphs on its first calls is
        # slow for seconds, and the balancer rightly sends the others' way meanwhile.
        "SDSERVE_WARM_UP": "true",
        "SDSERVE_LOG_FORMAT": "json",
    }
    runs = []
    for label, count, kill in RUNS:
        log(f"replicas: {label}")
        runs.append(_run(label, count, kill, plan, env, log_dir))
    return {
        "settings": {k: plan[k] for k in ("size", "steps", "clients", "requests")},
        "runs": runs,
    }


def _run(
    label: str, count: int, kill: bool, plan: Record, env: dict[str, str], log_dir: Path
) -> Record:
    slug = label.replace(" ", "-").replace(",", "")
    replicas = [
        ServiceProcess("services.diffusion", env, log_path=log_dir / f"{slug}-diffusion-{i}.log")
        for i in range(count)
    ]
    with run_services(*replicas):
        urls = ",".join(r.url for r in replicas)
        gateway = ServiceProcess(
            "central", {**env, "SDSERVE_DIFFUSION_URL": urls}, log_path=log_dir / f"{slug}.log"
        )
        with run_services(gateway):
            for seed in range(2):  # trace the shapes before measuring
                _generate(gateway.url, plan, seed)
            served_before = _served(gateway.url)
            killed: list[str] = []
            done = [0]

            def kill_when_a_third_is_done() -> None:
                while done[0] < plan["requests"] // 3:
                    time.sleep(0.02)
                victim = replicas[0]
                assert victim.proc is not None
                os.kill(victim.proc.pid, signal.SIGKILL)
                killed.append(victim.url)
                log(f"replicas: killed {victim.url} after {done[0]} requests")

            killer = threading.Thread(target=kill_when_a_third_is_done, daemon=True)
            if kill:
                killer.start()
            started = time.perf_counter()

            def one(seed: int) -> tuple[int, float]:
                t0 = time.perf_counter()
                status = _generate(gateway.url, plan, 1000 + seed)
                done[0] += 1
                return status, time.perf_counter() - t0

            with ThreadPoolExecutor(plan["clients"]) as pool:
                results = list(pool.map(one, range(plan["requests"])))
            wall = time.perf_counter() - started
            if kill:
                killer.join()
            served_after = _served(gateway.url)
            retries = _retries(gateway.url)
    ok = [seconds for status, seconds in results if status == 200]
    served = {u: served_after.get(u, 0) - served_before.get(u, 0) for u in served_after}
    total = sum(served.values()) or 1
    return {
        "label": label,
        "replicas": count,
        "killed": killed,
        "requests": len(results),
        "errors": sum(1 for status, _ in results if status != 200),
        "images_per_s": round(len(ok) / wall, 3),
        "latency": stats_ms(ok),
        "share": {u: round(n / total, 3) for u, n in served.items()},
        "retries": retries,
    }


def _generate(url: str, plan: Record, seed: int) -> int:
    body = {"prompt": PROMPT, "size": wxh(plan["size"]), "steps": plan["steps"], "seed": seed}
    try:
        return httpx.post(f"{url}{GENERATIONS}", json=body, timeout=CLIENT_TIMEOUT_S).status_code
    except httpx.HTTPError:
        return 0


def _served(url: str) -> dict[str, int]:
    """Calls each diffusion replica completed for this gateway (/v1/stages)."""
    stages = httpx.get(f"{url}/v1/stages", timeout=30).json()
    return {r["url"]: int(r["served"]) for r in stages["diffusion"]["replicas"]}


def _retries(url: str) -> dict[str, int]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sdserve_stage_retries_total":
                found[sample.labels["reason"]] = int(sample.value)
    return found


def render_replicas(section: Record) -> list[str]:
    s = section["settings"]
    lines = [
        f"tiny {wxh(s['size'])}, {s['steps']} steps, {s['requests']} requests from "
        f"{s['clients']} concurrent clients, per run; the gateway runs text encoder and "
        "decoder, diffusion is one or two services. Share: the calls each replica completed "
        "(the gateway's own count, `/v1/stages`). On 2 CPUs the replicas share the cores, so "
        "throughput cannot double: the point is balance, and no error when one dies.",
        "",
        "| run | requests | errors | images/s | p50 ms | p95 ms | share per replica | retries |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for run in section["runs"]:
        share = ", ".join(f"{v:.0%}" for v in run["share"].values())
        retries = ", ".join(f"{k} {v}" for k, v in sorted(run["retries"].items())) or "none"
        latency: dict[str, Any] = run["latency"]
        lines.append(
            f"| {run['label']} | {run['requests']} | {run['errors']} | "
            f"{fmt(run['images_per_s'])} | {fmt(latency.get('p50_ms'))} | "
            f"{fmt(latency.get('p95_ms'))} | {share} | {retries} |"
        )
    return lines
