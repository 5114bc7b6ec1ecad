"""Constants and small measuring helpers shared by every serving section."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from benchmarks.harness import Record

SECTIONS = ("topologies", "keras_cv", "concurrency", "overload", "wire", "locust", "replicas")
TOPOLOGIES = ("all-in-one", "three-endpoints", "hybrid")
# Which stages each topology runs as its own service (the others run inside central).
REMOTE_STAGES: dict[str, tuple[str, ...]] = {
    "all-in-one": (),
    "three-endpoints": ("text_encoder", "diffusion", "decoder"),
    "hybrid": ("diffusion",),
}
STAGE_MODULES = {
    "text_encoder": "services.text_encoder",
    "diffusion": "services.diffusion",
    "decoder": "services.decoder",
}
URL_ENV = {
    "text_encoder": "SDSERVE_TEXT_ENCODER_URL",
    "diffusion": "SDSERVE_DIFFUSION_URL",
    "decoder": "SDSERVE_DECODER_URL",
}
PROMPT = "a photograph of an astronaut riding a horse"
SEED = 1234
GUIDANCE_SCALE = 7.5
CLIENT_TIMEOUT_S = 120.0
# Interleaving the sd-v1 topologies keeps two sd-v1 UNets (and two text encoders and
# decoders) alive, about 12 GiB on CPU; below this much free memory they run one by one.
SD_INTERLEAVE_MIN_GIB = 16.0
GENERATIONS = "/v1/images/generations"


def wxh(size: Sequence[int]) -> str:
    return f"{size[0]}x{size[1]}"


def mem_available_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def proc_status_kib(pid: int, field: str = "VmRSS") -> int | None:
    """A field of /proc/<pid>/status in KiB (VmRSS: resident now, VmHWM: peak)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used (/proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cpu_snapshot(pids: Mapping[str, int]) -> dict[str, float | None]:
    snap = {name: cpu_seconds(pid) for name, pid in pids.items()}
    snap["benchmark client"] = cpu_seconds(os.getpid())
    return snap


def cores_used(
    before: Mapping[str, float | None], after: Mapping[str, float | None], seconds: float
) -> dict[str, float | None]:
    """Average CPU cores each process used between two snapshots."""
    out: dict[str, float | None] = {}
    for name, then in before.items():
        now = after.get(name)
        out[name] = (
            round((now - then) / seconds, 2) if now is not None and then is not None else None
        )
    return out


def stats_ms(samples_s: Sequence[float]) -> Record:
    """Median, p10/p50/p90/p95, min/max of seconds, in milliseconds."""
    if not samples_s:
        return {"n": 0}
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    return {
        "n": len(ms),
        "median_ms": round(float(np.median(ms)), 1),
        "p10_ms": round(float(np.percentile(ms, 10)), 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p90_ms": round(float(np.percentile(ms, 90)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "min_ms": round(float(ms.min()), 1),
        "max_ms": round(float(ms.max()), 1),
        "mean_ms": round(float(ms.mean()), 1),
    }
