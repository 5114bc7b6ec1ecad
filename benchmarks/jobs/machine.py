"""The machine and the versions the numbers belong to (nothing here imports TensorFlow)."""

from __future__ import annotations

import platform

from benchmarks.harness import Record, load_average
from benchmarks.host import cpu_and_memory, package_version
from benchmarks.jobs.redis_server import installed_redis_version


def machine_description() -> Record:
    redis_server = installed_redis_version()
    return {
        **cpu_and_memory(),
        "load_average_at_start": load_average(),
        "python": platform.python_version(),
        "redis_server": redis_server,
        "redis_py": package_version("redis"),
        "httpx": package_version("httpx"),
        "uvicorn": package_version("uvicorn"),
        "sse_starlette": package_version("sse-starlette"),
        "os": platform.platform(),
    }
