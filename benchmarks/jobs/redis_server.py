"""A throwaway redis-server on a free port for the benchmark, its data in a temporary
directory removed afterwards (shared.redis_server runs it)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from shared.redis_server import FSYNC_MODES, find_redis_server, redis_version
from shared.redis_server import RedisServer as _RedisServer
from shared.service_process import free_port

__all__ = ["FSYNC_MODES", "RedisServer", "installed_redis_version"]


def installed_redis_version() -> str | None:
    program = find_redis_server()
    return None if program is None else redis_version(program)


class RedisServer(_RedisServer):
    """`with RedisServer() as server: ... server.url ...`: started, then stopped and its
    directory removed."""

    def __init__(self, fsync: str = "everysec") -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"appendfsync must be one of {FSYNC_MODES}, not {fsync!r}")
        super().__init__(Path(tempfile.mkdtemp(prefix="sdserve-jobs-bench-redis-")), 0, fsync)
        self.version = redis_version(self.program)

    @property
    def settings(self) -> str:
        return f"append-only file on, appendfsync {self.fsync}, no RDB snapshots"

    def __enter__(self) -> RedisServer:
        self.port = free_port()
        try:
            self.start()
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        return self

    def stop(self) -> None:
        """Stopped (as on leaving the `with`), its directory removed."""
        super().stop()
        shutil.rmtree(self.directory, ignore_errors=True)
