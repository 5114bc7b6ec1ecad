"""Where `sdserve up`'s gateway keeps its jobs (``--jobs``).

* ``memory``: in the gateway process (the gateway's own default); a restart loses them.
* ``redis``: in Redis. When SDSERVE_JOB_STORE already names a Redis (``redis://``,
  ``rediss://``, ``unix://``), the gateway uses that one; otherwise `sdserve up` starts a
  ``redis-server`` of its own next to the other processes, on 127.0.0.1 only, with its
  append-only file under the cache directory, so jobs survive a restart of the gateway,
  of that redis-server, or of `sdserve up` itself.

Without ``--jobs``, SDSERVE_JOB_STORE reaches the gateway as it is. Nothing here imports
pydantic (`sdserve --help` stays quick): shared.config is imported where it is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from shared import redis_server

if TYPE_CHECKING:
    from central.supervisor.specs import ChildSpec

JOBS = ("memory", "redis")
JOB_STORE_ENV = "SDSERVE_JOB_STORE"
REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")
REDIS_HOST = "127.0.0.1"
# The redis-server `sdserve up` starts listens on --base-port + REDIS_PORT_OFFSET (8006 by
# default): never a stage's port (base + 0..2, + 10 per replica, + 100 per model), and not
# Redis' usual 6379, where a redis-server of the system's may already listen.
REDIS_PORT_OFFSET = 5
REDIS_NAME = "redis"  # its name in the logs
INSTALL_HINT = (
    "redis-server is not installed: install it (sudo apt-get install redis-server, or "
    "`make redis-server`), or set SDSERVE_JOB_STORE to the redis:// URL of a running "
    "Redis or Valkey, or use --jobs memory"
)


def is_redis_url(value: str) -> bool:
    return value.strip().startswith(REDIS_URL_SCHEMES)


def cache_dir(env: Mapping[str, str]) -> Path:
    """SDSERVE_CACHE_DIR as the parts read it (Settings.cache_dir), made absolute, with
    a leading ~ expanded."""
    configured = env.get("SDSERVE_CACHE_DIR", "").strip()
    path = Path(configured).expanduser() if configured else Path.home() / ".cache" / "sdserve"
    return path.absolute()


def redis_port(base_port: int) -> int:
    return base_port + REDIS_PORT_OFFSET


def local_redis_url(base_port: int) -> str:
    return f"redis://{REDIS_HOST}:{redis_port(base_port)}/0"


def resolve_job_store(jobs: str | None, env: Mapping[str, str], base_port: int) -> tuple[str, str]:
    """(SDSERVE_JOB_STORE for the gateway, the data directory of a redis-server to start
    here, or "" for none).

    Raises ConfigError when SDSERVE_JOB_STORE is neither "memory" nor a Redis URL.
    """
    from shared.config import ConfigError, redacted_url

    configured = env.get(JOB_STORE_ENV, "").strip()
    if configured and configured != "memory" and not is_redis_url(configured):
        raise ConfigError(
            f"{JOB_STORE_ENV}: {redacted_url(configured)!r} is neither 'memory' nor a redis:// URL"
        )
    if jobs == "memory":
        return "memory", ""
    if jobs == "redis" and not is_redis_url(configured):
        # One directory per port: two `sdserve up` on other --base-ports never share one.
        data = cache_dir(env) / "redis" / str(redis_port(base_port))
        return local_redis_url(base_port), str(data)
    return configured or "memory", ""


def find_redis_server() -> str | None:
    """The server program `--jobs redis` runs; None when it is not installed."""
    return redis_server.find_redis_server()


def redis_process(
    base_port: int,
    data_dir: str,
    base_env: Mapping[str, str],
    program: str,
    outlives: Sequence[str],
) -> ChildSpec:
    """The redis-server `sdserve up` runs for the gateway's jobs.

    Append-only file on (fsynced every second: a crash loses at most the last second of
    job updates), RDB snapshots off, listening on 127.0.0.1 only (protected mode stays
    on; it refuses only clients from elsewhere). It is stopped after ``outlives`` (the
    gateway), which records its jobs in it as it stops. It gets no SDSERVE_* variable.
    """
    from central.supervisor.specs import ChildSpec

    argv = [program, *redis_server.redis_server_args(REDIS_HOST, redis_port(base_port), data_dir)]
    env = {k: v for k, v in base_env.items() if not k.startswith("SDSERVE_")}
    return ChildSpec(name=REDIS_NAME, argv=argv, env=env, stop_after=tuple(outlives))


def describe(job_store: str, redis_dir: str) -> str:
    """Where the jobs live, for the banner and the start-up line."""
    if redis_dir:
        return f"{job_store} (a redis-server started here; append-only file in {redis_dir})"
    if job_store == "memory":
        return "in the gateway's memory (a restart loses them; --jobs redis keeps them)"
    from shared.config import redacted_url

    return f"{redacted_url(job_store)} ({JOB_STORE_ENV})"
