"""`sdserve up --jobs`: where the gateway keeps its jobs, and the redis-server it may start."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import socket
import time
from pathlib import Path

import pytest

from central.cli import main, up_jobs
from central.cli.parser import build_parser
from central.cli.up import UpConfig, build_processes, check_ports, ready_banner, resolve_up_config
from central.supervisor.runner import Supervisor
from shared.config import ConfigError, load_settings

PY = "/usr/bin/python-test"
REDIS = "/usr/bin/redis-server-test"
JOB_STORE = "SDSERVE_JOB_STORE"


def up_config(*argv: str, env: dict[str, str] | None = None) -> UpConfig:
    return resolve_up_config(build_parser().parse_args(["up", *argv]), env or {})


def by_name(config: UpConfig, env: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """Each process's environment, by name."""
    specs = build_processes(config, env or {}, python=PY, redis_server=REDIS)
    return {s.name: dict(s.env or {}) for s in specs}


def test_jobs_stay_in_the_gateways_memory_by_default() -> None:
    config = up_config()
    assert (config.job_store, config.redis_dir) == ("memory", "")
    envs = by_name(config, {JOB_STORE: "memory"})
    assert list(envs) == ["text-encoder", "diffusion", "decoder", "central"]
    assert envs["central"][JOB_STORE] == "memory"
    assert not any(JOB_STORE in env for name, env in envs.items() if name != "central")
    assert "jobs:    in the gateway's memory" in ready_banner(config)


def test_jobs_redis_starts_a_redis_server_on_loopback_for_the_gateway(tmp_path: Path) -> None:
    env = {"SDSERVE_CACHE_DIR": str(tmp_path), "SDSERVE_API_KEYS": "secret", "PATH": "/bin"}
    config = up_config("--jobs", "redis", "--topology", "hybrid", env=env)
    assert config.job_store == "redis://127.0.0.1:8006/0"
    assert config.redis_dir == str(tmp_path / "redis" / "8006")
    specs = build_processes(config, env, python=PY, redis_server=REDIS)
    assert [s.name for s in specs] == ["redis", "diffusion", "central"]
    redis = specs[0]
    assert list(redis.argv) == [
        REDIS,
        "--bind",
        "127.0.0.1",
        "--port",
        "8006",
        "--dir",
        str(tmp_path / "redis" / "8006"),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
    ]
    assert redis.ready_url is None  # ready once started; the gateway waits for it itself
    assert list(redis.stop_after) == ["central"], "the gateway records its jobs as it stops"
    assert redis.env == {"PATH": "/bin"}, "no SDSERVE_* secrets in redis-server"
    central = specs[-1].env or {}
    assert central[JOB_STORE] == "redis://127.0.0.1:8006/0"
    assert JOB_STORE not in (specs[1].env or {})
    banner = ready_banner(config)
    assert "jobs:    redis://127.0.0.1:8006/0 (a redis-server started here" in banner
    assert str(tmp_path / "redis" / "8006") in banner


def test_the_redis_port_follows_the_base_port_and_is_checked_with_the_others(
    tmp_path: Path,
) -> None:
    env = {"SDSERVE_CACHE_DIR": str(tmp_path)}
    config = up_config("--jobs", "redis", "--base-port", "9101", env=env)
    assert config.job_store == "redis://127.0.0.1:9106/0"
    assert config.redis_dir.endswith("/redis/9106"), "one data directory per port"
    # Never a stage's port, whatever the replicas and models.
    replicas = up_config("--jobs", "redis", "--replicas", "diffusion=8,decoder=8", env=env)
    specs = build_processes(replicas, env, python=PY, redis_server=REDIS)
    assert not [p for p in check_ports(specs) if "would both use" in p]
    clash = up_config("--jobs", "redis", "--port", "8006", env=env)
    problems = check_ports(build_processes(clash, env, python=PY, redis_server=REDIS))
    assert "central and redis would both use port 8006" in problems


def test_jobs_redis_uses_the_redis_that_sdserve_job_store_names() -> None:
    url = "rediss://sdserve:s3cret@redis.example.com:6380/2"
    config = up_config("--jobs", "redis", env={JOB_STORE: url})
    assert (config.job_store, config.redis_dir) == (url, "")
    envs = by_name(config, {JOB_STORE: url})
    assert "redis" not in envs
    assert envs["central"][JOB_STORE] == url
    assert not any(JOB_STORE in env for name, env in envs.items() if name != "central")
    banner = ready_banner(config)
    assert "jobs:    rediss://sdserve:***@redis.example.com:6380/2 (SDSERVE_JOB_STORE)" in banner
    assert "s3cret" not in banner
    unix = up_config("--jobs", "redis", env={JOB_STORE: "unix:///run/redis.sock"})
    assert (unix.job_store, unix.redis_dir) == ("unix:///run/redis.sock", "")


def test_without_the_flag_sdserve_job_store_passes_through_and_the_flag_wins() -> None:
    url = "redis://redis.internal:6379/0"
    assert up_config(env={JOB_STORE: url}).job_store == url
    assert by_name(up_config(env={JOB_STORE: url}))["central"][JOB_STORE] == url
    assert up_config("--jobs", "memory", env={JOB_STORE: url}).job_store == "memory"
    assert up_config("--jobs", "redis", env={JOB_STORE: "memory"}).redis_dir


def test_a_job_store_that_is_not_redis_is_refused() -> None:
    with pytest.raises(ConfigError, match="SDSERVE_JOB_STORE: 'postgres://x' is neither"):
        up_config("--jobs", "redis", env={JOB_STORE: "postgres://x"})


def test_up_without_redis_server_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv(JOB_STORE, raising=False)
    monkeypatch.setenv("SDSERVE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(up_jobs, "find_redis_server", lambda: None)
    assert main(["up", "--jobs", "redis"]) == 2
    err = capsys.readouterr().err
    assert "redis-server is not installed" in err
    assert "sudo apt-get install redis-server" in err and "make redis-server" in err
    assert "SDSERVE_JOB_STORE" in err
    assert not (tmp_path / "redis").exists(), "nothing is created before the checks pass"


def test_up_refuses_a_bad_job_store_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(JOB_STORE, "memcached://x")
    assert main(["up"]) == 2
    assert "SDSERVE_JOB_STORE" in capsys.readouterr().err


@pytest.mark.parametrize("configured", [None, "~/elsewhere", "relative/cache"])
def test_the_redis_directory_is_under_the_cache_dir_the_parts_use(
    configured: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    if configured is None:
        monkeypatch.delenv("SDSERVE_CACHE_DIR", raising=False)
    else:
        monkeypatch.setenv("SDSERVE_CACHE_DIR", configured)
    settings_dir = load_settings().cache_dir.expanduser().absolute()
    assert up_jobs.cache_dir(os.environ) == settings_dir
    assert settings_dir.is_relative_to(tmp_path)


# ------------------------------------------------------------- a real redis-server


def _redis_server() -> str:
    found = up_jobs.find_redis_server()
    if found:
        return found
    message = "redis-server is not installed: make redis-server (make test does it as root)"
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(message)
    pytest.skip(message)


def _free_base_port() -> int:
    """A --base-port whose redis port (base + 5) is free."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1]) - up_jobs.REDIS_PORT_OFFSET


def _command(port: int, *words: str) -> bytes:
    """One command in RESP; the raw reply (redis-py is not needed for this)."""
    request = f"*{len(words)}\r\n".encode() + b"".join(
        f"${len(w.encode())}\r\n{w}\r\n".encode() for w in words
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
                conn.sendall(request)
                reply = conn.recv(4096)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        if not reply.startswith(b"-LOADING"):
            return reply
        time.sleep(0.05)


def test_the_redis_server_it_starts_keeps_jobs_across_a_restart(tmp_path: Path) -> None:
    """The argv works with the real redis-server: loopback, append-only file in the
    cache directory, and what it held is there again after a restart."""
    program = _redis_server()
    env = {"SDSERVE_CACHE_DIR": str(tmp_path), "PATH": os.environ.get("PATH", "/usr/bin")}
    base_port = _free_base_port()
    config = up_config("--jobs", "redis", "--base-port", str(base_port), env=env)
    (redis,) = [s for s in build_processes(config, env, redis_server=program) if s.name == "redis"]
    redis = dataclasses.replace(redis, stop_after=())  # alone here, without the gateway
    port = up_jobs.redis_port(base_port)
    Path(config.redis_dir).mkdir(parents=True)

    out = io.StringIO()

    async def once(*words: str) -> bytes:
        sup = Supervisor([redis], color=False, out=out, grace_s=10)
        await sup.start()
        try:
            return await asyncio.to_thread(_command, port, *words)
        finally:
            await sup.stop()

    assert asyncio.run(once("SET", "sdserve:job", "kept")) == b"+OK\r\n"
    assert (Path(config.redis_dir) / "appendonlydir").is_dir()
    assert asyncio.run(once("GET", "sdserve:job")) == b"$4\r\nkept\r\n"
    assert out.getvalue().count("Ready to accept connections") == 2, out.getvalue()
