"""Debian's `redis-server` (or `valkey-server`) as a child process: how `sdserve up
--jobs redis` runs one for the gateway's jobs, and how the tests and the benchmark start
a throwaway one. Standard library only (the CLI imports it)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

# "everysec" (Redis's default once the append-only file is on: a crash loses at most the
# last second of writes), "always" (fsync every write), "no" (the OS decides).
FSYNC_MODES = ("everysec", "always", "no")


def find_redis_server() -> str | None:
    """The server program on PATH (Debian installs redis-server in /usr/bin)."""
    return (
        shutil.which("redis-server")
        or shutil.which("redis-server", path="/usr/local/bin:/usr/bin:/usr/sbin")
        or shutil.which("valkey-server")
    )


def redis_server_args(
    host: str, port: int, directory: Path | str, fsync: str = "everysec"
) -> list[str]:
    """Append-only file on (jobs outlive a restart), RDB snapshots off, listening on
    `host` only, in the foreground; protected mode stays on (it refuses only clients from
    elsewhere when no password is set)."""
    if fsync not in FSYNC_MODES:
        raise ValueError(f"appendfsync must be one of {FSYNC_MODES}, not {fsync!r}")
    return [
        "--bind", host,
        "--port", str(port),
        "--dir", str(directory),
        "--appendonly", "yes",
        "--appendfsync", fsync,
        "--save", "",
        "--protected-mode", "yes",
        "--daemonize", "no",
    ]  # fmt: skip


def redis_version(program: str) -> str:
    """`7.0.15` from `Redis server v=7.0.15 sha=...` (or the whole line if it differs)."""
    line = subprocess.run(  # noqa: S603 - our own argv, no shell
        [program, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return next((word[2:] for word in line.split() if word.startswith("v=")), line)


class RedisServer:
    """One server on 127.0.0.1:`port`, its data in `directory` (kept across stop and
    start). `with RedisServer(...) as server: ... server.url ...`."""

    def __init__(self, directory: Path, port: int, fsync: str = "everysec") -> None:
        program = find_redis_server()
        if program is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        self.program, self.directory, self.port, self.fsync = program, directory, port, fsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "redis.log"
        args = redis_server_args("127.0.0.1", self.port, self.directory, self.fsync)
        command = [self.program, *args, "--loglevel", "warning", "--logfile", str(log)]
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)  # noqa: S603
        deadline = time.monotonic() + 15
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                text = log.read_text(errors="replace") if log.exists() else ""
                raise RuntimeError(f"redis-server did not start:\n{text[-2000:]}")
            time.sleep(0.05)
        return self

    def ping(self) -> bool:
        try:
            return self.command("PING").startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *words: str) -> bytes:
        """One command in Redis's inline form (plain words only, no quoting)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall((" ".join(words) + "\r\n").encode())
            return sock.recv(65536)

    def stop(self) -> None:
        """SIGTERM: the server flushes its append-only file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
