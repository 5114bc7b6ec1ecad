"""What both benchmark packages say about the host: CPU model and flags, memory."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model_and_flags() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags, from /proc/cpuinfo where there is one."""
    model: str | None = None
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model or platform.processor() or "unknown", flags


def memory_gib() -> float | None:
    """Total memory in GiB (one decimal), or None where /proc/meminfo is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None
