"""The machine and the versions the numbers belong to (nothing here imports TensorFlow)."""

from __future__ import annotations

import importlib.metadata
import os
import platform

from benchmarks.harness import Record, load_average
from benchmarks.host import cpu_model_and_flags, memory_gib
from benchmarks.jobs.redis_server import installed_redis_version


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_description() -> Record:
    cpu_model, _ = cpu_model_and_flags()
    redis_server = installed_redis_version()
    return {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": memory_gib(),
        "load_average_at_start": load_average(),
        "python": platform.python_version(),
        "redis_server": redis_server,
        "redis_py": package_version("redis"),
        "httpx": package_version("httpx"),
        "uvicorn": package_version("uvicorn"),
        "sse_starlette": package_version("sse-starlette"),
        "os": platform.platform(),
    }
