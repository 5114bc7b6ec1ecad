"""A real redis-server on a free port for the job store tests (skipped where Debian's
redis-server is not installed; `make test` installs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.redis_server import RedisServer, find_redis_server
from shared.service_process import free_port


def start_redis(directory: Path) -> RedisServer:
    """Every write fsynced, so a test may stop and start it without losing one."""
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (make test installs Debian's redis-server)")
    return RedisServer(directory, free_port(), fsync="always").start()


__all__ = ["RedisServer", "start_redis"]
